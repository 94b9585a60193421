//! The results table: one TSV row per figure with its verdict, printed aligned or as Markdown.
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::{MIB, Res, ctx};

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "B/s" => format!("{:.1} MiB/s", v / MIB),
        "B" => format!("{:.1} MiB", v / MIB),
        "reads/s" if v >= 1e4 => format!("{:.1}k reads/s", v / 1e3),
        "s" => format!("{v:.2} s"),
        "ms" => format!("{v:.1} ms"),
        "%" => format!("{v:.2} %"),
        "count" => format!("{v:.0}"),
        u => format!("{v:.3} {u}"),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn row(
    results: &Path,
    section: &str,
    figure: &str,
    value: f64,
    unit: &str,
    baseline: Option<f64>,
    baseline_note: &str,
    goal: &str,
) -> Res<()> {
    let ratio = baseline.map(|b| value / b);
    let (verdict, goal_text) = if goal == "info" {
        ("info".to_owned(), "-".to_owned())
    } else {
        let (lhs, op, rhs) = ["<=", ">=", "=="]
            .iter()
            .find_map(|op| goal.split_once(op).map(|(l, r)| (l, *op, r)))
            .ok_or(format!("--goal {goal:?}: expected ratio<=X and the like"))?;
        let x: f64 = rhs
            .trim()
            .parse()
            .map_err(|_| format!("--goal {goal:?}: {rhs:?} is not a number"))?;
        let (subject, shown) = match lhs.trim() {
            "ratio" => (
                ratio.ok_or("a ratio goal needs --baseline")?,
                format!("ratio {} {x}", op.replace("<=", "≤").replace(">=", "≥")),
            ),
            "value" => (
                value,
                format!(
                    "{} {}",
                    op.replace("<=", "≤").replace(">=", "≥").replace("==", "="),
                    fmt_value(x, unit)
                ),
            ),
            other => return Err(format!("--goal {goal:?}: {other:?} is not ratio or value")),
        };
        let ok = match op {
            "<=" => subject <= x,
            ">=" => subject >= x,
            _ => subject == x,
        };
        (if ok { "PASS" } else { "FAIL" }.to_owned(), shown)
    };
    let base_text = baseline.map_or("-".to_owned(), |b| {
        let t = fmt_value(b, unit);
        if baseline_note.is_empty() {
            t
        } else {
            format!("{t} {baseline_note}")
        }
    });
    let ratio_text = ratio.map_or("-".to_owned(), |r| format!("{r:.2}"));
    let cells = [
        section,
        figure,
        &fmt_value(value, unit),
        &base_text,
        &ratio_text,
        &goal_text,
        &verdict,
    ];
    let mut f = ctx(
        OpenOptions::new().create(true).append(true).open(results),
        results.display(),
    )?;
    ctx(writeln!(f, "{}", cells.join("\t")), results.display())?;
    eprintln!("  => {}", cells.join(" | "));
    Ok(())
}

pub fn table(results: &Path, markdown: bool) -> Res<()> {
    let text = ctx(std::fs::read_to_string(results), results.display())?;
    let header = [
        "section", "figure", "value", "baseline", "ratio", "goal", "result",
    ];
    let mut rows: Vec<Vec<&str>> = vec![header.to_vec()];
    rows.extend(text.lines().map(|l| l.split('\t').collect::<Vec<_>>()));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &[&str], sep: &str, edge: bool| {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = r.get(i).copied().unwrap_or("");
                format!("{c}{}", " ".repeat(w - c.chars().count()))
            })
            .collect();
        if edge {
            format!("| {} |", cells.join(sep))
        } else {
            cells.join(sep)
        }
    };
    for (i, r) in rows.iter().enumerate() {
        println!("{}", line(r, if markdown { " | " } else { "  " }, markdown));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            println!(
                "{}",
                line(&rule, if markdown { " | " } else { "  " }, markdown)
            );
        }
    }
    let failed = rows
        .iter()
        .skip(1)
        .filter(|r| r.get(6) == Some(&"FAIL"))
        .count();
    let passed = rows
        .iter()
        .skip(1)
        .filter(|r| r.get(6) == Some(&"PASS"))
        .count();
    if !markdown {
        println!("\n{passed} passed, {failed} failed");
    }
    Ok(())
}

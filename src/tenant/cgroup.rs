//! A reader's cgroup (v2), from `/proc/<pid>/cgroup`, cut to a depth if asked.
use std::io::Read;

/// `/proc/<pid>/cgroup` is a few hundred bytes; more is not a cgroup file.
const MAX_LEN: u64 = 16 << 10;

/// The cgroup v2 path of task `pid` (a thread id works too), cut after `depth` components
/// when given; `None` when it cannot be read (the task is gone, outside our pid namespace,
/// or only cgroup v1 is mounted).
pub fn of_task(pid: u32, depth: Option<usize>) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .ok()?
        .take(MAX_LEN)
        .read_to_string(&mut text)
        .ok()?;
    parse(&text, depth)
}

/// The path of the unified hierarchy's line (`0::PATH`), cut after `depth` components.
/// Whoever may create cgroups names them: control characters, white space and `=` are
/// escaped (`\x0a`), so a name cannot forge a log line or a `/status` entry.
pub fn parse(text: &str, depth: Option<usize>) -> Option<String> {
    parse_raw(text, depth).map(|p| escape(&p))
}

fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_control() || c.is_whitespace() || c == '=' || c == '\\' {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_raw(text: &str, depth: Option<usize>) -> Option<String> {
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
        .filter(|p| p.starts_with('/'))?;
    Some(match depth {
        None => path.to_owned(),
        Some(d) => {
            let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(d).collect();
            format!("/{}", parts.join("/"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_is_taken_and_cut() {
        let text = "12:cpu:/old\n0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope\n";
        assert_eq!(
            parse(text, None).as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope")
        );
        assert_eq!(
            parse(text, Some(2)).as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice")
        );
        assert_eq!(parse("0::/\n", Some(3)).as_deref(), Some("/"));
        assert_eq!(parse("0::/\n", None).as_deref(), Some("/"));
        // cgroup v1 only, or garbage: unknown.
        assert_eq!(parse("5:memory:/x\n", None), None);
        assert_eq!(parse("0::relative\n", None), None);
        assert_eq!(parse("", None), None);
        // Names are escaped: no forged line, no forged `key=value`.
        assert_eq!(
            parse("0::/a b=c\\d\u{7f}\n", None).as_deref(),
            Some("/a\\x20b\\x3dc\\x5cd\\x7f")
        );
    }

    #[test]
    fn our_own_cgroup_reads_and_a_missing_task_does_not() {
        let me = std::process::id();
        // Every Linux with cgroup v2 mounted: the test machine.
        if std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|t| t.contains("0::")) {
            assert!(of_task(me, None).is_some_and(|p| p.starts_with('/')));
        }
        assert_eq!(of_task(0, None), None);
        assert_eq!(of_task(u32::MAX, None), None);
    }
}

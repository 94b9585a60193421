//! Build script: the git commit for `--version`, and the man page qrypt-fs(1) and the bash, zsh
//! and fish completions, generated from the same clap definition the binary parses with (so
//! they cannot disagree with `--help`).
//!
//! Where the generated files go: `$OUT_DIR` (cargo's rule for build-script output), mirrored to
//! `target/<profile>/qrypt-fs-assets/`. cargo-deb (3.8) has no way to name a file in `$OUT_DIR`,
//! whose path carries a hash (kornelski/cargo-deb#67, rust-lang/cargo#9858), but it resolves an
//! asset path starting with `target/release/` to the real target directory (CARGO_TARGET_DIR,
//! workspaces, `--target`), so the mirror is a path `[package.metadata.deb]` can name. The
//! content depends only on the clap definition and the commit, so two builds writing it agree.
use std::env;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};
use flate2::{Compression, GzBuilder};

#[allow(dead_code)]
#[path = "src/session/cli/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "src/status/fields.rs"]
mod fields;
#[allow(dead_code)]
#[path = "src/session/cli/manual.rs"]
mod manual;
#[path = "src/session/cli/option_lists.rs"]
mod option_lists;

/// The folder next to the binaries that `[package.metadata.deb]` names.
const ASSETS_DIR: &str = "qrypt-fs-assets";

fn main() {
    for path in ["build.rs", "src/session/cli", "src/status/fields.rs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=QRYPT_FS_GIT_COMMIT");

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let commit = git_commit(&manifest_dir);
    let version = format!("{} ({commit})", env!("CARGO_PKG_VERSION"));
    println!("cargo:rustc-env=QRYPT_FS_VERSION={version}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let files = generate(&version).expect("render the man page and completions");
    let mirror = profile_dir(&out_dir).map(|d| d.join(ASSETS_DIR));
    if mirror.is_none() {
        println!(
            "cargo:warning=OUT_DIR {} is not <target>/<profile>/build/<pkg>/out: \
             the man page and completions are only in OUT_DIR",
            out_dir.display()
        );
    }
    for dir in std::iter::once(&out_dir).chain(mirror.as_ref()) {
        for (name, content) in &files {
            write_if_changed(&dir.join(name), content)
                .unwrap_or_else(|e| panic!("writing {}: {e}", dir.join(name).display()));
        }
    }
}

/// "commit abc1234" (or "commit abc1234-dirty" when a tracked file differs from HEAD), from
/// `git rev-parse --short HEAD` when this crate is the top of a git
/// checkout (not a crate tarball that happens to sit inside some other repository), else from
/// `QRYPT_FS_GIT_COMMIT` (a distribution building from a tarball), else a clear "unknown".
fn git_commit(manifest_dir: &Path) -> String {
    if let Ok(c) = env::var("QRYPT_FS_GIT_COMMIT") {
        if !c.trim().is_empty() {
            return format!("commit {}", c.trim());
        }
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(args)
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let top = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let Some(commit) = top
        .filter(|t| same(t, manifest_dir))
        .and_then(|_| git(&["rev-parse", "--short", "HEAD"]))
    else {
        return "commit unknown: not built from a git checkout".to_owned();
    };
    // Rebuild when HEAD moves: HEAD itself (checkout), the branch it points to (commit), and
    // packed-refs (gc). Paths through git, so a worktree's `.git` file is handled too.
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &name]) {
            let p = manifest_dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    // A tree that differs from HEAD in a tracked file says so: "-dirty". Editing the sources
    // that make the binary reruns this script (the index covers `git add`); an edit elsewhere
    // (README, tests) is noticed on the next run for any other reason.
    if let Some(p) = git(&["rev-parse", "--git-path", "index"]) {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(p).display());
    }
    for path in ["src", "build.rs", "Cargo.toml", "Cargo.lock", "qrypt-api"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(path).display()
        );
    }
    // `--no-optional-locks`: a plain `git status` refreshes and rewrites the index, which is
    // watched above, so every build would run this script (and rebuild the crate) again.
    let dirty = Command::new("git")
        .arg("-C")
        .arg(manifest_dir)
        .args([
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ])
        .output()
        // If git cannot say, the tree is not claimed clean.
        .map_or(true, |o| !o.status.success() || !o.stdout.is_empty());
    format!("commit {commit}{}", if dirty { "-dirty" } else { "" })
}

/// `<target>/<profile>` (or `<target>/<triple>/<profile>`) from `.../build/<pkg>-<hash>/out`.
fn profile_dir(out_dir: &Path) -> Option<PathBuf> {
    let pkg = out_dir.parent()?;
    let build = pkg.parent()?;
    let name_ok = pkg
        .file_name()?
        .to_str()?
        .starts_with(concat!(env!("CARGO_PKG_NAME"), "-"));
    (out_dir.file_name()? == "out" && name_ok && build.file_name()? == "build")
        .then(|| build.parent().map(Path::to_path_buf))
        .flatten()
}

/// The man page and the three completion scripts, as (file name, content).
fn generate(version: &str) -> io::Result<Vec<(String, Vec<u8>)>> {
    // clap wants a &'static str; a build script runs once, so leaking it costs nothing.
    let version: &'static str = Box::leak(version.to_owned().into_boxed_str());
    let cmd = args::Cli::command().version(version);
    let man = man_page(cmd.clone())?;
    // cargo-deb gzips man pages only when they exist before the build; this one does not.
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::best());
    gz.write_all(&man)?;
    let mut files = vec![
        ("qrypt-fs.1.gz".to_owned(), gz.finish()?),
        ("qrypt-fs.1".to_owned(), man),
    ];
    // qrypt-fs-seed(8): a root job, so section 8; clap_mangen's sections alone (its --help
    // text, exit statuses included, says all there is).
    let mut seed = Vec::new();
    Man::new(args::SeedCli::command().version(version))
        .section("8")
        .manual("qrypt-fs manual")
        .source(format!("qrypt-fs {}", env!("CARGO_PKG_VERSION")))
        .render(&mut seed)?;
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::best());
    gz.write_all(&seed)?;
    files.push(("qrypt-fs-seed.8.gz".to_owned(), gz.finish()?));
    files.push(("qrypt-fs-seed.8".to_owned(), seed));
    let completed = with_mount_option_names(cmd);
    for (shell, name) in [
        (Shell::Bash, "qrypt-fs.bash"),
        (Shell::Zsh, "_qrypt-fs"),
        (Shell::Fish, "qrypt-fs.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut completed.clone(), "qrypt-fs", &mut buf);
        files.push((name.to_owned(), buf));
    }
    Ok(files)
}

/// clap_mangen's standard sections (name, synopsis, description, options, version) with the
/// sections of `manual.rs` in between. The `--help` epilogue is left out: the man page says
/// the same at length.
fn man_page(cmd: clap::Command) -> io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .manual("qrypt-fs manual")
        .source(format!("qrypt-fs {}", env!("CARGO_PKG_VERSION")));
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    synopsis(&cmd).to_writer(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    let mut roff = Roff::new();
    for section in manual::SECTIONS {
        roff.control("SH", [section.title]);
        for block in section.body {
            match block {
                manual::Block::Para(text) => {
                    roff.control("PP", []);
                    roff.text([roman(*text)]);
                }
                manual::Block::Item(term, text) => {
                    roff.control("TP", []);
                    roff.text([bold(*term)]);
                    roff.text([roman(*text)]);
                }
                manual::Block::Code(text) => {
                    roff.control("PP", []);
                    roff.control("nf", []);
                    for line in text.lines() {
                        roff.text([roman(line)]);
                    }
                    roff.control("fi", []);
                }
            }
        }
        if section.title == "MOUNT OPTIONS" {
            // The list `-o` parsing uses, so the page cannot leave one out.
            let mut ignored: Vec<&str> = option_lists::IGNORED
                .iter()
                .copied()
                .filter(|o| !o.is_empty())
                .collect();
            ignored.push("x-*");
            roff.control("PP", []);
            roff.text([roman(format!("{}.", ignored.join(", ")))]);
        }
    }
    status_fields(&mut roff);
    roff.to_writer(&mut buf)?;
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// The command as the completions see it: `-o` offers every mount option's name (`key=` for
/// those that take a value). Only for completing: parsing `-o` stays `mount_options.rs`'s.
fn with_mount_option_names(cmd: clap::Command) -> clap::Command {
    let mut built = cmd.clone();
    built.build();
    // clap wants &'static str; leaked once, in a build script.
    let names: Vec<&'static str> = built
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
        .filter_map(|a| {
            let long = a.get_long()?;
            if option_lists::NOT_MOUNT_OPTIONS.contains(&long) || a.get_id() == "options" {
                return None;
            }
            let key = long.replace('-', "_");
            let takes = a.get_num_args().is_some_and(|n| n.takes_values());
            let name = if takes { format!("{key}=") } else { key };
            Some(&*Box::leak(name.into_boxed_str()))
        })
        .collect();
    cmd.mut_arg("options", |a| {
        a.value_parser(clap::builder::PossibleValuesParser::new(names))
    })
}

/// SYNOPSIS with each option's value name (`--token-file PATH`, `-o OPTIONS`), which
/// clap_mangen's own synopsis leaves out.
fn synopsis(cmd: &clap::Command) -> Roff {
    // Built, so each argument knows how many values it takes (and --help, --version exist).
    let mut cmd = cmd.clone();
    cmd.build();
    let mut line = vec![bold(cmd.get_name()), roman(" ")];
    // Options first, then the mount point, as usage lines go.
    let (positionals, options): (Vec<&clap::Arg>, Vec<&clap::Arg>) = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .partition(|a| a.is_positional());
    for arg in options.into_iter().chain(positionals) {
        let value = arg
            .get_value_names()
            .map(|names| names.join(" "))
            .filter(|_| arg.get_num_args().is_some_and(|n| n.takes_values()));
        if arg.is_positional() {
            line.push(italic(value.unwrap_or_else(|| arg.get_id().to_string())));
            line.push(roman(" "));
            continue;
        }
        let names: Vec<String> = arg
            .get_short()
            .map(|c| format!("-{c}"))
            .into_iter()
            .chain(arg.get_long().map(|l| format!("--{l}")))
            .collect();
        line.push(roman("["));
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                line.push(roman("|"));
            }
            line.push(bold(name.as_str()));
        }
        if let Some(v) = value {
            line.push(roman(" "));
            line.push(italic(v));
        }
        line.push(roman("] "));
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    roff.text(line);
    roff
}

/// The STATUS FIELDS section, from the status layer's one field table: each key with its
/// unit, its help, and the series `/metrics` shows it as.
fn status_fields(roff: &mut Roff) {
    roff.control("SH", ["STATUS FIELDS"]);
    roff.control("PP", []);
    roff.text([roman(
        "The keys of MOUNTPOINT/status and MOUNTPOINT/status.json (one set, in this order); \
         PERIOD is hour, day or month. Times are RFC 3339 (UTC) in status and Unix seconds in \
         status.json; none (null) when unknown. MOUNTPOINT/metrics shows each as the series \
         named after it.",
    )]);
    for field in fields::FIELDS {
        roff.control("TP", []);
        roff.text([bold(field.key.replace("{period}", "PERIOD"))]);
        let unit = match field.unit {
            "" => String::new(),
            unit => format!(" Unit: {unit}."),
        };
        let metric = match field.kind {
            fields::Kind::Info => "a label of qrypt_fs_info".to_owned(),
            _ => format!("qrypt_fs_{}", fields::metric_name(field)),
        };
        roff.text([roman(format!("{}{unit} Metric: {metric}.", field.help))]);
    }
}

/// Leaves an unchanged file alone, so its mtime says when its content last changed.
fn write_if_changed(path: &Path, content: &[u8]) -> io::Result<()> {
    if fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("asset");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

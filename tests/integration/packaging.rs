//! What the Debian package ships, checked against the binary and a live mount: `--version`
//! names the commit, the man page build.rs generated has every section a sysadmin looks for
//! and describes every `/status` key (STATUS FIELDS) and every flag, the completions know every flag, and the
//! unit, the README and the package agree on paths. The package itself and the unit under a
//! real systemd are tested end to end by scripts/test-deb.sh and scripts/test-systemd.sh.

use std::process::Command;

use crate::common::*;

/// build.rs writes the generated files here (and mirrors them for cargo-deb).
const GENERATED: &str = env!("OUT_DIR");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The man page as plain text: roff's escaped dashes and font changes undone.
fn man_text() -> String {
    read(&format!("{GENERATED}/qrypt-fs.1"))
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
}

/// The text of one `.SH` section of the man page.
fn man_section(man: &str, title: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in man.lines() {
        if let Some(t) = line.strip_prefix(".SH ") {
            inside = t.trim_matches('"') == title;
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "no section {title} in the man page");
    out
}

/// Every `--long` flag that `--help` shows.
fn long_flags() -> Vec<String> {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.len() >= 15, "{flags:?}");
    flags
}

#[test]
fn version_names_the_git_commit_it_was_built_from() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let git = Command::new("git")
        .args(["-C", ROOT, "rev-parse", "--short", "HEAD"])
        .output()
        .expect("git");
    let commit = String::from_utf8_lossy(&git.stdout).trim().to_owned();
    assert!(
        git.status.success() && !commit.is_empty(),
        "not a git checkout?"
    );
    let clean = format!("qrypt-fs {} (commit {commit})\n", env!("CARGO_PKG_VERSION"));
    let dirty = format!(
        "qrypt-fs {} (commit {commit}-dirty)\n",
        env!("CARGO_PKG_VERSION")
    );
    // Tracked files that differ from HEAD; those that make the binary rerun build.rs.
    let status = Command::new("git")
        .args(["-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .expect("git status");
    assert!(status.status.success());
    let changed: Vec<String> = String::from_utf8_lossy(&status.stdout)
        .lines()
        .map(|l| l.get(3..).unwrap_or_default().to_owned())
        .collect();
    let builds = ["src/", "build.rs", "Cargo.toml", "Cargo.lock", "qrypt-api/"];
    if changed.is_empty() {
        assert_eq!(text, clean, "a clean tree is not flagged");
    } else if changed
        .iter()
        .any(|f| builds.iter().any(|b| f.starts_with(b)))
    {
        assert_eq!(text, dirty, "modified sources are flagged: {changed:?}");
    } else {
        // Only files the build does not watch changed: flagged if build.rs ran since.
        assert!(text == clean || text == dirty, "{text}");
    }
}

#[test]
fn man_page_has_the_sections_a_sysadmin_expects() {
    let man = man_text();
    assert!(man.contains("\n.TH qrypt-fs 1 "), "no title line");
    for title in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "MOUNT OPTIONS",
        "FILES",
        "STATUS FIELDS",
        "ENVIRONMENT",
        "SIGNALS",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        man_section(&man, title);
    }
    let env = man_section(&man, "ENVIRONMENT");
    assert!(
        env.contains("QRYPT_TOKEN") && env.contains("RUST_LOG"),
        "{env}"
    );
    let signals = man_section(&man, "SIGNALS");
    for s in ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"] {
        assert!(signals.contains(s), "{s} in {signals}");
    }
    let exits = man_section(&man, "EXIT STATUS");
    for code in ["\n0\n", "\n1\n", "\n2\n"] {
        assert!(exits.contains(code), "{code:?} in {exits}");
    }
    // The options come from the same clap definition as --help: every flag is there.
    let options = man_section(&man, "OPTIONS");
    for flag in long_flags() {
        assert!(options.contains(&flag), "{flag} missing from OPTIONS");
    }
}

#[test]
fn man_page_examples_carry_the_readme_fstab_line_and_the_unit() {
    let man = man_text();
    let examples = man_section(&man, "EXAMPLES");
    let readme = read(&format!("{ROOT}/README.md"));
    let fstab = readme
        .lines()
        .find(|l| l.starts_with("qrypt ") && l.contains(" fuse.qrypt-fs "))
        .expect("the README's fstab line");
    assert!(
        examples.contains(fstab),
        "{fstab:?} not in EXAMPLES:\n{examples}"
    );
    assert!(
        examples.contains("systemctl enable --now qrypt-fs"),
        "{examples}"
    );
}

/// The man page's commands that read the mount run as written (the mount point aside) and do
/// what they say: qrypt-fs-seed feeds the kernel, openssl prints 32 random bytes in hex.
#[cfg(feature = "fuse-tests")]
#[test]
fn man_page_examples_that_read_the_mount_run() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let examples = man_section(&man_text(), "EXAMPLES");
    let commands: Vec<&str> = examples
        .lines()
        .filter(|l| l.starts_with("qrypt-fs-seed ") || l.starts_with("openssl rand "))
        .collect();
    assert_eq!(commands.len(), 2, "{examples}");
    let mount = m.path().display().to_string();
    for command in commands {
        let line = command.replace("/mnt/qrypt", &mount).replacen(
            "qrypt-fs-seed",
            env!("CARGO_BIN_EXE_qrypt-fs-seed"),
            1,
        );
        let out = Command::new("sh").args(["-c", &line]).output().expect("sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command.starts_with("openssl") {
            let hex = stdout.trim();
            assert_eq!(hex.len(), 64, "{hex}");
            assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{hex}");
        }
    }
}

#[cfg(feature = "fuse-tests")]
#[test]
fn every_status_key_is_described_under_status_fields() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = MountBuilder::new(&emu)
        .args(["--budget", "1G/month", "--state-dir"])
        .args([state.path().to_str().expect("utf8")])
        .mount();
    let man = man_text();
    let fields = man_section(&man, "STATUS FIELDS");
    let keys = m.status().into_keys().collect::<Vec<_>>();
    assert!(keys.len() >= 30, "{keys:?}");
    for key in keys {
        // Per-period keys are described once, as budget_PERIOD_....
        let key = ["hour", "day", "month"].iter().fold(key, |k, p| {
            k.replace(&format!("budget_{p}_"), "budget_PERIOD_")
        });
        let described = fields
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == key);
        assert!(
            described,
            "/status key {key} is not described in the man page's STATUS FIELDS"
        );
    }
    let files = man_section(&man, "FILES");
    for file in ["random", "status", "status.json", "metrics"] {
        assert!(files.contains(&format!("MOUNTPOINT/{file}\n")), "{file}");
    }
}

#[test]
fn completions_know_every_flag() {
    let bash = read(&format!("{GENERATED}/qrypt-fs.bash"));
    let zsh = read(&format!("{GENERATED}/_qrypt-fs"));
    let fish = read(&format!("{GENERATED}/qrypt-fs.fish"));
    assert!(bash.contains("complete -F _qrypt-fs") || bash.contains("complete -F _qrypt"));
    assert!(zsh.starts_with("#compdef qrypt-fs"), "{}", &zsh[..40]);
    for flag in long_flags() {
        assert!(bash.contains(&flag), "bash: {flag}");
        assert!(zsh.contains(&flag), "zsh: {flag}");
        let long = flag.trim_start_matches('-');
        assert!(fish.contains(&format!("-l {long}")), "fish: {flag}");
    }
    // Each shell accepts its file as valid syntax.
    let out = Command::new("bash")
        .args(["-n", &format!("{GENERATED}/qrypt-fs.bash")])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_offer_the_mount_option_names() {
    let bash = read(&format!("{GENERATED}/qrypt-fs.bash"));
    let fish = read(&format!("{GENERATED}/qrypt-fs.fish"));
    for name in ["token_file=", "budget=", "allow_other", "buffer_size="] {
        assert!(bash.contains(name), "bash: {name}");
        assert!(fish.contains(name), "fish: {name}");
    }
    assert!(
        !bash.contains("foreground="),
        "-o foreground is no mount option"
    );
}

#[test]
fn man_page_synopsis_names_each_value() {
    let synopsis = man_section(&man_text(), "SYNOPSIS");
    for shown in [
        "[--token-file PATH]",
        "[-o OPTIONS]",
        "[--budget SIZE/PERIOD]",
        "[-f|--foreground]",
    ] {
        assert!(synopsis.contains(shown), "{shown} not in: {synopsis}");
    }
    let usage = synopsis
        .lines()
        .find(|l| l.starts_with("qrypt-fs "))
        .expect("the usage line");
    assert!(usage.trim_end().ends_with(" MOUNTPOINT"), "{usage}");
}

#[test]
fn man_page_lists_every_ignored_mount_option() {
    let section = man_section(&man_text(), "MOUNT OPTIONS");
    // The options mount(8) and systemd pass, as a user finds them in /proc/mounts and fstab.
    for option in [
        "relatime", "async", "sync", "fsname", "subtype", "_netdev", "nofail", "defaults",
        "noatime", "x-*",
    ] {
        assert!(
            section
                .split(|c: char| c == ',' || c.is_whitespace() || c == '.')
                .any(|w| w == option),
            "{option} not in MOUNT OPTIONS: {section}"
        );
    }
    // And each is indeed ignored.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["-o", "relatime,async,sync,fsname=x,subtype=y,nosuch"])
        .arg(dir.path())
        .env_remove("QRYPT_TOKEN")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown mount option \"nosuch\""), "{err}");
}

/// What EXIT STATUS in the man page and the table in docs/configuration.md say, and what the
/// binary returns for each kind of outcome.
#[test]
fn exit_statuses_are_documented_as_the_binary_returns_them() {
    let man = man_section(&man_text(), "EXIT STATUS");
    let mut man_codes: Vec<String> = Vec::new();
    let mut lines = man.lines();
    while let Some(l) = lines.next() {
        if l == ".TP" {
            man_codes.extend(lines.next().map(str::to_owned));
        }
    }
    let doc = read(&format!("{ROOT}/docs/configuration.md"));
    let table = doc
        .split("## Exit status")
        .nth(1)
        .expect("docs/configuration.md: ## Exit status");
    let doc_codes: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| c.parse::<u8>().is_ok())
        .map(str::to_owned)
        .collect();
    assert_eq!(man_codes, ["0", "1", "2"], "{man}");
    assert_eq!(doc_codes, man_codes, "{table}");
    assert!(man.contains("Bad command line"), "{man}");

    let dir = tempfile::tempdir().expect("tempdir");
    // With a token, so that the endpoint is what fails.
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg(dir.path())
            .env("QRYPT_TOKEN", "exit-status-test")
            .env_remove("QRYPT_ENDPOINT")
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["--help"]).0, Some(0));
    // 2: the command line itself (a flag, a value, a mount option).
    assert_eq!(run(&["--no-such-flag"]).0, Some(2));
    assert_eq!(run(&["--buffer-size", "12Q"]).0, Some(2));
    assert_eq!(run(&["-o", "nosuch"]).0, Some(2));
    // 1: a value that parses but cannot be used (here, endpoints).
    for endpoint in [
        "https://user:pw@api.example",
        "https://api.example/?q=1",
        "https://api.example/#f",
        "htp://127.0.0.1:1",
    ] {
        let (code, err) = run(&["--endpoint", endpoint]);
        assert_eq!(code, Some(1), "{endpoint}: {err}");
        assert!(err.starts_with("qrypt-fs: endpoint "), "{endpoint}: {err}");
    }
}

/// Every throughput or CPU figure the README and docs/ quote is one BENCHMARKS.md has.
#[test]
fn figures_in_the_docs_are_taken_from_benchmarks_md() {
    let benchmarks = read(&format!("{ROOT}/BENCHMARKS.md"));
    let mut docs = vec![format!("{ROOT}/README.md")];
    for entry in std::fs::read_dir(format!("{ROOT}/docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path.display().to_string());
        }
    }
    let mut checked = 0;
    for doc in &docs {
        let text = read(doc);
        let words: Vec<&str> = text.split_whitespace().collect();
        for pair in words.windows(2) {
            let unit = pair[1].trim_end_matches(|c: char| ",.;:)".contains(c));
            if !["MiB/s", "GiB/s", "s/GiB", "ms/GiB"].contains(&unit) {
                continue;
            }
            let number = pair[0].trim_start_matches(['(', '~']);
            if number.parse::<f64>().is_err() {
                continue;
            }
            let figure = format!("{number} {unit}");
            assert!(
                benchmarks.contains(&figure),
                "{doc} quotes {figure}, which BENCHMARKS.md does not have"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no figure found: the check looks for the wrong thing"
    );
}

#[test]
fn package_unit_and_readme_agree_on_paths() {
    let manifest = read(&format!("{ROOT}/Cargo.toml"));
    let unit = read(&format!("{ROOT}/contrib/qrypt-fs.service"));
    // mount(8) looks for fuse.qrypt-fs helpers in /usr/bin (among others): the package puts the
    // binary there, and the unit runs that one.
    assert!(manifest.contains(r#"["target/release/qrypt-fs", "usr/bin/", "755"]"#));
    assert!(unit.contains("ExecStart=/usr/bin/qrypt-fs --foreground "));
    assert!(unit.contains("LoadCredential=qrypt-token:/etc/qrypt/token"));
    assert!(unit.contains("ConditionPathExists=/etc/qrypt/token"));
    assert!(unit.contains("StateDirectory=qrypt-fs"));
    for generated in [
        "qrypt-fs.1.gz",
        "qrypt-fs.bash",
        "_qrypt-fs",
        "qrypt-fs.fish",
    ] {
        assert!(
            manifest.contains(&format!("target/release/qrypt-fs-assets/{generated}")),
            "{generated} not packaged"
        );
        assert!(
            std::path::Path::new(&format!("{GENERATED}/{generated}")).is_file(),
            "{generated} not generated"
        );
    }
    assert!(
        !manifest.contains("qrypt-emulator\", \"usr/"),
        "the emulator stays out"
    );
    let readme = read(&format!("{ROOT}/README.md"));
    assert!(readme.contains("cargo deb\n") && readme.contains("apt install ./target/debian/"));
}

#[test]
fn maintainer_scripts_are_valid_sh_and_never_write_the_token() {
    for script in ["postinst", "prerm", "postrm"] {
        let path = format!("{ROOT}/contrib/debian/{script}");
        let text = read(&path);
        assert!(
            text.starts_with("#!/bin/sh\n") && text.contains("#DEBHELPER#"),
            "{script}"
        );
        let out = Command::new("sh").args(["-n", &path]).output().expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines().filter(|l| l.contains("/etc/qrypt/token")) {
            let l = line.trim();
            assert!(
                l.starts_with('#')
                    || l.starts_with("if [ -s /etc/qrypt/token ]")
                    || !l.contains('>'),
                "{script} may write the token: {l}"
            );
        }
    }
}

/// prerm unmounts by the paths of /proc/self/mounts, where the kernel writes space, tab,
/// newline and backslash as octal escapes: its decoder must give back the real path, byte for
/// byte, under /bin/sh (dpkg's) and bash.
#[test]
fn prerm_decodes_mount_paths_as_the_kernel_escapes_them() {
    let text = read(&format!("{ROOT}/contrib/debian/prerm"));
    let start = text
        .find("unescape_mount_path() {")
        .expect("prerm defines unescape_mount_path");
    let end = start + text[start..].find("\n}\n").expect("function end") + 3;
    let function = &text[start..end];
    let cases: [(&str, &[u8]); 6] = [
        ("/mnt/qrypt", b"/mnt/qrypt"),
        (r"/mnt/with\040space", b"/mnt/with space"),
        (r"/mnt/back\134slash", b"/mnt/back\\slash"),
        (r"/mnt/\134040\1340", b"/mnt/\\040\\0"),
        (r"/mnt/tab\011and\012newline", b"/mnt/tab\tand\nnewline"),
        (r"/mnt/ends\012", b"/mnt/ends\n"),
    ];
    for shell in ["sh", "bash"] {
        for (escaped, want) in cases {
            let script = format!("{function}unescape_mount_path \"$1\"; printf '%s' \"$mnt\"");
            let out = Command::new(shell)
                .args(["-c", &script, "prerm", escaped])
                .output()
                .unwrap_or_else(|e| panic!("{shell}: {e}"));
            assert!(out.status.success(), "{shell} {escaped}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(want),
                "{shell}: {escaped}"
            );
        }
    }
}

#[test]
fn package_ships_the_seed_and_metrics_units_and_they_verify() {
    let manifest = read(&format!("{ROOT}/Cargo.toml"));
    assert!(manifest.contains(r#"["target/release/qrypt-fs-seed", "usr/sbin/", "755"]"#));
    assert!(manifest.contains(r#"["contrib/qrypt-fs-metrics", "usr/libexec/qrypt-fs/", "755"]"#));
    for unit in ["qrypt-fs-seed", "qrypt-fs-metrics"] {
        assert!(
            manifest.contains(&format!("unit-name = \"{unit}\"")),
            "{unit} not in systemd-units"
        );
    }
    let seed = read(&format!("{ROOT}/contrib/qrypt-fs-seed.service"));
    for line in [
        "ExecStart=/usr/sbin/qrypt-fs-seed ",
        "Requires=qrypt-fs.service",
        "After=qrypt-fs.service",
        "Before=ssh.service",
        "WantedBy=multi-user.target",
        "CapabilityBoundingSet=CAP_SYS_ADMIN\n",
        "PrivateNetwork=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(seed.contains(line), "{line}");
    }
    // Nothing that would hide the host's /mnt/qrypt from it (comments may name them).
    let settings: String = seed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for hiding in [
        "TemporaryFileSystem",
        "InaccessiblePaths",
        "ProtectHome=tmpfs",
        "PrivateMounts",
    ] {
        assert!(!settings.contains(hiding), "{hiding}");
    }
    let timer = read(&format!("{ROOT}/contrib/qrypt-fs-seed.timer"));
    assert!(timer.contains("OnUnitActiveSec=10min"));
    // systemd itself accepts them (programs swapped for /bin/true: not installed here).
    require_program("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "qrypt-fs.service",
        "qrypt-fs-seed.service",
        "qrypt-fs-seed.timer",
        "qrypt-fs-metrics.service",
        "qrypt-fs-metrics.timer",
    ] {
        let text = read(&format!("{ROOT}/contrib/{name}"))
            .replace("/usr/sbin/qrypt-fs-seed ", "/bin/true ")
            .replace("/usr/libexec/qrypt-fs/qrypt-fs-metrics ", "/bin/true ")
            .replace("/usr/libexec/qrypt-fs/qrypt-fs-mount ", "/bin/true ")
            .replace("/usr/bin/qrypt-fs ", "/bin/true ");
        std::fs::write(dir.path().join(name), text).expect("write unit");
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(
            [
                "qrypt-fs.service",
                "qrypt-fs-seed.service",
                "qrypt-fs-seed.timer",
                "qrypt-fs-metrics.service",
                "qrypt-fs-metrics.timer",
            ]
            .map(|n| dir.path().join(n)),
        )
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The shipped unit's exposure in `systemd-analyze security` stays at 3.0 or less, and every
/// hardening setting it leaves out (each line marked ✗) is named in a comment saying why.
#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_3() {
    require_program("systemd-analyze");
    let path = format!("{ROOT}/contrib/qrypt-fs.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for qrypt-fs.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(exposure <= 3.0, "exposure {exposure} > 3.0:\n{text}");
    let unit = read(&path);
    let comments: Vec<&str> = unit.lines().filter(|l| l.starts_with('#')).collect();
    let left_out: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("✗ "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!left_out.is_empty(), "{text}");
    for setting in left_out {
        // "RestrictAddressFamilies=~AF_UNIX", "User=/DynamicUser=": the first directive.
        let directive = setting.split('=').next().unwrap_or(setting);
        assert!(
            comments
                .iter()
                .any(|c| c.contains(&format!("{directive}="))),
            "{setting} is left out without a comment saying why"
        );
    }
}

/// The shipped unit gives each tenant (each uid) a daily cap well below the host's, so that
/// one user cannot spend the day's budget for everyone; the README says the same.
#[test]
fn the_unit_caps_each_tenant_well_below_the_host() {
    let unit = read(&format!("{ROOT}/contrib/qrypt-fs.service"));
    let exec: String = unit
        .lines()
        .skip_while(|l| !l.starts_with("ExecStart=/usr/bin/qrypt-fs"))
        .take_while(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<&str> = exec.split_whitespace().collect();
    let day_cap = |flag: &str| -> u64 {
        words
            .windows(2)
            .filter(|w| w[0] == flag)
            .find_map(|w| w[1].strip_suffix("/day"))
            .and_then(|size| size.strip_suffix('M'))
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {flag} SIZE/day in M: {exec}"))
    };
    let (host, tenant) = (day_cap("--budget"), day_cap("--tenant-budget"));
    assert!(
        tenant * 5 <= host,
        "{tenant}M/day per tenant, {host}M/day for the host"
    );
    let readme = read(&format!("{ROOT}/README.md")).replace('\n', " ");
    assert!(
        readme.contains(&format!("{tenant} MiB a day per user")),
        "the README names the per-user cap"
    );
}

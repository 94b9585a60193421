//! Command line: flags, `-o` mount options (as `mount.fuse3` and fstab pass them), and checks.
//!
//! [`args`] is the one clap definition; [`mount_options`] rewrites `-o` options into its
//! flags; this module turns the result into the [`Options`] the daemon runs with.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use crate::budget::{Cap, merge_caps};
use crate::refill::pacer::RateLimit;
use crate::tenant::TenantBy;

pub mod args;
pub mod mount_options;
pub mod option_lists;

pub use args::Cli;

/// Everything the daemon needs, after the flags and `-o` options are merged and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub token_file: Option<PathBuf>,
    pub endpoint: String,
    pub ca_cert: Option<PathBuf>,
    pub buffer_size: usize,
    pub rate_limit: Option<RateLimit>,
    pub max_in_flight: usize,
    pub read_timeout: Option<Duration>,
    pub max_waiters_per_user: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// None: report ready without waiting for the upstream (`--startup-timeout 0`).
    pub startup_timeout: Option<Duration>,
    pub quota_retry: Duration,
    pub max_backoff: Duration,
    /// The `--budget` caps in force (none: spend without a cap).
    pub budget: Vec<Cap>,
    pub state_dir: Option<PathBuf>,
    pub reset_budget: bool,
    pub tenant_by: TenantBy,
    /// The `--tenant-budget` caps (none: tenants are not capped).
    pub tenant_budget: Vec<Cap>,
    pub tenant_max: usize,
    /// Tenants without a cap, as `uid:N` or `cgroup:/PATH`.
    pub tenant_exempt: Vec<String>,
    pub mix_local: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub log_file: Option<PathBuf>,
    /// Who to run as after the mount, when started as root (`--user`).
    pub user: Option<String>,
    pub verbose: u8,
}

/// Parses `argv` (flags and `-o` options alike) into `Options`. Errors are usage errors
/// (exit status 2); `--help` and `--version` come back as clap's `DisplayHelp`/`DisplayVersion`.
pub fn parse(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Options, clap::Error> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    reject_token_argument(&args)?;
    let first = parse_flags(&args)?;
    let cli = if first.options.is_empty() {
        first
    } else {
        parse_flags(&mount_options::expand(&args, &first.options)?)?
    };
    Options::from_cli(cli)
}

/// "0.1.0 (commit abc1234)": build.rs asks git which commit this binary is built from.
pub const VERSION: &str = env!("QRYPT_FS_VERSION");

/// The one clap definition, with the version build.rs worked out (so `--version` names the
/// commit while `args.rs` stays free of build-time values, for build.rs to include it).
fn parse_flags(args: &[OsString]) -> Result<Cli, clap::Error> {
    let matches = Cli::command().version(VERSION).try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// The shortest `--rate-limit` window: the pacer holds each slot [`MARGIN`] past the window
/// anyway, so a shorter one paces nothing finer (and `1e-300` would be a zero window).
///
/// [`MARGIN`]: crate::refill::pacer::MARGIN
const MIN_RATE_WINDOW: Duration = crate::refill::pacer::MARGIN;

fn parse_rate_limit(s: &str) -> Result<Option<RateLimit>, clap::Error> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let invalid = |e: String| {
        Cli::command().error(
            ErrorKind::ValueValidation,
            format!("invalid value for '--rate-limit <R/S>': {e}"),
        )
    };
    let limit: RateLimit = s.parse().map_err(invalid)?;
    if limit.window < MIN_RATE_WINDOW {
        return Err(invalid(format!(
            "{s:?}: the window is at least 0.1 s (each request holds its slot 0.1 s past the \
             window anyway, so a shorter one paces nothing finer): give the same rate over a \
             longer window, e.g. 10/1, or off"
        )));
    }
    Ok(Some(limit))
}

impl Options {
    pub fn from_cli(cli: Cli) -> Result<Options, clap::Error> {
        let (source, mountpoint) = match cli.mountpoint_after_source {
            None => (None, cli.mountpoint),
            Some(m) => (Some(cli.mountpoint.to_string_lossy().into_owned()), m),
        };
        let buffer_size = usize::try_from(cli.buffer_size).map_err(|_| {
            Cli::command().error(ErrorKind::ValueValidation, "--buffer-size is too large")
        })?;
        check_buffer_fits(cli.buffer_size, physical_memory())?;
        Ok(Options {
            source,
            mountpoint,
            foreground: cli.foreground,
            token_file: cli.token_file,
            endpoint: cli.endpoint,
            ca_cert: cli.ca_cert,
            buffer_size,
            rate_limit: parse_rate_limit(&cli.rate_limit)?,
            max_in_flight: usize::from(cli.max_in_flight),
            read_timeout: cli.read_timeout,
            max_waiters_per_user: cli.max_waiters_per_user,
            connect_timeout: cli.connect_timeout,
            request_timeout: cli.request_timeout,
            startup_timeout: Some(cli.startup_timeout).filter(|t| !t.is_zero()),
            quota_retry: cli.quota_retry,
            max_backoff: cli.max_backoff,
            budget: merge_caps(cli.budget.iter().map(String::as_str)).map_err(|e| {
                Cli::command().error(
                    ErrorKind::ValueValidation,
                    format!("invalid value for '--budget <SIZE/PERIOD>': {e}"),
                )
            })?,
            state_dir: cli.state_dir,
            reset_budget: cli.reset_budget,
            tenant_by: match (cli.tenant_by.as_str(), cli.tenant_cgroup_depth) {
                ("cgroup", depth) => TenantBy::Cgroup {
                    depth: depth.map(usize::from),
                },
                (_, Some(_)) => {
                    return Err(Cli::command().error(
                        ErrorKind::ArgumentConflict,
                        "--tenant-cgroup-depth needs --tenant-by cgroup",
                    ));
                }
                ("none", None) => TenantBy::None,
                _ => TenantBy::Uid,
            },
            tenant_budget: merge_caps(cli.tenant_budget.iter().map(String::as_str)).map_err(
                |e| {
                    Cli::command().error(
                        ErrorKind::ValueValidation,
                        format!("invalid value for '--tenant-budget <SIZE/PERIOD>': {e}"),
                    )
                },
            )?,
            tenant_max: cli.tenant_max as usize,
            tenant_exempt: cli.tenant_exempt,
            mix_local: cli.mix_local,
            allow_other: cli.allow_other,
            allow_root: cli.allow_root,
            default_permissions: true,
            log_file: cli.log_file,
            user: cli.user,
            verbose: cli.verbose,
        })
    }
}

/// This machine's physical memory (`sysconf(_SC_PHYS_PAGES)` pages), if it can say.
fn physical_memory() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok().flatten()?;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()?;
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
}

/// The buffer is locked in RAM: more than half of the machine's memory would starve
/// everything else (or fail to lock and reach swap), so it is refused.
fn check_buffer_fits(buffer: u64, memory: Option<u64>) -> Result<(), clap::Error> {
    let Some(memory) = memory else {
        return Ok(());
    };
    if buffer > memory / 2 {
        let gib = |n: u64| n as f64 / f64::from(1u32 << 30);
        return Err(Cli::command().error(
            ErrorKind::ValueValidation,
            format!(
                "--buffer-size {buffer} bytes ({:.1} GiB) is more than half of this machine's \
                 memory ({:.1} GiB): at most {} bytes",
                gib(buffer),
                gib(memory),
                memory / 2
            ),
        ));
    }
    Ok(())
}

/// Catches a token passed as a flag before clap would echo it back in an error message.
pub fn reject_token_argument(args: &[OsString]) -> Result<(), clap::Error> {
    for a in args.iter().skip(1) {
        let s = a.to_string_lossy();
        if s == "--token" || s.starts_with("--token=") || s == "-t" {
            return Err(Cli::command().error(
                ErrorKind::UnknownArgument,
                "there is no --token option: a token on the command line is visible to \
                 every user through ps. Set QRYPT_TOKEN in the environment or use \
                 --token-file PATH",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::http::DEFAULT_ENDPOINT;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        super::parse(args)
    }

    #[test]
    fn defaults() {
        let o = parse(&["qrypt-fs", "/mnt/q"]).expect("ok");
        assert_eq!(o.buffer_size, 4 << 20);
        assert_eq!(o.rate_limit, Some(RateLimit::QRYPT));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(args::DEFAULT_ENDPOINT, DEFAULT_ENDPOINT);
        assert!(!o.foreground && !o.mix_local && !o.allow_other && !o.allow_root);
        assert!(o.default_permissions);
    }

    #[test]
    fn mount_fuse3_shape() {
        let o = parse(&[
            "qrypt-fs",
            "qrypt",
            "/mnt/q",
            "-o",
            "rw,token_file=/etc/qrypt/token,allow_other,_netdev,buffer_size=1M,x-systemd.after=net",
            "-o",
            "connect_timeout=2.5,request_timeout=7,verbose,verbose,read_timeout=3",
        ])
        .expect("ok");
        assert_eq!(o.connect_timeout, Duration::from_millis(2500));
        assert_eq!(o.request_timeout, Duration::from_secs(7));
        assert_eq!(o.read_timeout, Some(Duration::from_secs(3)));
        assert_eq!(o.verbose, 2);
        assert_eq!(o.source.as_deref(), Some("qrypt"));
        assert_eq!(o.mountpoint, PathBuf::from("/mnt/q"));
        assert_eq!(o.token_file, Some(PathBuf::from("/etc/qrypt/token")));
        assert!(o.allow_other);
        assert_eq!(o.buffer_size, 1 << 20);
    }

    /// Each flag given as `-o key=value` gives the same options as `--flag value`, and each
    /// differs from the default (so an option that is accepted but dropped fails).
    #[test]
    fn every_flag_is_also_a_mount_option() {
        let sample = |flag: &str| match flag {
            "endpoint" => "https://example.test",
            "buffer_size" => "1M",
            "rate_limit" => "off",
            "max_in_flight" => "2",
            "budget" | "tenant_budget" => "1M/day",
            "tenant_by" => "cgroup",
            "tenant_exempt" => "uid:0",
            "state_dir" => "/x",
            "token_file" | "ca_cert" | "log_file" => "/x",
            _ => "5",
        };
        let default = parse(&["qrypt-fs", "/m"]).expect("defaults");
        let mut checked = 0;
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if mount_options::NOT_MOUNT_OPTIONS.contains(&long) {
                continue;
            }
            let key = long.replace('-', "_");
            let (opt, flag) = if arg.get_action().takes_values() {
                let v = sample(&key);
                (
                    format!("{key}={v}"),
                    vec![format!("--{long}"), v.to_owned()],
                )
            } else {
                (key.clone(), vec![format!("--{long}")])
            };
            // A depth only means something for cgroup tenants.
            let base: &[&str] = if key == "tenant_cgroup_depth" {
                &["qrypt-fs", "/m", "--tenant-by", "cgroup"]
            } else {
                &["qrypt-fs", "/m"]
            };
            let via_o =
                parse(&[base, &["-o", &opt]].concat()).unwrap_or_else(|e| panic!("-o {opt}: {e}"));
            let mut argv = base.to_vec();
            argv.extend(flag.iter().map(String::as_str));
            let via_flag = parse(&argv).unwrap_or_else(|e| panic!("{flag:?}: {e}"));
            assert_eq!(via_o, via_flag, "-o {opt}");
            assert_ne!(via_o, default, "-o {opt} changed nothing");
            checked += 1;
        }
        assert!(checked >= 16, "only {checked} options checked");
    }

    #[test]
    fn mount_options_come_after_flags_and_before_a_double_dash() {
        let o = parse(&[
            "qrypt-fs",
            "-o",
            "buffer_size=1M",
            "--buffer-size",
            "2M",
            "/m",
        ])
        .expect("ok");
        assert_eq!(o.buffer_size, 1 << 20);
        let o = parse(&["qrypt-fs", "-o", "verbose", "--", "/m"]).expect("ok");
        assert_eq!((o.verbose, o.mountpoint), (1, PathBuf::from("/m")));
    }

    #[test]
    fn a_buffer_over_half_the_memory_and_durations_out_of_their_range_are_refused() {
        let gib = 1u64 << 30;
        let e = check_buffer_fits(16 * gib, Some(24 * gib)).expect_err("16 of 24 GiB");
        assert!(
            e.to_string()
                .contains("more than half of this machine's memory (24.0 GiB)")
        );
        assert!(check_buffer_fits(12 * gib, Some(24 * gib)).is_ok());
        assert!(check_buffer_fits(16 * gib, None).is_ok());
        let err = |args: &[&str]| parse(args).expect_err("rejected").to_string();
        for (flag, floor, below) in [
            ("--read-timeout", "0.25", "0.24"),
            ("--connect-timeout", "0.1", "0.099"),
            ("--request-timeout", "0.1", "0.099"),
            ("--quota-retry", "1", "0.999"),
            ("--max-backoff", "0.25", "0.249"),
            ("--startup-timeout", "0.1", "0.099"),
        ] {
            for bad in [
                "1e-300", "0.0009", "0.001", below, "0", "-1", "86401", "1e9", "NaN", "inf",
            ] {
                if bad == "0" && flag == "--startup-timeout" {
                    continue; // 0 skips the wait
                }
                let e = err(&["qrypt-fs", "/m", &format!("{flag}={bad}")]);
                assert!(e.contains(flag) && e.contains(bad), "{flag} {bad}: {e}");
                assert!(
                    e.contains(&format!("At least {floor} (")),
                    "{flag} {bad}: {e}"
                );
                let option = format!("{}={bad}", flag.trim_start_matches("--").replace('-', "_"));
                let e = err(&["qrypt-fs", "/m", "-o", &option]);
                assert!(
                    e.contains(&format!("At least {floor} (")),
                    "-o {option}: {e}"
                );
            }
            assert!(
                parse(&["qrypt-fs", "/m", flag, floor]).is_ok(),
                "{flag} {floor}"
            );
            assert!(parse(&["qrypt-fs", "/m", flag, "86400"]).is_ok());
        }
        let e = err(&["qrypt-fs", "/m", "-o", "request_timeout=1e-300"]);
        assert!(e.contains("1e-300") && e.contains("out of range"), "{e}");
        // The reasons, once each.
        let e = err(&["qrypt-fs", "/m", "--connect-timeout", "0.001"]);
        assert!(e.contains("no connection or answer comes sooner"), "{e}");
        let e = err(&["qrypt-fs", "/m", "--max-backoff", "0.1"]);
        assert!(e.contains("the backoff starts at 0.25 s"), "{e}");
        let e = err(&["qrypt-fs", "/m", "--quota-retry", "0.5"]);
        assert!(e.contains("quota is used up"), "{e}");
        let e = err(&["qrypt-fs", "/m", "--read-timeout", "0.1"]);
        assert!(e.contains("every 225 ms"), "{e}");
    }

    /// The floors' reasons name numbers of other modules; they must stay true.
    #[test]
    fn duration_floors_match_what_they_cite() {
        use crate::read_guard::wait_limits::CHECK_EVERY;
        use crate::refill::PrefetchConfig;
        let base = PrefetchConfig::for_capacity(1 << 20).backoff_base;
        assert_eq!(Duration::from_secs_f64(args::BACKOFF_CAP.min), base);
        assert!(Duration::from_secs_f64(args::READ_TIMEOUT.min) >= CHECK_EVERY);
    }

    #[test]
    fn budgets_accumulate_flags_first_then_mount_options() {
        use crate::budget::Period;
        let o = parse(&[
            "qrypt-fs",
            "/m",
            "--budget",
            "50M/hour",
            "-o",
            "budget=1G/month,state_dir=/var/q,reset_budget",
            "--budget",
            "60M/hour",
        ])
        .expect("ok");
        assert_eq!(
            o.budget,
            vec![
                Cap {
                    limit: 50 << 20,
                    period: Period::Hour
                },
                Cap {
                    limit: 1 << 30,
                    period: Period::Month
                },
            ]
        );
        assert_eq!(o.state_dir, Some(PathBuf::from("/var/q")));
        assert!(o.reset_budget);
        let o = parse(&["qrypt-fs", "/m", "-o", "budget=1M/day", "--budget", "off"]).expect("ok");
        assert_eq!(
            o.budget.len(),
            1,
            "-o comes after the flags: {:?}",
            o.budget
        );
        assert!(parse(&["qrypt-fs", "/m"]).expect("ok").budget.is_empty());
    }

    #[test]
    fn tenant_options_as_flags_and_mount_options() {
        use crate::budget::Period;
        let o = parse(&["qrypt-fs", "/m"]).expect("ok");
        assert_eq!(
            (o.tenant_by, o.tenant_budget.len(), o.tenant_max),
            (TenantBy::Uid, 0, 1024)
        );
        let o = parse(&[
            "qrypt-fs",
            "/m",
            "-o",
            "tenant_by=cgroup,tenant_cgroup_depth=3,tenant_budget=20M/day,tenant_max=10",
            "--tenant-budget",
            "5M/hour",
            "-o",
            "tenant_exempt=uid:0,tenant_exempt=cgroup:/system.slice",
        ])
        .expect("ok");
        assert_eq!(o.tenant_by, TenantBy::Cgroup { depth: Some(3) });
        assert_eq!(
            o.tenant_budget,
            vec![
                Cap {
                    limit: 5 << 20,
                    period: Period::Hour
                },
                Cap {
                    limit: 20 << 20,
                    period: Period::Day
                },
            ]
        );
        assert_eq!(o.tenant_max, 10);
        assert_eq!(o.tenant_exempt, vec!["uid:0", "cgroup:/system.slice"]);
        let o = parse(&["qrypt-fs", "/m", "-o", "tenant_by=none"]).expect("ok");
        assert_eq!(o.tenant_by, TenantBy::None);
        let err = |args: &[&str]| parse(args).expect_err("rejected").to_string();
        assert!(err(&["qrypt-fs", "/m", "--tenant-by", "gid"]).contains("uid"));
        assert!(
            err(&["qrypt-fs", "/m", "--tenant-cgroup-depth", "2"]).contains("--tenant-by cgroup")
        );
        assert!(err(&["qrypt-fs", "/m", "--tenant-exempt", "root"]).contains("uid:N"));
        assert!(err(&["qrypt-fs", "/m", "--tenant-exempt", "cgroup:x"]).contains("cgroup:/PATH"));
        assert!(err(&["qrypt-fs", "/m", "--tenant-budget", "1M/week"]).contains("unknown period"));
        assert!(err(&["qrypt-fs", "/m", "--tenant-max", "0"]).contains("tenant-max"));
    }

    #[test]
    fn help_shows_one_mount_point() {
        let usage = Cli::command().render_usage().to_string();
        assert_eq!(usage, "Usage: qrypt-fs [OPTIONS] <MOUNTPOINT>");
        assert!(parse(&["qrypt-fs", "a", "b", "c"]).is_err());
        let o = parse(&["qrypt-fs", "/m", "--startup-timeout", "0"]).expect("ok");
        assert_eq!(o.startup_timeout, None);
        let o = parse(&["qrypt-fs", "/m"]).expect("ok");
        assert_eq!(o.startup_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn bad_input() {
        let err = |args: &[&str]| parse(args).expect_err("rejected").to_string();
        let small = "--buffer-size 1K is too small: at least 4K";
        assert!(err(&["qrypt-fs", "/m", "--buffer-size", "1K"]).contains(small));
        assert!(err(&["qrypt-fs", "/m", "-o", "buffer_size=1K"]).contains(small));
        assert!(err(&["qrypt-fs", "/m", "--buffer-size", "4MB"]).contains("ambiguous"));
        assert!(err(&["qrypt-fs", "/m", "--startup-timeout=-1"]).contains("or 0 to skip"));
        assert!(err(&["qrypt-fs", "/m", "--buffer-size", "lots"]).contains("not a size"));
        assert!(err(&["qrypt-fs", "/m", "-o", "bogus"]).contains("unknown mount option"));
        assert!(err(&["qrypt-fs", "/m", "-o", "foreground"]).contains("unknown mount option"));
        assert!(err(&["qrypt-fs", "/m", "-o", "help"]).contains("unknown mount option"));
        assert!(
            err(&["qrypt-fs", "/m", "-o", "mix_local,--verbose"]).contains("unknown mount option")
        );
        assert!(err(&["qrypt-fs", "/m", "-o", "endpoint"]).contains("needs a value"));
        assert!(err(&["qrypt-fs", "/m", "-o", "mix_local=1"]).contains("takes no value"));
        assert!(err(&["qrypt-fs", "/m", "-o", "max_in_flight=17"]).contains("17"));
        let e = err(&["qrypt-fs", "/m", "-o", "token=abc"]);
        assert!(e.contains("token_file") && !e.contains("abc"), "{e}");
        assert!(err(&["qrypt-fs", "/m", "--rate-limit", "0/1"]).contains("rate-limit"));
        assert!(err(&["qrypt-fs", "/m", "--rate-limit", "fast"]).contains("REQUESTS/SECONDS"));
        for tiny in ["1/1e-300", "30/0.05", "1/0.0999"] {
            let e = err(&["qrypt-fs", "/m", "-o", &format!("rate_limit={tiny}")]);
            assert!(e.contains(tiny) && e.contains("at least 0.1 s"), "{e}");
        }
        assert!(parse(&["qrypt-fs", "/m", "--rate-limit", "1/0.1"]).is_ok());
        assert!(err(&["qrypt-fs", "/m", "--budget", "1M/week"]).contains("unknown period"));
        assert!(err(&["qrypt-fs", "/m", "-o", "budget=0M/day"]).contains("zero"));
        assert!(parse(&["qrypt-fs"]).is_err());
        let e = err(&["qrypt-fs", "--token=abc", "/m"]);
        assert!(e.contains("QRYPT_TOKEN") && !e.contains("abc"), "{e}");
    }
}

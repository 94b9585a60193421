//! Command line: flags, `-o` mount options (as `mount.fuse3` and fstab pass them), and checks.
use std::path::PathBuf;
use std::time::Duration;

mod args;
pub use args::Cli;
use args::parse_seconds;

use crate::pacer::RateLimit;
use crate::size::parse_size;

fn parse_rate_limit(s: &str) -> Result<Option<RateLimit>, String> {
    if s.eq_ignore_ascii_case("off") {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

/// Everything the daemon needs, after the flags and `-o` options are merged and checked.
#[derive(Debug, Clone)]
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
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub quota_retry: Duration,
    pub max_backoff: Duration,
    pub mix_local: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub log_file: Option<PathBuf>,
    pub verbose: u8,
}

pub const MIN_BUFFER: u64 = 4 << 10;
pub const MAX_BUFFER: u64 = 16 << 30;

impl Options {
    pub fn from_cli(cli: Cli) -> Result<Options, String> {
        let (source, mountpoint) = match cli.positional.as_slice() {
            [m] => (None, m.clone()),
            [s, m] => (Some(s.to_string_lossy().into_owned()), m.clone()),
            _ => return Err("expected MOUNTPOINT (or SOURCE MOUNTPOINT)".into()),
        };
        let mut o = Options {
            source,
            mountpoint,
            foreground: cli.foreground,
            token_file: cli.token_file,
            endpoint: cli.endpoint,
            ca_cert: cli.ca_cert,
            buffer_size: 0,
            rate_limit: parse_rate_limit(&cli.rate_limit)?,
            max_in_flight: cli.max_in_flight as usize,
            read_timeout: cli.read_timeout,
            connect_timeout: cli.connect_timeout,
            request_timeout: cli.request_timeout,
            quota_retry: cli.quota_retry,
            max_backoff: cli.max_backoff,
            mix_local: cli.mix_local,
            allow_other: cli.allow_other,
            allow_root: false,
            default_permissions: true,
            log_file: cli.log_file,
            verbose: cli.verbose,
        };
        let mut buffer_size = cli.buffer_size;
        for opt in cli.options.iter().flat_map(|s| s.split(',')) {
            let opt = opt.trim();
            if opt.is_empty() {
                continue;
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let need = |v: Option<&str>| -> Result<String, String> {
                v.map(str::to_owned)
                    .ok_or_else(|| format!("mount option {key} needs a value ({key}=...)"))
            };
            match key {
                "endpoint" => o.endpoint = need(value)?,
                "token_file" => o.token_file = Some(need(value)?.into()),
                "ca_cert" => o.ca_cert = Some(need(value)?.into()),
                "buffer_size" => buffer_size = parse_size(&need(value)?)?,
                "rate_limit" => o.rate_limit = parse_rate_limit(&need(value)?)?,
                "read_timeout" => o.read_timeout = Some(parse_seconds(&need(value)?)?),
                "connect_timeout" => o.connect_timeout = parse_seconds(&need(value)?)?,
                "request_timeout" => o.request_timeout = parse_seconds(&need(value)?)?,
                "quota_retry" => o.quota_retry = parse_seconds(&need(value)?)?,
                "max_backoff" => o.max_backoff = parse_seconds(&need(value)?)?,
                "max_in_flight" => {
                    o.max_in_flight = need(value)?
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or("max_in_flight must be 1-16")?;
                }
                "log_file" => o.log_file = Some(need(value)?.into()),
                "verbose" => o.verbose = o.verbose.saturating_add(1),
                "mix_local" => o.mix_local = true,
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "default_permissions" => o.default_permissions = true,
                "ro" | "rw" | "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime"
                | "noatime" | "relatime" | "_netdev" | "nofail" | "auto" | "noauto" | "user"
                | "users" | "nouser" | "defaults" | "async" | "sync" => {}
                k if k.starts_with("x-") || k == "fsname" || k == "subtype" => {}
                "token" => {
                    return Err(
                        "there is no token= option: a token in the mount options is \
                                visible to every user; use token_file=PATH"
                            .into(),
                    );
                }
                _ => return Err(format!("unknown mount option {key:?} (see --help)")),
            }
        }
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&buffer_size) {
            return Err(format!(
                "--buffer-size {buffer_size} is out of range: use 4K to 16G"
            ));
        }
        o.buffer_size = buffer_size as usize;
        Ok(o)
    }
}

/// Catches a token passed as a flag before clap would echo it back in an error message.
pub fn reject_token_argument(args: &[std::ffi::OsString]) -> Result<(), String> {
    for a in args.iter().skip(1) {
        let s = a.to_string_lossy();
        if s == "--token" || s.starts_with("--token=") || s == "-t" {
            return Err(
                "there is no --token option: a token on the command line is visible to \
                        every user through ps. Set QRYPT_TOKEN in the environment or use \
                        --token-file PATH"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::http::DEFAULT_ENDPOINT;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        Options::from_cli(cli)
    }

    #[test]
    fn defaults() {
        let o = parse(&["qrypt-fs", "/mnt/q"]).expect("ok");
        assert_eq!(o.buffer_size, 4 << 20);
        assert_eq!(o.rate_limit, Some(RateLimit::QRYPT));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(args::DEFAULT_ENDPOINT, DEFAULT_ENDPOINT);
        assert!(!o.foreground && !o.mix_local && !o.allow_other);
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

    #[test]
    fn every_flag_is_also_a_mount_option() {
        use clap::CommandFactory;
        let sample = |flag: &str| match flag {
            "endpoint" => "https://example.test",
            "buffer_size" => "1M",
            "rate_limit" => "off",
            "max_in_flight" => "2",
            "token_file" | "ca_cert" | "log_file" => "/x",
            _ => "5",
        };
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["foreground", "help", "version"].contains(&long) {
                continue;
            }
            let key = long.replace('-', "_");
            let takes_value = arg.get_action().takes_values();
            let opt = if takes_value {
                format!("{key}={}", sample(&key))
            } else {
                key.clone()
            };
            parse(&["qrypt-fs", "/m", "-o", &opt]).unwrap_or_else(|e| panic!("-o {opt}: {e}"));
        }
    }

    #[test]
    fn bad_input() {
        assert!(parse(&["qrypt-fs", "/m", "--buffer-size", "1K"]).is_err());
        assert!(parse(&["qrypt-fs", "/m", "--buffer-size", "lots"]).is_err());
        assert!(parse(&["qrypt-fs", "/m", "-o", "bogus"]).is_err());
        assert!(parse(&["qrypt-fs", "/m", "-o", "token=abc"]).is_err());
        assert!(parse(&["qrypt-fs", "/m", "--rate-limit", "0/1"]).is_err());
        assert!(parse(&["qrypt-fs"]).is_err());
        let args: Vec<std::ffi::OsString> = ["qrypt-fs", "--token=abc", "/m"]
            .iter()
            .map(Into::into)
            .collect();
        let err = reject_token_argument(&args).expect_err("rejected");
        assert!(!err.contains("abc"));
    }
}

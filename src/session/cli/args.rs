//! The command line's one definition: every flag, its help text and its value parser.
//!
//! Self-contained on purpose (`clap`, `std` and `qrypt-api` only, no `crate::` paths): build.rs includes
//! this file with `#[path = "src/cli/args.rs"] mod args;` to generate the man page and the
//! shell completions from the same definition the binary parses with. `-o` mount options are
//! rewritten into these flags (see `cli/mount_options.rs`), so there is no second parser.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use qrypt_api::{check_range, parse_size};

/// Qrypt's API. Equal to `upstream::http::DEFAULT_ENDPOINT` (a test in `cli` checks).
pub const DEFAULT_ENDPOINT: &str = "https://api-eus.qrypt.com";

/// The smallest and largest `--buffer-size`.
pub const MIN_BUFFER: u64 = 4 << 10;
pub const MAX_BUFFER: u64 = 16 << 30;

pub const ABOUT: &str = "Mount a FUSE filesystem whose /random serves quantum entropy from \
Qrypt's Entropy-as-a-Service API, for programs that can only read a file.";

pub const AFTER_HELP: &str = "\
FILES IN THE MOUNT
  random       Entropy. Every byte is handed out once, then wiped. Reads of up to 256 bytes
               are never short; larger reads may return what is buffered (use dd iflag=fullblock).
               A read waits while the buffer is empty (Ctrl-C ends the wait); O_NONBLOCK gets
               EAGAIN; EIO when the token is rejected, the quota is used up or a --budget cap is
               reached, and nothing is left.
  status       One consistent snapshot (taken at open) as `key: value` lines.
  status.json  The same as a JSON object.
  metrics      The same in Prometheus text format (qrypt_fs_*).

THE TOKEN
  From the environment (QRYPT_TOKEN) or --token-file PATH (first line). Never on the command
  line: argv is visible to every user through ps. It is never logged or shown in status.

MOUNT OPTIONS (-o, for fstab and mount -t fuse.qrypt-fs)
  Every option above except --foreground and --user has one, spelt with underscores:
  endpoint=URL token_file=PATH ca_cert=PATH buffer_size=SIZE rate_limit=R/S max_in_flight=N
  read_timeout=SECS max_waiters_per_user=N connect_timeout=SECS request_timeout=SECS
  startup_timeout=SECS quota_retry=SECS max_backoff=SECS budget=SIZE/PERIOD (repeatable)
  state_dir=PATH reset_budget tenant_by=uid|cgroup|none tenant_cgroup_depth=N
  tenant_budget=SIZE/PERIOD (repeatable) tenant_max=N tenant_exempt=TENANT (repeatable)
  mix_local allow_other allow_root log_file=PATH verbose (repeatable).
  default_permissions and ro are always on; rw, dev, suid, exec, atime (and no*), relatime,
  defaults, async, sync, _netdev, nofail, auto, noauto, user, users, fsname, subtype and x-*
  are accepted and ignored.

SIGNALS
  SIGINT/SIGTERM: answer waiting readers (EIO), unmount (lazily if busy), wipe, exit 0.
  SIGHUP: re-read the token file and retry now, whatever the upstream state.

EXAMPLE
  QRYPT_TOKEN=\"$(cat ~/.qrypt-token)\" qrypt-fs /mnt/qrypt
  head -c 32 /mnt/qrypt/random | xxd; cat /mnt/qrypt/status; umount /mnt/qrypt";

#[derive(Parser, Debug, Clone)]
#[command(name = "qrypt-fs", version, about = ABOUT, after_help = AFTER_HELP, args_override_self = true)]
pub struct Cli {
    /// The directory to mount on. `qrypt-fs SOURCE MOUNTPOINT` (as mount.fuse3 calls it) also works.
    #[arg(value_name = "MOUNTPOINT", required = true)]
    pub mountpoint: PathBuf,

    /// The mount point when mount.fuse3 calls `qrypt-fs SOURCE MOUNTPOINT`; the first is then
    /// the source. Hidden: a user gives one mount point, and --help says so.
    #[arg(value_name = "MOUNTPOINT", hide = true)]
    pub mountpoint_after_source: Option<PathBuf>,

    /// Stay in the foreground (for systemd, debugging and tests); logs go to stderr.
    #[arg(short, long)]
    pub foreground: bool,

    /// Read the API token from the first line of PATH (otherwise from QRYPT_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Base URL of the API (scheme, host, port; no path). https:// only, except http:// to a
    /// loopback address (the emulator). QRYPT_ENDPOINT, when set, replaces the default (for
    /// tests and staging; this flag or endpoint= still wins).
    // The variable's value stays out of --help: it may carry credentials (refused, and masked
    // in every message, but --help would print it whole).
    #[arg(long, value_name = "URL", default_value = DEFAULT_ENDPOINT, env = "QRYPT_ENDPOINT",
          hide_env_values = true)]
    pub endpoint: String,

    /// Also trust the CA certificate(s) in this PEM file (TLS-intercepting proxies, the emulator).
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// Prefetch buffer capacity, 4K to 16G, in binary units (K = 1024 bytes, M, G; 4.5M is
    /// fine; 4MB is refused as ambiguous rather than read as 4M). Default 4M: filled by 8
    /// requests, well inside the API's burst of 30; a 1 MiB read never waits on a full buffer;
    /// small enough that a mount costs little of the monthly quota and fits the usual 8 MiB
    /// mlock limit.
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_buffer_size)]
    pub buffer_size: u64,

    /// Client-side pacing, REQUESTS/SECONDS, or `off`. Default: Qrypt's documented limit.
    // Checked where it becomes a `RateLimit` (cli/mod.rs), which keeps this file free of crate types.
    #[arg(long, value_name = "R/S", default_value = "30/10")]
    pub rate_limit: String,

    /// Requests in flight at once (1-16).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub max_in_flight: u8,

    /// Turn a read that waits longer than SECONDS into EIO (default: wait, like /dev/random).
    /// At least 0.25: waiting reads are looked at every 225 ms.
    #[arg(long, value_name = "SECONDS", value_parser = parse_read_timeout)]
    pub read_timeout: Option<Duration>,

    /// Reads of random one tenant (a uid by default, see --tenant-by) may have waiting at once;
    /// one more fails at once with EBUSY instead of costing everyone the watch of another
    /// waiter. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_waiters_per_user: usize,

    /// TCP/TLS connect timeout, at least 0.1.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_timeout)]
    pub connect_timeout: Duration,

    /// Limit for one whole request, body included; at least 0.1.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_timeout)]
    pub request_timeout: Duration,

    /// Before reporting the mount ready, wait up to SECONDS for the upstream's first answer:
    /// a refused token, a wrong endpoint or an untrusted certificate then fails the start
    /// (exit 1, nothing left mounted); no answer mounts anyway, with a warning. 0 skips;
    /// otherwise at least 0.1.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_startup_timeout)]
    pub startup_timeout: Duration,

    /// After a 403 (monthly quota used up), ask again after this long; at least 1.
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = parse_quota_retry)]
    pub quota_retry: Duration,

    /// Longest wait between retries while the upstream fails (backoff is exponential with
    /// full jitter, starting at 0.25 s, so at least 0.25); also the longest 429 Retry-After
    /// honoured.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_backoff_cap)]
    pub max_backoff: Duration,

    /// Spend at most SIZE per calendar PERIOD (hour, day or month, in UTC), e.g. 200M/day;
    /// repeatable (each cap holds); `off` drops the caps given before it. The spend (bytes
    /// requested, rejected ones included) is recorded in --state-dir before each request, so
    /// it holds across restarts and crashes. Default: off.
    // Checked where it becomes a cap (cli/mod.rs), which keeps this file free of crate types.
    #[arg(long, value_name = "SIZE/PERIOD", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub budget: Vec<String>,
    /// Where the budget's spend is recorded. Default: /var/lib/qrypt-fs for root, else
    /// $XDG_STATE_HOME/qrypt-fs or ~/.local/state/qrypt-fs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Start the budget's count from zero, whatever the state file holds (also the way past
    /// a damaged state file). SIGHUP never resets it.
    #[arg(long)]
    pub reset_budget: bool,
    /// How readers are told apart; each tenant is served its fair share and capped by
    /// --tenant-budget. uid: the reader's uid. cgroup: its cgroup (v2), so each systemd
    /// service, container or pod is a tenant (readers whose cgroup cannot be read are one
    /// tenant, unknown). none: one tenant for all.
    #[arg(long, value_name = "uid|cgroup|none", default_value = "uid",
          value_parser = ["uid", "cgroup", "none"])]
    pub tenant_by: String,
    /// With --tenant-by cgroup: keep the first N components of the cgroup path, so that,
    /// say, a Kubernetes pod's containers (kubepods.slice/kubepods-burstable.slice/POD/...,
    /// N = 3) are one tenant. Default: the whole path.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=64))]
    pub tenant_cgroup_depth: Option<u8>,
    /// The most one tenant may receive per calendar PERIOD (hour, day or month, in UTC),
    /// e.g. 20M/day; repeatable (each cap holds); `off` drops the caps given before it. A
    /// tenant at its cap gets EIO at once, the others go on. Recorded in --state-dir ahead of
    /// use (in chunks of 1/32 of the smallest cap), so it holds across restarts and crashes.
    /// Default: off.
    #[arg(long, value_name = "SIZE/PERIOD", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub tenant_budget: Vec<String>,
    /// Tenants the --tenant-budget record holds per period. A newcomer beyond it gets EIO
    /// until the period renews: forgetting an older tenant's spend instead would let that
    /// tenant read its cap again.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tenant_max: u32,
    /// A tenant that --tenant-budget does not cap: uid:N or cgroup:/PATH; repeatable. Root
    /// is capped like any other tenant unless exempted (uid:0).
    #[arg(long, value_name = "TENANT", action = clap::ArgAction::Append, value_parser = parse_tenant)]
    pub tenant_exempt: Vec<String>,
    /// XOR every byte with the OS CSPRNG (getrandom): unpredictable if either source is good.
    /// Off by default: by default every byte is Qrypt's.
    #[arg(long)]
    pub mix_local: bool,

    /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    pub allow_other: bool,

    /// Let root, besides the mounting user, read the mount (FUSE's allow_root).
    #[arg(long)]
    pub allow_root: bool,

    /// Started as root: the user every process but the supervisor runs as once the mount
    /// exists. Default: qrypt-fs (the package's system user), else nobody (logged).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Log to this file instead of syslog when in the background.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Mount options, comma-separated (see MOUNT OPTIONS below).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// A flag value that does not parse; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(String);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidValue {}

/// A duration flag's range in decimal seconds, and why its floor is where it is.
#[derive(Debug, Clone, Copy)]
pub struct SecondsRange {
    pub min: f64,
    pub max: f64,
    /// The floor as the message says it, e.g. "0.1 (100 ms)".
    pub min_text: &'static str,
    /// Why nothing shorter makes sense.
    pub why: &'static str,
}

/// The longest duration any flag takes: more than a day is a typo or a hang by another name
/// (and far from where `Duration` or `Instant` arithmetic could overflow).
pub const MAX_SECONDS: f64 = 86_400.0;

/// `--connect-timeout`, `--request-timeout`.
pub const TIMEOUT: SecondsRange = SecondsRange {
    min: 0.1,
    max: MAX_SECONDS,
    min_text: "0.1 (100 ms)",
    why: "no connection or answer comes sooner, so a shorter limit fails every request, and \
          with --rate-limit off turns the retries into a busy loop",
};

/// `--startup-timeout`, besides 0.
pub const STARTUP_TIMEOUT: SecondsRange = SecondsRange {
    min: 0.1,
    max: MAX_SECONDS,
    min_text: "0.1 (100 ms)",
    why: "no first answer comes sooner (a connection, then a request), so a shorter wait \
          would only ever warn that there was none",
};

/// `--max-backoff`.
pub const BACKOFF_CAP: SecondsRange = SecondsRange {
    min: 0.25,
    max: MAX_SECONDS,
    min_text: "0.25 (250 ms)",
    why: "the backoff starts at 0.25 s, so a lower cap would retry a failing upstream at a \
          fixed, fast pace instead of backing off",
};

/// `--quota-retry`.
pub const QUOTA_RETRY: SecondsRange = SecondsRange {
    min: 1.0,
    max: MAX_SECONDS,
    min_text: "1 (a second)",
    why: "a 403 means the month's quota is used up, so asking more often only adds refused \
          requests",
};

/// `--read-timeout`.
pub const READ_TIMEOUT: SecondsRange = SecondsRange {
    min: 0.25,
    max: MAX_SECONDS,
    min_text: "0.25 (250 ms)",
    why: "waiting reads are looked at every 225 ms, so a shorter limit could not be kept",
};

/// Decimal seconds within `range`; the message says the range and why its floor.
pub fn parse_seconds_in(s: &str, range: &SecondsRange) -> Result<Duration, InvalidValue> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| InvalidValue(format!("{s:?} is not a number of seconds")))?;
    // Written so that NaN fails too.
    if !(range.min..=range.max).contains(&v) {
        return Err(InvalidValue(format!(
            "{s:?} seconds is out of range: use {} to 86400 (a day). At least {}: {}",
            range.min_text, range.min_text, range.why
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_timeout(s: &str) -> Result<Duration, InvalidValue> {
    parse_seconds_in(s, &TIMEOUT)
}

fn parse_backoff_cap(s: &str) -> Result<Duration, InvalidValue> {
    parse_seconds_in(s, &BACKOFF_CAP)
}

fn parse_quota_retry(s: &str) -> Result<Duration, InvalidValue> {
    parse_seconds_in(s, &QUOTA_RETRY)
}

fn parse_read_timeout(s: &str) -> Result<Duration, InvalidValue> {
    parse_seconds_in(s, &READ_TIMEOUT)
}

/// `--startup-timeout`: a timeout, or 0 for "not at all".
pub fn parse_startup_timeout(s: &str) -> Result<Duration, InvalidValue> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_seconds_in(s, &STARTUP_TIMEOUT).map_err(|e| InvalidValue(format!("{e}; or 0 to skip")))
}

/// `uid:N` or `cgroup:/PATH`, as a tenant is named in the log and /status.
pub fn parse_tenant(s: &str) -> Result<String, InvalidValue> {
    let ok = match (s.strip_prefix("uid:"), s.strip_prefix("cgroup:")) {
        (Some(uid), _) => uid.parse::<u32>().is_ok(),
        (_, Some(path)) => path.starts_with('/'),
        _ => false,
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(InvalidValue(format!(
            "{s:?}: a tenant is uid:N (uid:0) or cgroup:/PATH (cgroup:/system.slice/x.service)"
        )))
    }
}

fn parse_buffer_size(s: &str) -> Result<u64, InvalidValue> {
    let n = parse_size(s).map_err(InvalidValue)?;
    check_range("--buffer-size", n, MIN_BUFFER, MAX_BUFFER).map_err(InvalidValue)
}

/// `qrypt-fs-seed`: the privileged one-shot that feeds the kernel's RNG from a mount. A binary
/// of its own, so the daemon's command line (a mount helper whose positionals mount.fuse3
/// fills in) never has to tell a subcommand from a mount point.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "qrypt-fs-seed",
    version,
    about = "Read bytes from a qrypt-fs mount, add them to the kernel's entropy pool with full \
             credit (RNDADDENTROPY) and force a reseed of its CRNG (RNDRESEEDCRNG). Needs \
             CAP_SYS_ADMIN.",
    after_help = "EXIT STATUS\n  0 seeded; 2 usage; 3 not a qrypt-fs mount; 4 the read failed; \
                  5 the kernel refused (EPERM without CAP_SYS_ADMIN)."
)]
pub struct SeedCli {
    /// Bytes to read and add (1..=512); credited as 8 bits each.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=512))]
    pub bytes: u64,

    /// Give up on a read that has not completed after this long.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// The qrypt-fs mount to read from.
    #[arg(value_name = "MOUNTPOINT", default_value = "/mnt/qrypt")]
    pub mountpoint: PathBuf,
}

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
  Every option above except --foreground has one, spelt with underscores: endpoint=URL
  token_file=PATH ca_cert=PATH buffer_size=SIZE rate_limit=R/S max_in_flight=N
  read_timeout=SECS max_waiters_per_user=N connect_timeout=SECS request_timeout=SECS
  startup_timeout=SECS quota_retry=SECS max_backoff=SECS budget=SIZE/PERIOD (repeatable)
  state_dir=PATH reset_budget mix_local allow_other allow_root log_file=PATH verbose
  (repeatable).
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
    #[arg(long, value_name = "URL", default_value = DEFAULT_ENDPOINT, env = "QRYPT_ENDPOINT")]
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
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub read_timeout: Option<Duration>,

    /// Reads of random one user may have waiting at once; one more fails at once with EBUSY
    /// instead of costing everyone the watch of another waiter. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_waiters_per_user: usize,

    /// TCP/TLS connect timeout.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,

    /// Limit for one whole request, body included.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub request_timeout: Duration,

    /// Before reporting the mount ready, wait up to SECONDS for the upstream's first answer:
    /// a refused token, a wrong endpoint or an untrusted certificate then fails the start
    /// (exit 1, nothing left mounted); no answer mounts anyway, with a warning. 0 skips.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds_or_zero)]
    pub startup_timeout: Duration,

    /// After a 403 (monthly quota used up), ask again after this long.
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = parse_seconds)]
    pub quota_retry: Duration,

    /// Longest wait between retries while the upstream fails (backoff is exponential with
    /// full jitter, starting at 0.25 s); also the longest 429 Retry-After honoured.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
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

/// The shortest and longest duration any flag takes: below a millisecond a timeout cannot be
/// met (and `1e-300` is zero), above a day it is a typo or a hang by another name.
pub const MIN_SECONDS: f64 = 0.001;
pub const MAX_SECONDS: f64 = 86_400.0;

/// Every duration flag's parser: decimal seconds from [`MIN_SECONDS`] to [`MAX_SECONDS`].
pub fn parse_seconds(s: &str) -> Result<Duration, InvalidValue> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| InvalidValue(format!("{s:?} is not a number of seconds")))?;
    // Written so that NaN fails too.
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&v) {
        return Err(InvalidValue(format!(
            "{s:?} seconds is out of range: use 0.001 (1 ms) to 86400 (a day)"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Seconds, where 0 means "not at all".
pub fn parse_seconds_or_zero(s: &str) -> Result<Duration, InvalidValue> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_seconds(s).map_err(|e| InvalidValue(format!("{e}, or 0 to skip")))
}

fn parse_buffer_size(s: &str) -> Result<u64, InvalidValue> {
    let n = parse_size(s).map_err(InvalidValue)?;
    check_range("--buffer-size", n, MIN_BUFFER, MAX_BUFFER).map_err(InvalidValue)
}

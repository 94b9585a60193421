//! `-o key=value,...` (as fstab and `mount.fuse3` pass them) rewritten into the long flags of
//! [`Cli`], so that one clap definition parses, checks and documents both spellings.
use std::ffi::OsString;

use clap::CommandFactory;
use clap::error::ErrorKind;

use super::args::Cli;
use super::option_lists::IGNORED;
pub use super::option_lists::NOT_MOUNT_OPTIONS;

/// `argv` with every `-o` option given in `opts` (the parsed `-o` values) rewritten into its
/// flag. The flags go after the original arguments (so, as before, `-o` wins over a flag
/// given twice), but before a `--`, after which they would be positionals.
pub fn expand(args: &[OsString], opts: &[String]) -> Result<Vec<OsString>, clap::Error> {
    let mut flags = Vec::new();
    for opt in opts.iter().flat_map(|s| s.split(',')) {
        if let Some(flag) = to_flag(opt.trim())? {
            flags.push(OsString::from(flag));
        }
    }
    let mut out = args.to_vec();
    let at = out
        .iter()
        .skip(1)
        .position(|a| a == "--")
        .map_or(out.len(), |i| i + 1);
    out.splice(at..at, flags);
    Ok(out)
}

/// One option as a flag: `buffer_size=1M` becomes `--buffer-size=1M`; None when ignored.
fn to_flag(opt: &str) -> Result<Option<String>, clap::Error> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    if IGNORED.contains(&key) || key.starts_with("x-") {
        return Ok(None);
    }
    if key == "token" {
        // The value is never echoed: this message is all the caller sees.
        return Err(usage_error(
            "there is no token= option: a token in the mount options is visible to every \
             user; use token_file=PATH",
        ));
    }
    let long = key.replace('_', "-");
    let cmd = Cli::command();
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .filter(|_| !NOT_MOUNT_OPTIONS.contains(&long.as_str()) && !key.starts_with('-'));
    let Some(arg) = arg else {
        return Err(usage_error(format!(
            "unknown mount option {key:?} (see --help)"
        )));
    };
    match (arg.get_action().takes_values(), value) {
        (true, Some(v)) => Ok(Some(format!("--{long}={v}"))),
        (true, None) => Err(usage_error(format!(
            "mount option {key} needs a value ({key}=...)"
        ))),
        (false, None) => Ok(Some(format!("--{long}"))),
        (false, Some(_)) => Err(usage_error(format!("mount option {key} takes no value"))),
    }
}

fn usage_error(message: impl std::fmt::Display) -> clap::Error {
    Cli::command().error(ErrorKind::ValueValidation, message)
}

//! The API token: where it comes from, and a type that never prints or outlives its use.
//!
//! A token file is read with care, because it may be swapped for something hostile while we
//! run: it is opened without blocking (a FIFO or a device would otherwise hold the reader
//! forever), only a regular file is read, at most [`MAX_TOKEN_FILE_BYTES`] of it, and its
//! last path component may be a symlink followed once (see [`read_token_file`]).
use std::fmt;
use std::fs::{File, FileType};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Environment variable holding the token when no `--token-file` is given.
pub const TOKEN_ENV: &str = "QRYPT_TOKEN";

/// Longest token accepted, from any source. Qrypt's tokens are JWTs of about 1 KiB; anything
/// much longer is not a token, and would be sent as a header on every request.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Largest token file read: the token plus a trailing newline, with room to spare. A larger
/// file is refused after reading at most one byte more than this.
pub const MAX_TOKEN_FILE_BYTES: usize = 16 * 1024;

/// A bearer token. Its memory is wiped on drop and it has no `Display`; `Debug` is redacted so a
/// stray `{:?}` cannot leak it into a log.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// Validates a token's text: non-empty, visible ASCII only (it goes into an HTTP header).
    pub fn new(value: String) -> Result<Token, TokenError> {
        let value = Zeroizing::new(value);
        if value.is_empty() {
            return Err(TokenError::Empty);
        }
        if value.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: value.len() });
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacters);
        }
        Ok(Token(value))
    }

    /// The secret itself; callers put it straight into a sensitive header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the token was loaded from, for `/status` and messages (never the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Environment,
    File(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Environment => write!(f, "environment ({TOKEN_ENV})"),
            TokenSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no API token: set {TOKEN_ENV} in the environment or pass --token-file PATH \
         (a file whose first line is the token); for a local test run, see `qrypt-emulator --help`"
    )]
    Missing,
    #[error("the API token is empty")]
    Empty,
    #[error("the API token contains whitespace or non-ASCII characters")]
    BadCharacters,
    #[error("the API token is {len} bytes long; a token is at most {MAX_TOKEN_LEN}")]
    TooLong { len: usize },
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is {kind}, not a regular file: refused")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes (a token is a few KiB \
         at most): refused"
    )]
    TooLarge { path: PathBuf },
    #[error(
        "token file {path} is a symlink to a symlink: only one symlink is followed (point it \
         at the file itself)"
    )]
    SymlinkChain { path: PathBuf },
    #[error("token file {path}: no answer within {secs} s (a hung filesystem?)")]
    TimedOut { path: PathBuf, secs: u64 },
    #[error(
        "token file {path}: {hung} earlier reads still hang (a hung filesystem?); not read \
         again until one of them returns"
    )]
    ReadsHung { path: PathBuf, hung: usize },
    #[error("token file {path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<TokenError>,
    },
}

/// Overwrites the variable's value where the kernel shows it (`/proc/PID/environ` reads the
/// original block, which `remove_var` alone leaves intact), then removes the variable.
fn scrub_environment() {
    // SAFETY: called once at start-up, before any thread exists; getenv's pointer is valid for
    // strlen bytes, and we only overwrite the value, keeping its terminating NUL.
    unsafe {
        let p = libc::getenv(c"QRYPT_TOKEN".as_ptr());
        if !p.is_null() {
            let len = libc::strlen(p);
            std::ptr::write_bytes(p, b'x', len);
        }
        std::env::remove_var(TOKEN_ENV);
    }
}

/// Reads the first line of `path`, trimmed.
///
/// Symlink policy: the last component of `path` may be a symlink, which is followed once
/// (`/etc/qrypt/token -> /run/credentials/qrypt-fs.service/token`, or a Kubernetes secret's
/// `token -> ..data/token`); what it names must be the file itself, not another symlink.
/// Directories on the way are resolved as usual. The file must be a regular file (checked
/// before opening, so a device is never opened, and again on the open descriptor, which is
/// what counts) and at most [`MAX_TOKEN_FILE_BYTES`] long.
pub fn read_token_file(path: &Path) -> Result<Token, TokenError> {
    parse_token_file(path, &read_file(path)?)
}

/// Every answer of [`kind`], so a process that read the file for another can say which.
pub const KINDS: [&str; 7] = [
    "a directory",
    "a FIFO",
    "a socket",
    "a character device",
    "a block device",
    "a symlink",
    "not a regular file",
];

/// What a file type is, for a refusal's message.
fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// `path`, or where it points if its last component is a symlink (one hop).
fn follow_once(path: &Path) -> Result<PathBuf, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(read_err)?;
    if !meta.file_type().is_symlink() {
        return Ok(path.to_owned());
    }
    let link = std::fs::read_link(path).map_err(read_err)?;
    Ok(match path.parent() {
        Some(dir) if link.is_relative() => dir.join(link),
        _ => link,
    })
}

/// Reads a token file's bytes somewhere else: a process that runs as another user installs
/// one for the one file it may no longer open itself (see [`set_file_reader`]).
pub type FileReader = Box<dyn Fn() -> Result<Zeroizing<Vec<u8>>, TokenError> + Send + Sync>;

/// The reader of one path, if one is installed.
static FILE_READER: std::sync::OnceLock<(PathBuf, FileReader)> = std::sync::OnceLock::new();

/// From now on the file at `path` (and only it) is read through `reader`. Once per process.
pub fn set_file_reader(path: PathBuf, reader: FileReader) {
    let _ = FILE_READER.set((path, reader));
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    match FILE_READER.get() {
        Some((p, reader)) if p == path => reader(),
        _ => read_file_here(path),
    }
}

/// Reads a token file's bytes in this process, with the checks [`read_token_file`] lists.
pub fn read_file_here(path: &Path) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let not_regular = |t: FileType| TokenError::NotRegular {
        path: path.to_owned(),
        kind: kind(t),
    };
    let target = follow_once(path)?;
    let before = std::fs::symlink_metadata(&target).map_err(read_err)?;
    if before.file_type().is_symlink() {
        return Err(TokenError::SymlinkChain {
            path: path.to_owned(),
        });
    }
    if !before.is_file() {
        return Err(not_regular(before.file_type()));
    }
    // Swapped since the look above: O_NONBLOCK keeps a FIFO's open from waiting for a writer,
    // O_NOFOLLOW refuses a second symlink, O_NOCTTY keeps a terminal from becoming ours (std
    // adds O_CLOEXEC).
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(&target)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => TokenError::SymlinkChain {
                path: path.to_owned(),
            },
            _ => read_err(e),
        })?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let too_large = || TokenError::TooLarge {
        path: path.to_owned(),
    };
    if meta.len() > MAX_TOKEN_FILE_BYTES as u64 {
        return Err(too_large());
    }
    // One byte more than allowed tells a file that grew since fstat; the buffer never grows,
    // so no copy of the token is left behind in freed memory.
    let mut text = Zeroizing::new(vec![0u8; MAX_TOKEN_FILE_BYTES + 1]);
    let mut len = 0;
    let mut reader = file.take(MAX_TOKEN_FILE_BYTES as u64 + 1);
    loop {
        match reader.read(&mut text[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
        if len == text.len() {
            return Err(too_large());
        }
    }
    text.truncate(len);
    Ok(text)
}

/// The token in a token file's `text`: its first line, trimmed.
fn parse_token_file(path: &Path, text: &[u8]) -> Result<Token, TokenError> {
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8(first.to_vec()).map_err(|_| TokenError::InFile {
        path: path.to_owned(),
        source: Box::new(TokenError::BadCharacters),
    })?;
    let trimmed = Zeroizing::new(line);
    Token::new(trimmed.trim().to_owned()).map_err(|e| TokenError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

/// A token file watched for a new token. It remembers a digest of the contents its last token
/// came from (never the contents), so a check reads the file once and hands out a token only
/// when the contents changed. Plain owned data with blocking reads: a caller that must not
/// block can move it (or a copy) to a blocking thread and back.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    digest: Option<[u8; 32]>,
}

impl TokenFile {
    /// Watches `path`; its contents now count as already taken (the token was loaded at
    /// start-up).
    pub fn new(path: PathBuf) -> TokenFile {
        let digest = read_file(&path).ok().map(|text| digest(&text));
        TokenFile { path, digest }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token, if the contents changed since the last token taken from the file. A missing
    /// file counts as unchanged (it may be mid-replacement); a file refused (not a regular
    /// file, too large, unreadable) or changed without a valid token is an error, and is
    /// looked at again next time.
    pub fn changed(&mut self) -> Result<Option<Token>, TokenError> {
        let text = match read_file(&self.path) {
            Ok(text) => text,
            Err(TokenError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let d = digest(&text);
        if self.digest == Some(d) {
            return Ok(None);
        }
        let token = parse_token_file(&self.path, &text)?;
        self.digest = Some(d);
        Ok(Some(token))
    }

    /// Reads the token whether or not the file changed (SIGHUP).
    pub fn reload(&mut self) -> Result<Token, TokenError> {
        let text = read_file(&self.path)?;
        let token = parse_token_file(&self.path, &text)?;
        self.digest = Some(digest(&text));
        Ok(token)
    }
}

/// The token variable's value, if set; removed from the environment either way. Call it
/// before any thread exists (it changes the environment).
pub fn take_environment() -> Option<Zeroizing<String>> {
    let from_env = std::env::var(TOKEN_ENV).ok().map(Zeroizing::new);
    scrub_environment();
    from_env
}

/// The token from the value [`take_environment`] took.
pub fn from_environment(
    value: Option<Zeroizing<String>>,
) -> Result<(Token, TokenSource), TokenError> {
    match value {
        Some(v) => Ok((Token::new(v.trim().to_owned())?, TokenSource::Environment)),
        None => Err(TokenError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let t = Token::new("s3cret-value".into()).expect("valid");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn rejects_empty_and_spaces() {
        assert!(matches!(Token::new(String::new()), Err(TokenError::Empty)));
        assert!(matches!(
            Token::new("a b".into()),
            Err(TokenError::BadCharacters)
        ));
    }

    #[test]
    fn file_first_line_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t");
        std::fs::write(&p, "  abc.def  \nsecond line\n").expect("write");
        assert_eq!(read_token_file(&p).expect("token").expose(), "abc.def");
        std::fs::write(&p, "\n").expect("write");
        let err = read_token_file(&p).expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn token_file_hands_out_a_token_only_when_it_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t");
        std::fs::write(&p, "first\n").expect("write");
        let mut f = TokenFile::new(p.clone());
        assert!(
            f.changed().expect("readable").is_none(),
            "taken at start-up"
        );
        std::fs::write(&p, "second\n").expect("write");
        let t = f.changed().expect("valid").expect("changed");
        assert_eq!(t.expose(), "second");
        assert!(f.changed().expect("readable").is_none(), "taken once");
        // A bad token is an error each time it is looked at, until the file is fixed.
        std::fs::write(&p, "bad token\n").expect("write");
        assert!(f.changed().is_err());
        assert!(f.changed().is_err());
        std::fs::remove_file(&p).expect("remove");
        assert!(f.changed().expect("missing: unchanged").is_none());
        assert!(
            f.reload().is_err(),
            "a forced reload reports the missing file"
        );
        std::fs::write(&p, "second\n").expect("write");
        assert_eq!(f.reload().expect("forced").expose(), "second");
        assert!(f.changed().expect("readable").is_none());
    }

    fn refused(path: &Path) -> String {
        read_token_file(path).expect_err("refused").to_string()
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        // No writer: a blocking open would never return.
        assert!(refused(&fifo).contains("is a FIFO, not a regular file"));
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
        assert!(refused(&sock).contains("is a socket"));
        assert!(refused(dir.path()).contains("is a directory"));
        assert!(refused(Path::new("/dev/zero")).contains("is a character device"));
        let mut f = TokenFile::new(dir.path().join("t"));
        f.path = fifo;
        assert!(
            f.changed().is_err(),
            "a refused file is reported, not ignored"
        );
    }

    #[test]
    fn refuses_large_files_and_long_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        // Sparse: 100 MB long without writing it.
        File::create(&big)
            .and_then(|f| f.set_len(100_000_000))
            .expect("sparse file");
        assert!(refused(&big).contains("larger than 16384 bytes"));
        let just = dir.path().join("just");
        std::fs::write(&just, "x".repeat(MAX_TOKEN_FILE_BYTES + 1)).expect("write");
        assert!(refused(&just).contains("larger than"));
        std::fs::write(&just, "x".repeat(MAX_TOKEN_LEN + 1)).expect("write");
        assert!(refused(&just).contains("a token is at most 8192"));
        std::fs::write(&just, format!("{}\n", "x".repeat(MAX_TOKEN_LEN))).expect("write");
        assert_eq!(
            read_token_file(&just).expect("fits").expose().len(),
            MAX_TOKEN_LEN
        );
    }

    #[test]
    fn follows_one_symlink_and_no_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::write(&real, "tok\n").expect("write");
        let one = dir.path().join("one");
        std::os::unix::fs::symlink("real", &one).expect("symlink");
        assert_eq!(read_token_file(&one).expect("one hop").expose(), "tok");
        let two = dir.path().join("two");
        std::os::unix::fs::symlink(&one, &two).expect("symlink");
        assert!(refused(&two).contains("symlink to a symlink"));
        // A directory symlink on the way is not the last component (Kubernetes' ..data).
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(dir.path(), &data).expect("symlink");
        let via = dir.path().join("via");
        std::os::unix::fs::symlink("..data/real", &via).expect("symlink");
        assert_eq!(
            read_token_file(&via).expect("via a dir link").expose(),
            "tok"
        );
        let to_dev = dir.path().join("to_dev");
        std::os::unix::fs::symlink("/dev/zero", &to_dev).expect("symlink");
        assert!(refused(&to_dev).contains("character device"));
    }
}

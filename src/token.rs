//! The API token: where it comes from, and a type that never prints or outlives its use.
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Environment variable holding the token when no `--token-file` is given.
pub const TOKEN_ENV: &str = "QRYPT_TOKEN";

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
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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
pub fn read_token_file(path: &Path) -> Result<Token, TokenError> {
    parse_token_file(path, &read_file(path)?)
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })
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
/// block can move it to a blocking thread and back.
#[derive(Debug)]
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

    /// The token, if the contents changed since the last token taken from the file. An
    /// unreadable file counts as unchanged (it may be mid-replacement); a changed file
    /// without a valid token is an error, and is looked at again next time.
    pub fn changed(&mut self) -> Result<Option<Token>, TokenError> {
        let Ok(text) = read_file(&self.path) else {
            return Ok(None);
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

/// Loads the token from `file` if given, else from the environment. The environment variable is
/// removed either way, so child processes and `/proc/PID/environ` readers after us don't see it.
pub fn load(file: Option<&Path>) -> Result<(Token, TokenSource), TokenError> {
    let from_env = std::env::var(TOKEN_ENV).ok().map(Zeroizing::new);
    scrub_environment();
    match file {
        Some(path) => Ok((read_token_file(path)?, TokenSource::File(path.to_owned()))),
        None => match from_env {
            Some(v) => Ok((Token::new(v.trim().to_owned())?, TokenSource::Environment)),
            None => Err(TokenError::Missing),
        },
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
}

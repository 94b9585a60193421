//! The API token: where it comes from, and a type that never prints or outlives its use.
use std::fmt;
use std::path::{Path, PathBuf};

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
    let text = Zeroizing::new(std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?);
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
}

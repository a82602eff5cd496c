//! The CLI's error type and its mapping to process exit codes.
//!
//! Every failure a command can hit ends up as an [`Error`]; `main` prints it
//! as `error: <message>` on stderr and exits with [`Error::exit_code`].

use std::fmt;

/// Exit code for a failed operation (server rejected it, server unreachable,
/// bad interactive input, ...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for an invalid invocation; the same code clap uses for its own
/// argument errors.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug)]
pub enum Error {
    /// The command line is unusable (e.g. a required secret is missing or the
    /// URL does not parse). Detected before contacting the server.
    Usage(String),
    /// Interactive input was rejected (password mismatch, empty password, no
    /// terminal to prompt on).
    Input(String),
    /// The server could not be reached at all (DNS, refused, TLS, timeout).
    Unreachable { url: String, detail: String },
    /// The server answered with a Matrix error body `{errcode, error}`.
    Matrix { errcode: String, error: String },
    /// The server answered with something that is neither success nor a
    /// Matrix error.
    UnexpectedResponse {
        url: String,
        status: u16,
        detail: String,
    },
    /// A local failure unrelated to input or the server (e.g. the HTTP
    /// client could not be initialised).
    Internal(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) | Error::Input(msg) | Error::Internal(msg) => f.write_str(msg),
            Error::Unreachable { url, detail } => {
                write!(f, "could not reach the server at {url}: {detail}")
            }
            Error::Matrix { errcode, error } => write!(f, "{errcode}: {error}"),
            Error::UnexpectedResponse {
                url,
                status,
                detail,
            } => write!(
                f,
                "unexpected response from {url} (HTTP {status}): {detail}"
            ),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_error_is_errcode_colon_message() {
        let e = Error::Matrix {
            errcode: "M_USER_IN_USE".into(),
            error: "User ID already taken.".into(),
        };
        assert_eq!(e.to_string(), "M_USER_IN_USE: User ID already taken.");
        assert_eq!(e.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(Error::Usage("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(Error::Input("x".into()).exit_code(), EXIT_FAILURE);
    }
}

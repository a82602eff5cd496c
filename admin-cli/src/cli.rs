//! Command-line grammar of `myelin-admin` (clap derive definitions only).
//!
//! Global options (`--url`, `--shared-secret`, `--access-token`) may be given
//! before or after the subcommand and can also come from environment
//! variables. Behaviour lives in [`crate::commands`].

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand};

/// Default homeserver URL when neither `--url` nor `MYELIN_ADMIN_URL` is set.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8008";

/// Operator tool for the Myelin Matrix homeserver.
#[derive(Debug, Parser)]
#[command(name = "myelin-admin", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

/// Connection settings shared by every subcommand.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Base URL of the homeserver's client-server API.
    #[arg(
        long,
        global = true,
        env = "MYELIN_ADMIN_URL",
        default_value = DEFAULT_URL,
        value_name = "URL"
    )]
    pub url: String,

    /// Registration shared secret (must match the homeserver's configuration).
    #[arg(
        long,
        global = true,
        env = "MYELIN_REGISTRATION_SHARED_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub shared_secret: Option<String>,

    /// Access token of an admin user, for commands that use the admin API.
    #[arg(
        long,
        global = true,
        env = "MYELIN_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub access_token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Show which user the access token belongs to (checks --access-token).
    Whoami,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register a new local user using the registration shared secret.
    Create(CreateUser),
}

#[derive(Debug, Args)]
pub struct CreateUser {
    /// Localpart of the new user (e.g. `alice` for `@alice:example.org`).
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub username: String,

    /// Make the new user a server administrator.
    #[arg(long)]
    pub admin: bool,

    /// Password for the new user. Prompted for on the terminal (twice) when
    /// omitted. Note: values given here are visible in the process list.
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("myelin-admin").chain(args.iter().copied()))
    }

    #[test]
    fn user_create_full() {
        let cli = parse(&[
            "--url",
            "http://hs.example:8008",
            "--shared-secret",
            "S",
            "user",
            "create",
            "alice",
            "--admin",
            "--password",
            "pw",
        ])
        .unwrap();
        assert_eq!(cli.global.url, "http://hs.example:8008");
        assert_eq!(cli.global.shared_secret.as_deref(), Some("S"));
        let Command::User(UserCommand::Create(c)) = cli.command else {
            panic!("wrong subcommand: {:?}", cli.command);
        };
        assert_eq!(c.username, "alice");
        assert!(c.admin);
        assert_eq!(c.password.as_deref(), Some("pw"));
    }

    #[test]
    fn user_create_minimal_and_globals_after_subcommand() {
        let cli = parse(&["user", "create", "bob", "--shared-secret", "S"]).unwrap();
        // Only check the default URL when the environment doesn't override it.
        if std::env::var_os("MYELIN_ADMIN_URL").is_none() {
            assert_eq!(cli.global.url, DEFAULT_URL);
        }
        assert_eq!(cli.global.shared_secret.as_deref(), Some("S"));
        let Command::User(UserCommand::Create(c)) = cli.command else {
            panic!("wrong subcommand: {:?}", cli.command);
        };
        assert_eq!(c.username, "bob");
        assert!(!c.admin);
        assert_eq!(c.password, None);
    }

    #[test]
    fn rejects_bad_invocations() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["user"]).is_err());
        assert!(parse(&["user", "create"]).is_err());
        assert!(parse(&["user", "create", ""]).is_err());
        assert!(parse(&["user", "create", "a", "--bogus"]).is_err());
        assert!(parse(&["user", "create", "a", "b"]).is_err());
    }
}

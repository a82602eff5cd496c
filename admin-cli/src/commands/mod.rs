//! Subcommand implementations: turn parsed arguments into client calls and
//! print results for the operator.
//!
//! Each submodule owns one command family. Results go to stdout; prompts go to
//! the terminal; errors are returned to `main`, which prints them to stderr.

mod user;
mod whoami;

use crate::cli::{Cli, Command, UserCommand};
use crate::error::Error;

/// Runs the parsed command line to completion.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::User(UserCommand::Create(args)) => user::create(&cli.global, args).await,
        Command::Whoami => whoami::run(&cli.global).await,
    }
}

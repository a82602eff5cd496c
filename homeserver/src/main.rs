//! The `myelin` binary: parse the command line and configuration, set up logging, bind the
//! listener, and hand over to [`myelin::serve`].

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use myelin::{config::generate_config, AppState, Config};

/// mimalloc instead of the system allocator: many small, short-lived allocations per request
/// and thousands of idle connections fragment glibc's arenas; mimalloc keeps the resident
/// memory per idle connection lower (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Myelin, a Matrix homeserver.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file. Without one, defaults and MYELIN_* environment variables apply.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Print a complete, commented configuration file with every option at its default.
    GenerateConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenerateConfig) = cli.command {
        print!("{}", generate_config());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("myelin: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("myelin: invalid configuration: log (MYELIN_LOG): {e}");
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr; stdout carries only the start-up banner.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("myelin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), myelin::StartError> {
    let listen = config.client_listen;
    let data_dir = config.data_dir.clone();
    let database = if config.database_url.is_some() {
        "PostgreSQL (database_url)"
    } else {
        "SQLite"
    };
    let server_name = config.server_name.clone();
    let has_secret = config.registration_shared_secret.is_some();
    let open = config.registration_open;
    let state = AppState::init(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // After init, which made the data directory the self-signed certificate goes into.
    let federation = match state.config.federation_listener() {
        Some(address) => {
            let (tls, self_signed) = myelin::tls::federation_acceptor(&state.config)?;
            let listener = tokio::net::TcpListener::bind(address).await?;
            Some((listener, tls, self_signed))
        }
        None => None,
    };
    println!("Myelin homeserver for {server_name}");
    println!("  listening on  http://{listen}");
    match &federation {
        Some((listener, _, self_signed)) => {
            println!("  federation on https://{}", listener.local_addr()?);
            if let Some(cert) = self_signed {
                println!(
                    "    with a self-signed certificate made in {} (peers that check certificates need a real one: set federation_tls_cert and federation_tls_key)",
                    cert.display()
                );
            }
        }
        None => println!("  federation    off"),
    }
    println!("  data in       {} ({database})", data_dir.display());
    println!("  signing key   {}", state.signing_key.key_id());
    if open {
        println!("  registration  open: any Matrix client can create an account");
    } else if has_secret {
        println!("  create the first account with:");
        println!("    myelin-admin --url http://{listen} --shared-secret <secret> user create <name> --admin");
    } else {
        println!(
            "  registration is closed. To create the first account, restart with a shared secret:"
        );
        println!("    MYELIN_REGISTRATION_SHARED_SECRET=<secret> cargo run --release --bin myelin");
        println!("  then: cargo run --release --bin myelin-admin -- --shared-secret <secret> user create <name> --admin");
        println!("  (or set MYELIN_REGISTRATION_OPEN=true to let anyone register)");
    }
    tracing::info!(%listen, "ready");
    let federation =
        federation.map(|(listener, tls, _)| myelin::FederationListener { listener, tls });
    myelin::serve(listener, federation, state, shutdown_signal()).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

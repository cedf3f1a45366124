//! The `callbox` binary: a thin CLI that loads configuration, binds the listeners of the
//! enabled roles, runs them and joins them.

mod access;
mod admin_cli;
mod bootstrap;
mod cloud;
mod cluster;
mod descriptors;
mod history;
mod live;
mod logging;
mod reload;
mod role;
mod serve;
mod settings;
mod state;
mod supervisor;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "callbox",
    version,
    about = "WebRTC edge appliance: STUN/TURN relay, signaling and admin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every command that reads configuration takes.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (default: none, embedded defaults).
    #[arg(long, short = 'c', env = "CALLBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where generated state lives (overrides general.state_dir).
    #[arg(long, env = "CALLBOX_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Override a configuration key, e.g. `--set turn.realm=example.com` (repeatable;
    /// wins over the file and the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the appliance: the signal, turn and admin roles by default.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Roles to run, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "signal,turn,admin")]
        roles: Vec<role::Role>,
    },
    /// Call the admin API of a running callbox (token from the state directory).
    Admin {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: admin_cli::AdminArgs,
        #[command(subcommand)]
        cmd: admin_cli::AdminCommand,
    },
    /// Check the configuration; every error names its key and where it was set.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also print the effective configuration, secrets redacted.
        #[arg(long)]
        print: bool,
    },
    /// Print TURN REST credentials as the ICE server JSON of /v1/ice-servers.
    Credentials {
        #[command(flatten)]
        config: ConfigArgs,
        /// The user id part of the username.
        #[arg(long, default_value = "callbox")]
        user: String,
        /// Lifetime in seconds (default: auth.credential_ttl).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, print } => match settings::load(&config) {
            Ok(loaded) => {
                if print {
                    print!("{}", loaded.config.to_redacted_toml());
                } else {
                    println!("configuration ok ({})", loaded.source);
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                settings::print_errors(&errors);
                ExitCode::from(2)
            }
        },
        Command::Credentials { config, user, ttl } => {
            let loaded = match settings::load(&config) {
                Ok(l) => l,
                Err(errors) => {
                    settings::print_errors(&errors);
                    return ExitCode::from(2);
                }
            };
            match serve::credentials(&loaded, &user, ttl) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin { config, args, cmd } => {
            let loaded = match settings::load(&config) {
                Ok(l) => l,
                Err(errors) => {
                    settings::print_errors(&errors);
                    return ExitCode::from(2);
                }
            };
            match admin_cli::run(&loaded, &args, &cmd) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config, roles } => {
            let loaded = match settings::load(&config) {
                Ok(l) => l,
                Err(errors) => {
                    settings::print_errors(&errors);
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = logging::init(&loaded.config.general) {
                eprintln!("error: logging: {e:#}");
                return ExitCode::FAILURE;
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("callbox-rt")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let reload: reload::LoadConfig = Box::new(move || settings::load(&config));
            match rt.block_on(serve::serve(loaded, roles, reload)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

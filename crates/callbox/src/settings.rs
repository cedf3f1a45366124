//! Loading configuration from file, environment and flags, and deriving the state
//! directory.

use std::path::PathBuf;

use callbox_core::Config;
use callbox_core::config::{ConfigError, ConfigFile, Origin, Override};

use crate::ConfigArgs;

/// A validated configuration and where it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file path, or "embedded defaults".
    pub source: String,
    pub state_dir: PathBuf,
}

pub fn load(args: &ConfigArgs) -> Result<Loaded, Vec<ConfigError>> {
    let file = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(ConfigFile {
                path: path.display().to_string(),
                text,
            }),
            Err(e) => {
                return Err(vec![ConfigError {
                    origin: Origin::Config(path.display().to_string()),
                    key: None,
                    message: format!("cannot read the file: {e}"),
                }]);
            }
        },
        None => None,
    };
    let mut overrides = Override::from_env(std::env::vars());
    for s in &args.set {
        overrides.push(Override::from_flag(s).map_err(|e| vec![e])?);
    }
    let config = Config::load(file.as_ref(), &overrides)?;
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| config.general.state_dir.clone())
        .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./callbox-data"));
    Ok(Loaded {
        config,
        source: file.map_or_else(|| "embedded defaults".to_string(), |f| f.path),
        state_dir,
    })
}

pub fn print_errors(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} configuration error(s)", errors.len());
}

//! `Config::load` on arbitrary text as the configuration file, and each line as a
//! `--set key=value` override. Must not panic; a loaded configuration is valid and its
//! printed form loads again.

#![no_main]

use callbox_core::config::{Config, ConfigFile, Override};
use callbox_core::secret::Secret;
use libfuzzer_sys::fuzz_target;

fn redacted(mut c: Config) -> Config {
    for s in &mut c.auth.secrets {
        *s = Secret::new("<redacted>");
    }
    for u in &mut c.auth.static_users {
        u.password = Secret::new("<redacted>");
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = ConfigFile {
        path: "fuzz.toml".into(),
        text: text.into(),
    };
    match Config::load(Some(&file), &[]) {
        Ok(c) => {
            assert!(c.validate().is_empty());
            let printed = c.to_redacted_toml();
            let again = ConfigFile {
                path: "printed.toml".into(),
                text: printed.clone(),
            };
            match Config::load(Some(&again), &[]) {
                Ok(c2) => assert_eq!(c2, redacted(c), "printed:\n{printed}"),
                Err(e) => panic!("printed config does not load: {e:?}\nprinted:\n{printed}"),
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                let _ = e.to_string();
            }
        }
    }
    // The same text as overrides, one per line (a few lines at most).
    let overrides: Vec<Override> = text
        .lines()
        .take(8)
        .filter_map(|l| Override::from_flag(l).ok())
        .collect();
    if !overrides.is_empty() {
        if let Err(errors) = Config::load(None, &overrides) {
            assert!(!errors.is_empty());
        }
    }
});

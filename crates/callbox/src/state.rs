//! Generated state kept across restarts in the state directory.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use callbox_core::Secret;

const SECRET_FILE: &str = "turn-secret";

/// The shared secret from `state_dir/turn-secret`, generated (256 random bits, hex) on
/// first use and written with mode 0600.
pub fn shared_secret(state_dir: &Path) -> anyhow::Result<Secret> {
    let path = state_dir.join(SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(Secret::new(s.trim())),
        Ok(_) => anyhow::bail!("{} is empty; delete it to generate a new secret", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    // Nobody but the owner and its group (the package's `callbox`) reads the state; the
    // files in it are 0600 besides.
    if let Ok(m) = fs::metadata(state_dir) {
        let mode = m.permissions().mode() & 0o750;
        let _ = fs::set_permissions(state_dir, fs::Permissions::from_mode(mode));
    }
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, hex.as_bytes())?;
    tracing::info!(path = %path.display(), "generated a new TURN shared secret");
    Ok(Secret::new(hex))
}

/// Writes `contents` to `path` with mode 0600 ([`callbox_core::private_file::write`]).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    Ok(callbox_core::private_file::write(path, contents)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("callbox-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = shared_secret(&dir).unwrap();
        let b = shared_secret(&dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.expose().len(), 64);
        let mode = fs::metadata(dir.join(SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}

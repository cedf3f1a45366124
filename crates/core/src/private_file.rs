//! Files only their owner reads (secrets, keys, tokens): mode 0600 in a directory the
//! caller keeps private, each replaced whole (written beside under a hidden name, synced,
//! renamed), so a crash mid-write leaves the old file and a reader never sees half of one.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

fn named(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Replaces `path` with `contents`, mode 0600.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| named(&tmp, "creating", e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| named(&tmp, "writing", e))?;
    fs::rename(&tmp, path).map_err(|e| named(path, "replacing", e))
}

/// Creates `dir` (and its parents) with mode 0700 when it is missing.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| named(dir, "creating", e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let root = std::env::temp_dir().join(format!("callbox-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("acme");
        create_dir(&dir).unwrap();
        let f = dir.join("key.pem");
        write(&f, b"one").unwrap();
        write(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        let e = write(Path::new("/nonexistent-dir/x"), b"").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }
}

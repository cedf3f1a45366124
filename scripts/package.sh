#!/usr/bin/env bash
# Builds the Debian package: target/debian/callbox_<version>-1_<arch>.deb.
#
#   scripts/package.sh            # release build, then cargo-deb (installed when missing)
#
# cargo-deb takes its metadata from [package.metadata.deb] in crates/callbox/Cargo.toml:
# the stripped binary, /etc/callbox/callbox.toml (conffile), the systemd units, the man page,
# the changelog, the docs and the maintainer scripts in packaging/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --version 3.8.0
fi
cargo build --release -q -p callbox
# Man pages ship compressed (Debian policy 12.1); cargo-deb copies assets as they are.
mkdir -p target/package
gzip -9n < packaging/callbox.1 > target/package/callbox.1.gz
cargo deb -p callbox --no-build --strip --quiet
ls target/debian/callbox_*.deb

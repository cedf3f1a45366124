#!/usr/bin/env bash
# Builds the .deb (scripts/package.sh) and checks it: the file list with owners and modes,
# the conffile, the dependencies, the maintainer scripts, a stripped binary, lintian (clean
# but for the tags in packaging/lintian-overrides, each justified there).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }
}
need lintian "apt-get install lintian"
need dpkg-deb "apt-get install dpkg"
need readelf "apt-get install binutils"

scripts/package.sh
deb=$(ls -t target/debian/callbox_*.deb | head -1)
fail() { echo "package check failed: $*" >&2; exit 1; }

contents=$(dpkg-deb -c "$deb")
expect() { # MODE OWNER PATH
  grep -Eq "^$1 $2 .* \./$3\$" <<<"$contents" || fail "no $3 with $1 $2 in:
$contents"
}
expect '-rwxr-xr-x' '0/0' 'usr/bin/callbox'
expect '-rw-r-----' '0/0' 'etc/callbox/callbox.toml'
expect '-rw-r--r--' '0/0' 'usr/share/man/man1/callbox.1.gz'
expect '-rw-r--r--' '0/0' 'usr/share/doc/callbox/copyright'
expect '-rw-r--r--' '0/0' 'usr/share/doc/callbox/changelog.Debian.gz'
expect '-rw-r--r--' '0/0' 'usr/share/doc/callbox/deployment.md'
expect '-rw-r--r--' '0/0' 'usr/lib/systemd/system/callbox.service'
expect '-rw-r--r--' '0/0' 'usr/lib/systemd/system/callbox@.service'

info=$(dpkg-deb -I "$deb")
grep -q '/etc/callbox/callbox.toml' < <(dpkg-deb -I "$deb" conffiles) || fail "callbox.toml is not a conffile"
grep -Eq '^ Depends:.*adduser' <<<"$info" || fail "no Depends on adduser: $info"
grep -Eq '^ Recommends:.*ca-certificates' <<<"$info" || fail "no Recommends on ca-certificates (ACME's roots): $info"
postinst=$(dpkg-deb -I "$deb" postinst)
grep -q 'adduser --system --group' <<<"$postinst" || fail "postinst creates no system user"
grep -q 'systemctl' <<<"$postinst" || fail "postinst does not enable the unit"
postrm=$(dpkg-deb -I "$deb" postrm)
grep -q 'purge' <<<"$postrm" && grep -q 'rm -rf /var/lib/callbox' <<<"$postrm" || fail "postrm does not purge state"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work"
# Debug info and the symbol table go; .debug_gdb_scripts (a loaded section naming gdb's
# pretty-printers) may stay.
readelf -S "$work/usr/bin/callbox" | grep -Eq '\.(debug_info|debug_line|symtab)\b' \
  && fail "usr/bin/callbox is not stripped"
cmp -s config/callbox.toml "$work/etc/callbox/callbox.toml" || fail "the conffile is not config/callbox.toml"
"$work/usr/bin/callbox" check-config --config "$work/etc/callbox/callbox.toml" >/dev/null

echo "== lintian"
lintian --fail-on error,warning "$deb"
echo "package checks passed: $deb"

#!/usr/bin/env bash
# Installs schemathesis from PyPI into a virtualenv under the user's cache (once).
set -euo pipefail
VENV="${CALLBOX_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/callbox/schemathesis-venv}"
VERSION=4.32.5
if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/schemathesis" --version | grep -q "$VERSION"; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"

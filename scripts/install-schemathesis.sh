#!/usr/bin/env bash
# Installs schemathesis from PyPI into a virtualenv under the user's cache (once).
# Hypothesis is pinned too: a seeded run generates the same cases only with the same
# Hypothesis, and an unpinned one changed under us between two CI runs. (Its pareto
# shrinker's IndexError is avoided in scripts/schemathesis.sh, which runs without an
# example database.)
set -euo pipefail
VENV="${CALLBOX_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/callbox/schemathesis-venv}"
VERSION=4.32.5
HYPOTHESIS=6.165.0
if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/schemathesis" --version | grep -q "$VERSION" \
  && "$VENV/bin/python" -c "import hypothesis, sys; sys.exit(hypothesis.__version__ != '$HYPOTHESIS')"; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" "hypothesis==$HYPOTHESIS"

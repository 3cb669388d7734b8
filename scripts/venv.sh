#!/usr/bin/env bash
# Create .venv and install the project into it; pip runs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -x .venv/bin/python ]]; then
  echo "venv: creating .venv"
  python3 -m venv .venv
fi
STAMP=.venv/.codeb-pyproject.sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]]; then
  echo "venv: pip install -e '.[test]'"
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$STAMP"
fi

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
# Bytecode of the project's own modules, as a regular (not editable) install has it. Python
# writes it on first use, unless PYTHONDONTWRITEBYTECODE is set, as on some CI and sandbox
# machines: then every `codeb` compiles every module it imports again (~0.1 s of its start).
# Only out-of-date files are compiled; Python checks each against its source when it loads it.
.venv/bin/python -m compileall -q codeb_tui

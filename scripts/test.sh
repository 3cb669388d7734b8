#!/usr/bin/env bash
# The one test command: services up, venv up to date, import contract, pytest.
#   scripts/test.sh [pytest args...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR="${CODEB_SERVICES_DIR:-/var/lib/codeb-services}"

bash scripts/services.sh up
# shellcheck disable=SC1091
source "$DIR/env"

if [[ ! -x .venv/bin/python ]]; then
  echo "test: creating .venv"
  python3 -m venv .venv
fi
# re-install only when pyproject.toml changed since the last successful install
STAMP=.venv/.codeb-pyproject.sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]]; then
  echo "test: pip install -e '.[test]'"
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$STAMP"
fi

echo "test: lint-imports"
.venv/bin/lint-imports
echo "test: pytest"
exec .venv/bin/python -m pytest -q "$@"

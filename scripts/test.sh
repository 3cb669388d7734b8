#!/usr/bin/env bash
# The one test command: services up, venv up to date, import contract, pytest.
#   scripts/test.sh [pytest args...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR="${CODEB_SERVICES_DIR:-/var/lib/codeb-services}"

bash scripts/services.sh up
# shellcheck disable=SC1091
source "$DIR/env"

bash scripts/venv.sh

echo "test: lint-imports"
.venv/bin/lint-imports
echo "test: pytest"
exec .venv/bin/python -m pytest -q "$@"

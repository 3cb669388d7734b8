#!/usr/bin/env bash
# The built-in demo: services on loopback, demo images, a few projects deployed and promoted,
# then the console (or `codeb status` when there is no terminal).
#   scripts/demo.sh [codeb args...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR="${CODEB_SERVICES_DIR:-/var/lib/codeb-services}"

bash scripts/services.sh up >&2
# shellcheck disable=SC1091
source "$DIR/env"
bash scripts/venv.sh >&2

DEMO="$DIR/demo"
mkdir -p "$DEMO"
cat > "$DEMO/config.yaml" <<YAML
# Written by scripts/demo.sh: the demo's registry, proxy and database, all on loopback.
registry: {root: $DEMO/registry}
docker: {endpoint: "$DOCKER_HOST", registry_url: "http://$CODEB_REGISTRY_URL"}
caddy: {admin: "$CODEB_CADDY_ADMIN", listen: "127.0.0.1:8080", config_dir: $DEMO/caddy}
database: {sqlite_path: $DEMO/codeb.sqlite3}
ssh: {state_dir: $DEMO/ssh}  # codeb ssh-serve: host key and operators (README)
health: {timeout: 20}
environments:
  production: {domain: "{project}.demo.test", preview_domain: "{slot}.{project}.preview.demo.test"}
  staging: {domain: "{project}.staging.demo.test", preview_domain: "{slot}.{project}.staging-preview.demo.test"}
  preview: {domain: "{project}.pr.demo.test", preview_domain: "{slot}.{project}.pr-preview.demo.test"}
YAML
export CODEB_CONFIG="$DEMO/config.yaml"
codeb=.venv/bin/codeb
img="$CODEB_DEMO_IMAGE"

if [[ ! -e "$DEMO/registry/slots" ]]; then
  echo "demo: deploying demo projects" >&2
  run() { "$codeb" "$@" >/dev/null || { echo "demo: codeb $* failed" >&2; exit 1; }; }
  # shop: v1 live, then v2 promoted; v1 stays warm in grace for a rollback.
  run deploy shop --image "$img:v1"; run promote shop
  run deploy shop --image "$img:v2"; run promote shop
  # blog: v1 live, v2 deployed and waiting on its preview URL.
  run deploy blog --image "$img:v1"; run promote blog
  run deploy blog --image "$img:v2"
  # api in staging, and a preview environment.
  run deploy api --image "$img:v1" --env staging; run promote api --env staging
  run deploy api --image "$img:v3" --env preview
fi
# After a restart of the services the demo's containers are stopped and Caddy is empty: the
# repair starts the slots' containers again and makes the proxy and the database match the
# registry (it touches no container of another installation).
"$codeb" reconcile --repair >/dev/null || true

echo "demo: config $CODEB_CONFIG; try: curl -H 'Host: shop.demo.test' http://127.0.0.1:8080/" >&2
if [[ -t 0 && -t 1 ]]; then
  exec "$codeb" "$@"
fi
exec "$codeb" status "$@"

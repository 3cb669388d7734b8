#!/usr/bin/env bash
# Build the offline demo images and push them to the loopback registry.
#
#   scripts/build_images.sh            build + push the variants the registry lacks (or that are stale)
#   scripts/build_images.sh --force    rebuild + push every variant
#   scripts/build_images.sh --smoke    afterwards run every variant and check its behaviour
#
# Every image is FROM scratch: /bin/busybox copied from the host's busybox-static plus shell
# scripts. Nothing is ever pulled. Uses DOCKER_HOST from the environment (services.sh sets it).
#
# Variants, all at ${CODEB_REGISTRY_URL:-127.0.0.1:5000}/demo/app:<tag>:
#   v1 v2 v3      healthy; GET / -> "healthy <tag> slot=$CODEB_SLOT port=$PORT", GET /health -> "ok"
#   unhealthy     GET / -> 200 "unhealthy unhealthy slot=.. port=..", GET /health -> 500
#   crash         exits with status 1 at once
#   slow          sleeps 8 s, then behaves like v1 (index says "slow slow ...")
#   dockerhealth  healthy, plus a Docker HEALTHCHECK (1 s interval) probing /health
#   big           healthy like v1 (index says "healthy big ..."), plus BIG_LAYERS layers of
#                 BIG_LAYER_MB MiB of random data each (108 MiB in all): a pull takes visible
#                 time, for the progress events (tests/test_progress.py)
# Run as: docker run -d --network host --init -e PORT=4321 -e CODEB_SLOT=blue IMAGE
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES_DIR="${CODEB_SERVICES_DIR:-/var/lib/codeb-services}"
REGISTRY="${CODEB_REGISTRY_URL:-127.0.0.1:5000}"
REPO="$REGISTRY/demo/app"
BUSYBOX="${CODEB_BUSYBOX:-/bin/busybox}"
TAGS=(v1 v2 v3 unhealthy crash slow dockerhealth big)
BIG_LAYERS=4
BIG_LAYER_MB=27  # random data: compression cannot shrink what the registry sends

FORCE=0
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --smoke) SMOKE=1 ;;
    *) echo "usage: $0 [--force] [--smoke]" >&2; exit 2 ;;
  esac
done

if [[ -z "${DOCKER_HOST:-}" && -S "$SERVICES_DIR/docker.sock" ]]; then
  export DOCKER_HOST="unix://$SERVICES_DIR/docker.sock"
fi
if [[ "$(ldd "$BUSYBOX" 2>&1 || true)" != *"not a dynamic executable"* ]]; then
  echo "images: $BUSYBOX is not a static binary (install busybox-static)" >&2
  exit 1
fi

# Content hash of everything that goes into an image: a changed script or busybox rebuilds.
BUILD_ID="$( { cat "$HERE/build_images.sh"; sha256sum "$BUSYBOX"; } | sha256sum | cut -c1-16)"

# Tags whose image in the registry is missing or was built from other inputs.
stale_tags() {
  python3 - "$REGISTRY" "$BUILD_ID" "${TAGS[@]}" <<'PY'
import json, sys, urllib.request
registry, build_id, tags = sys.argv[1], sys.argv[2], sys.argv[3:]
accept = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(path, hdrs=None):
    req = urllib.request.Request(f"http://{registry}{path}", headers=hdrs or {})
    with opener.open(req, timeout=5) as r:
        return json.load(r)
for tag in tags:
    try:
        man = get(f"/v2/demo/app/manifests/{tag}", {"Accept": accept})
        cfg = get(f"/v2/demo/app/blobs/{man['config']['digest']}")
        labels = (cfg.get("config") or {}).get("Labels") or {}
        ok = labels.get("org.codeb.demo.build") == build_id
    except Exception:
        ok = False
    if not ok:
        print(tag)
PY
}

# Write the build context (Dockerfile, busybox, scripts) for one tag into directory $1.
write_context() {
  local ctx="$1" tag="$2" variant version tail
  case "$tag" in
    v1|v2|v3|big) variant=healthy; version="$tag" ;;
    *) variant="$tag"; version="$tag" ;;
  esac
  cp "$BUSYBOX" "$ctx/busybox"
  cat > "$ctx/start.sh" <<'SH'
B=/bin/busybox
if [ -z "${PORT:-}" ]; then echo "start.sh: PORT is not set" >&2; exit 2; fi
$B mkdir -p /www
echo "$APP_VARIANT $APP_VERSION slot=${CODEB_SLOT:-} port=$PORT" > /www/index.html
echo ok > /www/health
echo "$APP_VARIANT $APP_VERSION: slot=${CODEB_SLOT:-} port=$PORT" >&2
SH
  case "$tag" in
    crash)
      tail='echo "crash: exiting with status 1" >&2
exit 1' ;;
    slow)
      tail='$B sleep 8
exec $B httpd -f -p "127.0.0.1:$PORT" -h /www' ;;
    unhealthy)
      # busybox httpd (Debian build) has no proxy/rewrite and only runs CGI under /cgi-bin/,
      # so /health cannot be a CGI. Instead busybox nc listens on 127.0.0.1:$PORT and runs
      # /handler.sh per connection: /health -> 500, anything else -> busybox httpd -i.
      tail='exec $B nc -ll -p "$PORT" 127.0.0.1 -e $B sh /handler.sh' ;;
    *)
      tail='exec $B httpd -f -p "127.0.0.1:$PORT" -h /www' ;;
  esac
  printf '%s\n' "$tail" >> "$ctx/start.sh"

  cat > "$ctx/handler.sh" <<'SH'
# One HTTP connection on stdin/stdout (spawned by busybox nc -e).
cr=$(printf '\r')
IFS= read -r line || exit 0
line=${line%"$cr"}
while IFS= read -r h; do h=${h%"$cr"}; [ -z "$h" ] && break; done
set -- $line
case "${2:-}" in
  /health|/health\?*)
    printf 'HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nunhealthy\n' ;;
  *)
    printf '%s\r\n\r\n' "$line" | exec /bin/busybox httpd -i -h /www ;;
esac
SH
  cat > "$ctx/healthcheck.sh" <<'SH'
# (no -T: busybox 1.35 static wget segfaults with it; docker --timeout bounds the probe)
exec /bin/busybox wget -q -O /dev/null "http://127.0.0.1:$PORT/health"
SH

  {
    echo "FROM scratch"
    echo "COPY busybox /bin/busybox"
    if [[ "$tag" == big ]]; then
      local layer
      for layer in $(seq 1 "$BIG_LAYERS"); do  # one RUN, one layer
        echo "RUN [\"/bin/busybox\",\"dd\",\"if=/dev/urandom\",\"of=/filler-$layer\",\"bs=1048576\",\"count=$BIG_LAYER_MB\"]"
      done
    fi
    echo "COPY start.sh handler.sh healthcheck.sh /"
    echo "ENV APP_VARIANT=$variant APP_VERSION=$version"
    echo "LABEL org.codeb.demo.variant=$variant org.codeb.demo.version=$version org.codeb.demo.build=$BUILD_ID"
    if [[ "$tag" == dockerhealth ]]; then
      echo 'HEALTHCHECK --interval=1s --timeout=1s --start-period=1s --retries=3 CMD ["/bin/busybox","sh","/healthcheck.sh"]'
    fi
    echo 'ENTRYPOINT ["/bin/busybox","sh","/start.sh"]'
  } > "$ctx/Dockerfile"
}

build_tags() {
  local tag ctx
  for tag in "$@"; do
    ctx="$(mktemp -d)"
    write_context "$ctx" "$tag"
    DOCKER_BUILDKIT=0 docker build -q --network=host -t "$REPO:$tag" "$ctx" >/dev/null 2>"$ctx/build.err" \
      || { cat "$ctx/build.err" >&2; rm -rf "$ctx"; exit 1; }
    rm -rf "$ctx"
    docker push -q "$REPO:$tag" >/dev/null
    echo "images: built and pushed $REPO:$tag"
  done
}

# ---- smoke test: run every variant on host networking and check it ----
smoke() {
  local port=43201 fail=0 tag name code st want
  curl_() { curl -sS --noproxy '*' -m 3 "$@"; }
  check() { if [[ "$2" == "$3" ]]; then echo "  ok   $1"; else echo "  FAIL $1: got '$2' want '$3'"; fail=1; fi; }
  wait_http() { local i; for i in $(seq 1 "$2"); do curl_ -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done; return 1; }
  run() { docker run -d --name "$1" --network host --init -e PORT="$2" -e CODEB_SLOT=blue "$3" >/dev/null; }
  echo "images: smoke test"
  for tag in "${TAGS[@]}"; do
    name="codeb-smoke-$tag"; port=$((port + 1))
    docker rm -f "$name" >/dev/null 2>&1 || true
    run "$name" "$port" "$REPO:$tag"
    case "$tag" in
      v1|v2|v3|dockerhealth|big)
        wait_http "http://127.0.0.1:$port/health" 25 || true
        check "$tag /health" "$(curl_ "http://127.0.0.1:$port/health" 2>&1)" "ok"
        want="healthy $tag"; [[ "$tag" == dockerhealth ]] && want="dockerhealth dockerhealth"
        check "$tag /" "$(curl_ "http://127.0.0.1:$port/" 2>&1)" "$want slot=blue port=$port"
        if [[ "$tag" == dockerhealth ]]; then
          for _ in $(seq 1 30); do
            st="$(docker inspect -f '{{.State.Health.Status}}' "$name")"; [[ "$st" == healthy ]] && break; sleep 0.2
          done
          check "$tag docker health" "$st" "healthy"
        fi ;;
      unhealthy)
        wait_http "http://127.0.0.1:$port/" 25 || true
        check "$tag / code" "$(curl_ -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" "200"
        check "$tag / body" "$(curl_ "http://127.0.0.1:$port/")" "unhealthy unhealthy slot=blue port=$port"
        check "$tag /health code" "$(curl_ -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" "500" ;;
      crash)
        code="$(docker wait "$name")"
        check "$tag exit code" "$code" "1" ;;
      slow)
        sleep 3
        check "$tag not up at 3 s" "$(curl_ -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" 2>/dev/null || true)" "000"
        wait_http "http://127.0.0.1:$port/health" 60 || true
        check "$tag /health later" "$(curl_ "http://127.0.0.1:$port/health" 2>&1)" "ok" ;;
    esac
    docker rm -f "$name" >/dev/null
  done
  return "$fail"
}

mapfile -t todo < <(if [[ $FORCE == 1 ]]; then printf '%s\n' "${TAGS[@]}"; else stale_tags; fi)
if [[ ${#todo[@]} -eq 0 ]]; then
  echo "images: $REPO:{$(IFS=,; echo "${TAGS[*]}")} up to date (build $BUILD_ID)"
else
  build_tags "${todo[@]}"
fi
if [[ $SMOKE == 1 ]]; then
  smoke
fi

#!/usr/bin/env bash
# Real services for the tests, on loopback only (see design.md "Test infrastructure").
#
#   scripts/services.sh up       install what is missing, start what is not answering, build images,
#                                write and print $DIR/env
#   scripts/services.sh down     stop what `up` started (by PID), nothing else
#   scripts/services.sh status   one line per service
#
# State dir: ${CODEB_SERVICES_DIR:-/var/lib/codeb-services} (pidfiles, logs, configs, data).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${CODEB_SERVICES_DIR:-/var/lib/codeb-services}"
SOCK="$DIR/docker.sock"
REGISTRY_ADDR=127.0.0.1:5000
CADDY_ADMIN_ADDR=127.0.0.1:2019
PG_DSN=postgresql://postgres@127.0.0.1:5432/postgres
DOCKERD_PID="$DIR/dockerd.pid"     # written by dockerd itself (--pidfile); same PID as we started
REGISTRY_PID="$DIR/registry.pid"
CADDY_PID="$DIR/caddy.pid"
PG_STARTED="$DIR/postgres.started" # present only when `up` started the PostgreSQL cluster
LOGS="$DIR/logs"

log() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }
curl_() { curl -fsS --noproxy '*' -m 2 "$@"; }

docker_ok()   { timeout 5 docker -H "unix://$SOCK" version >/dev/null 2>&1; }
registry_ok() { curl_ -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }
caddy_ok()    { curl_ -o /dev/null "http://$CADDY_ADMIN_ADDR/config/" 2>/dev/null; }
pg_ok()       { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

# alive_pid PIDFILE NAME -> prints the PID when the pidfile names a live process whose argv[0] is NAME
alive_pid() {
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(tr -dc 0-9 < "$1")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(basename "$(tr '\0' '\n' < "/proc/$pid/cmdline" | head -n1)")" == "$2" ]] || return 1
  echo "$pid"
}

# wait_for SECONDS CHECK PID NAME: poll CHECK every 0.2 s; fail early when PID died
wait_for() {
  local secs="$1" check="$2" pid="$3" name="$4" i
  for ((i = 0; i < secs * 5; i++)); do
    if "$check"; then return 0; fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited during startup (log: $LOGS/$name.log)"
    fi
    sleep 0.2
  done
  tail -n 20 "$LOGS/$name.log" >&2 || true
  die "$name not answering after ${secs}s (log: $LOGS/$name.log)"
}

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  command -v caddy >/dev/null || missing+=(caddy)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  [[ "$(ldd /bin/busybox 2>&1 || true)" == *"not a dynamic executable"* ]] || missing+=(busybox-static)
  [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null && command -v nsenter >/dev/null || missing+=(util-linux)
  command -v ip >/dev/null || missing+=(iproute2)  # test hosts: network namespaces, veth pairs
  command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]}"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # no systemd here: keep apt from starting the daemons it installs
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_postgres() {
  if pg_ok; then log "postgres already answering on 127.0.0.1:5432"; return 0; fi
  local ver
  ver="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
  [[ -n "$ver" ]] || die "no PostgreSQL cluster under /etc/postgresql"
  log "starting postgres $ver/main"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  echo "$ver" > "$PG_STARTED"
  wait_for 30 pg_ok "" postgres
}

start_dockerd() {
  if docker_ok; then log "dockerd already answering on unix://$SOCK"; return 0; fi
  # a pidfile left by a dead dockerd (or naming a recycled PID) makes dockerd refuse to start
  alive_pid "$DOCKERD_PID" dockerd >/dev/null || rm -f "$DOCKERD_PID"
  # the same for the containerd dockerd supervises: a killed one leaves containerd.pid, and if
  # that PID still exists (a zombie not yet reaped, a recycled PID) dockerd waits for a socket
  # that never comes ("timeout waiting for containerd to start")
  local ctrd_pid="$DIR/docker-exec/containerd/containerd.pid"
  alive_pid "$ctrd_pid" containerd >/dev/null || rm -f "$ctrd_pid"
  if alive_pid "$DOCKERD_PID" dockerd >/dev/null; then
    die "dockerd $(cat "$DOCKERD_PID") is running but unix://$SOCK does not answer"
  fi
  log "starting dockerd (unix://$SOCK)"
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost \
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 no_proxy=127.0.0.1,localhost \
    setsid dockerd --bridge=none --iptables=false --ip-masq=false \
      --data-root "$DIR/docker" --exec-root "$DIR/docker-exec" --pidfile "$DOCKERD_PID" \
      -H "unix://$SOCK" </dev/null >>"$LOGS/dockerd.log" 2>&1 9>&- &
  local pid=$!
  wait_for 30 docker_ok "$pid" dockerd
  log "dockerd up (pid $pid)"
}

start_registry() {
  if registry_ok; then log "registry already answering on $REGISTRY_ADDR"; return 0; fi
  mkdir -p "$DIR/registry-data"
  cat > "$DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/registry-data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
  log "starting docker-registry ($REGISTRY_ADDR)"
  setsid docker-registry serve "$DIR/registry.yml" </dev/null >>"$LOGS/registry.log" 2>&1 9>&- &
  local pid=$!
  echo "$pid" > "$REGISTRY_PID"
  wait_for 30 registry_ok "$pid" registry
  log "registry up (pid $pid)"
}

start_caddy() {
  if caddy_ok; then log "caddy already answering on $CADDY_ADMIN_ADDR"; return 0; fi
  mkdir -p "$DIR/caddy/config" "$DIR/caddy/data"
  echo '{"admin":{"listen":"'"$CADDY_ADMIN_ADDR"'"},"apps":{"http":{"servers":{}}}}' > "$DIR/caddy.json"
  log "starting caddy (admin $CADDY_ADMIN_ADDR)"
  HOME="$DIR/caddy" XDG_CONFIG_HOME="$DIR/caddy/config" XDG_DATA_HOME="$DIR/caddy/data" \
    setsid caddy run --config "$DIR/caddy.json" </dev/null >>"$LOGS/caddy.log" 2>&1 9>&- &
  local pid=$!
  echo "$pid" > "$CADDY_PID"
  wait_for 30 caddy_ok "$pid" caddy
  log "caddy up (pid $pid)"
}

write_env() {
  local tmp="$DIR/env.tmp"
  cat > "$tmp" <<EOF
export CODEB_SERVICES_DIR=$DIR
export DOCKER_HOST=unix://$SOCK
export CODEB_REGISTRY_URL=$REGISTRY_ADDR
export CODEB_DEMO_IMAGE=$REGISTRY_ADDR/demo/app
export CODEB_CADDY_ADMIN=http://$CADDY_ADMIN_ADDR
export CODEB_PG_DSN=$PG_DSN
export NO_PROXY=127.0.0.1,localhost
export no_proxy=127.0.0.1,localhost
EOF
  mv "$tmp" "$DIR/env"
}

cmd_up() {
  local t0=$SECONDS
  ensure_packages
  mkdir -p "$DIR" "$LOGS"
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "another 'services.sh up' holds $DIR/.lock"
  ensure_postgres
  psql "$PG_DSN" -Atqc 'select 1' >/dev/null 2>&1 || log "WARNING: cannot connect to $PG_DSN"
  start_dockerd
  start_registry
  start_caddy
  DOCKER_HOST="unix://$SOCK" CODEB_REGISTRY_URL="$REGISTRY_ADDR" CODEB_SERVICES_DIR="$DIR" \
    bash "$HERE/build_images.sh" 9>&-
  write_env
  log "ready in $((SECONDS - t0))s; $DIR/env:"
  sed 's/^/  /' "$DIR/env"
}

# stop_pid PIDFILE NAME TIMEOUT
stop_pid() {
  local pid i
  if ! pid="$(alive_pid "$1" "$2")"; then
    log "$2: not started by us (or already stopped)"
    rm -f "$1"
    return 0
  fi
  log "stopping $2 (pid $pid)"
  kill -TERM "$pid"
  for ((i = 0; i < $3 * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 still running after $3s, killing"
    kill -KILL "$pid"
  fi
  rm -f "$1"
}

cmd_down() {
  set +e
  [[ -d "$DIR" ]] || { log "nothing to stop ($DIR missing)"; return 0; }
  stop_pid "$CADDY_PID" caddy 10
  stop_pid "$REGISTRY_PID" docker-registry 10
  stop_pid "$DOCKERD_PID" dockerd 40
  # dockerd leaves its netns bind mount (docker-exec/netns/default) behind; drop mounts under
  # $DIR once no dockerd of ours runs, so the state dir can be removed
  if ! alive_pid "$DOCKERD_PID" dockerd >/dev/null; then
    awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  fi
  if [[ -s "$PG_STARTED" ]]; then
    log "stopping postgres $(cat "$PG_STARTED")/main (started by us)"
    pg_ctlcluster --skip-systemctl-redirect "$(cat "$PG_STARTED")" main stop
    rm -f "$PG_STARTED"
  fi
  return 0
}

cmd_status() {
  local rc=0 pid
  line() { printf '%-9s %-5s %s\n' "$1" "$2" "$3"; }
  owner() { if pid="$(alive_pid "$1" "$2")"; then echo "pid $pid, ours"; else echo "not started by us"; fi; }
  if pg_ok; then line postgres up "127.0.0.1:5432 ($PG_DSN)"; else line postgres down "127.0.0.1:5432"; rc=1; fi
  if docker_ok; then line dockerd up "unix://$SOCK ($(owner "$DOCKERD_PID" dockerd))"
  else line dockerd down "unix://$SOCK"; rc=1; fi
  if registry_ok; then
    line registry up "http://$REGISTRY_ADDR ($(owner "$REGISTRY_PID" docker-registry)); demo/app tags: $(curl_ "http://$REGISTRY_ADDR/v2/demo/app/tags/list" 2>/dev/null | python3 -c 'import json,sys; print(",".join(sorted(json.load(sys.stdin).get("tags") or [])))' 2>/dev/null || echo none)"
  else line registry down "http://$REGISTRY_ADDR"; rc=1; fi
  if caddy_ok; then line caddy up "admin http://$CADDY_ADMIN_ADDR ($(owner "$CADDY_PID" caddy))"
  else line caddy down "admin http://$CADDY_ADMIN_ADDR"; rc=1; fi
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

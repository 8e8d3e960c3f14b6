#!/usr/bin/env bash
# Start a Prefect server on 127.0.0.1 and a worker for the `kquant` process pool.
#
#   deploy/serve.sh                # UI and API on http://127.0.0.1:4200 ; Ctrl-C stops both
#
# Environment: KQUANT_PREFECT_PORT (default 4200), KQUANT_PREFECT_HOST (default 127.0.0.1;
# 0.0.0.0 for workers on other machines), PREFECT_HOME (default ~/.prefect),
# PREFECT (the prefect executable; default .venv/bin/prefect, else prefect on PATH).
# Then, in another shell, deploy (deploy/deploy.sh) and run deployments.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${KQUANT_PREFECT_PORT:-4200}"
HOST="${KQUANT_PREFECT_HOST:-127.0.0.1}"
POOL=kquant
if [[ -z "${PREFECT:-}" ]]; then
    if [[ -x .venv/bin/prefect ]]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi
PY="$(dirname "$(command -v "$PREFECT")")/python"
[[ -x "$PY" ]] || PY=python3

export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
# the worker (and the flow runs it starts) ride out a server restart: see deploy/prefect.yaml
export PREFECT_CLIENT_MAX_RETRIES="${PREFECT_CLIENT_MAX_RETRIES:-8}"

server_pid="" worker_pid=""
stop() {  # TERM, then KILL after a grace period (a worker can ignore TERM for a minute)
    trap - EXIT INT TERM
    for pid in $worker_pid $server_pid; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=""
        for pid in $worker_pid $server_pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ -z "$alive" ]] && break
        sleep 0.2
    done
    for pid in $worker_pid $server_pid; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

"$PREFECT" server start --host "$HOST" --port "$PORT" &
server_pid=$!

"$PY" - "$PREFECT_API_URL" <<'PYEOF'
import sys, time, urllib.request
url = sys.argv[1] + "/health"
deadline = time.time() + 90
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit(f"serve.sh: the Prefect server did not answer at {url}")
    time.sleep(0.5)
PYEOF

"$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 \
    || "$PREFECT" work-pool create "$POOL" --type process >/dev/null
echo "serve.sh: Prefect UI http://127.0.0.1:${PORT} ; API ${PREFECT_API_URL}"
echo "serve.sh: in another shell: export PREFECT_API_URL=${PREFECT_API_URL} ; deploy/deploy.sh"

"$PREFECT" worker start --pool "$POOL" --type process &
worker_pid=$!
wait "$worker_pid"

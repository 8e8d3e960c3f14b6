#!/usr/bin/env bash
# Create or update the kquant deployments (deploy/prefect.yaml) on the server at $PREFECT_API_URL.
#
#   KQUANT_INBOX=/data/inbox KQUANT_OUTBOX=/data/outbox deploy/deploy.sh
#
# KQUANT_INBOX / KQUANT_OUTBOX default to ./inbox and ./outbox (created);
# KQUANT_POOL (default kquant) is the process pool, created if missing;
# DASK_SCHEDULER_ADDRESS, DASK_SCHEDULER_FILE, KQUANT_RESULT_STORAGE, KQUANT_CLUSTER_CLASS,
# KQUANT_CLUSTER_KWARGS (default empty) go into the job variables.
# KQUANT_REPOSITORY (a git URL or path) and KQUANT_REF (default main): the flow runs clone
# it (the pull steps of deploy/prefect.yaml); unset, they run this checkout in place.
# Extra arguments go to `prefect deploy` (e.g. --name adhoc).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PREFECT:-}" ]]; then
    if [[ -x .venv/bin/prefect ]]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi
PY="$(dirname "$(command -v "$PREFECT")")/python"
[[ -x "$PY" ]] || PY=python3
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:${KQUANT_PREFECT_PORT:-4200}/api}"
export KQUANT_INBOX="$(realpath -m "${KQUANT_INBOX:-inbox}")"
export KQUANT_OUTBOX="$(realpath -m "${KQUANT_OUTBOX:-outbox}")"
export KQUANT_POOL="${KQUANT_POOL:-kquant}"
export DASK_SCHEDULER_ADDRESS="${DASK_SCHEDULER_ADDRESS:-}"
export DASK_SCHEDULER_FILE="${DASK_SCHEDULER_FILE:-}"
export KQUANT_RESULT_STORAGE="${KQUANT_RESULT_STORAGE:-}"
export KQUANT_CLUSTER_CLASS="${KQUANT_CLUSTER_CLASS:-}"
export KQUANT_CLUSTER_KWARGS="${KQUANT_CLUSTER_KWARGS:-}"
mkdir -p "$KQUANT_INBOX" "$KQUANT_OUTBOX"

file=deploy/prefect.yaml
if [[ -n "${KQUANT_REPOSITORY:-}" ]]; then
    export KQUANT_REF="${KQUANT_REF:-main}"
else  # in place: one pull step, into this checkout
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    file="$tmp/prefect.yaml"
    "$PY" - deploy/prefect.yaml "$file" "$PWD" <<'PYEOF'
import sys, yaml
src, dst, here = sys.argv[1:]
with open(src) as f:
    spec = yaml.safe_load(f)
spec["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": here}}]
with open(dst, "w") as f:
    yaml.safe_dump(spec, f, sort_keys=False)
PYEOF
fi

"$PREFECT" work-pool inspect "$KQUANT_POOL" >/dev/null 2>&1 \
    || "$PREFECT" work-pool create "$KQUANT_POOL" --type process >/dev/null
if [[ $# -eq 0 ]]; then set -- --all; fi
"$PREFECT" --no-prompt deploy --prefect-file "$file" "$@"

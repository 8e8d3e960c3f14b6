#!/usr/bin/env bash
# Create or update the kquant deployments (deploy/prefect.yaml) on the server at $PREFECT_API_URL.
#
#   KQUANT_INBOX=/data/inbox KQUANT_OUTBOX=/data/outbox deploy/deploy.sh
#
# KQUANT_INBOX / KQUANT_OUTBOX default to ./inbox and ./outbox (created);
# DASK_SCHEDULER_ADDRESS (default empty: no cluster) goes into the job variables.
# Extra arguments go to `prefect deploy` (e.g. --name adhoc).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PREFECT:-}" ]]; then
    if [[ -x .venv/bin/prefect ]]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:${KQUANT_PREFECT_PORT:-4200}/api}"
export KQUANT_INBOX="$(realpath -m "${KQUANT_INBOX:-inbox}")"
export KQUANT_OUTBOX="$(realpath -m "${KQUANT_OUTBOX:-outbox}")"
export DASK_SCHEDULER_ADDRESS="${DASK_SCHEDULER_ADDRESS:-}"
mkdir -p "$KQUANT_INBOX" "$KQUANT_OUTBOX"

"$PREFECT" work-pool inspect kquant >/dev/null 2>&1 \
    || "$PREFECT" work-pool create kquant --type process >/dev/null
if [[ $# -eq 0 ]]; then set -- --all; fi
exec "$PREFECT" --no-prompt deploy --prefect-file deploy/prefect.yaml "$@"

#!/usr/bin/env bash
# The main job: set everything up, then run the `tag/full` deployment on Cora and print the
# accuracy table, the lake paths and the UI address.
#
#   scripts/main.sh                                   # the whole run (TAPE on Cora, seeds 0-3)
#   scripts/main.sh --param dataset='{"subset": 300}' # any `prefect deployment run` options
#
# It (1) creates/updates .venv, (2) starts a local Prefect server (SQLite, 127.0.0.1, state in
# .prefect/) unless one is already healthy, (3) starts a worker unless one is running, then, in
# one Python process (deployments/prepare.py), (4) creates the process work pools, (5) installs
# the automation that marks zombie runs Crashed (deployments/automations.py), (6) deploys
# prefect.yaml unless nothing it deploys changed since the last deploy to this server and its
# deployments are still there as deployed, (7) runs `prefect deployment run tag/full --watch`
# and (8) prints the flow run's report. Every step it skips says why in one line. Run again,
# it reuses the server and the worker. scripts/stop.sh stops them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$PROJECT_DIR/scripts/setup.sh"
cd "$PROJECT_DIR"
export PATH="$VENV/bin:$PATH"
export PREFECT_API_URL="http://127.0.0.1:$TAG_PREFECT_PORT/api"
mkdir -p "$PREFECT_HOME"
LOG_DIR="$PREFECT_HOME/logs"; mkdir -p "$LOG_DIR"

healthy() { python - <<'PY' 2>/dev/null
import os, sys, urllib.request
try:
    with urllib.request.urlopen(os.environ["PREFECT_API_URL"] + "/health", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

server_pid="$(cat "$PREFECT_HOME/server.pid" 2>/dev/null || true)"
if healthy; then
  if [ -z "$server_pid" ] || ! kill -0 "$server_pid" 2>/dev/null; then
    echo "[main] 127.0.0.1:$TAG_PREFECT_PORT answers, but not with this checkout's server" >&2
    echo "[main] (another project's?). Stop it, or choose a port: TAG_PREFECT_PORT=4300 $0" >&2
    exit 1
  fi
  echo "[main] Prefect server already running at $PREFECT_API_URL (pid $server_pid)"
else
  echo "[main] starting Prefect server on 127.0.0.1:$TAG_PREFECT_PORT (log: $LOG_DIR/server.log)"
  nohup prefect server start --host 127.0.0.1 --port "$TAG_PREFECT_PORT" --analytics-off \
    > "$LOG_DIR/server.log" 2>&1 < /dev/null &
  echo $! > "$PREFECT_HOME/server.pid"
  for _ in $(seq 1 120); do healthy && break; sleep 1; done
  healthy || { echo "[main] server did not become healthy; see $LOG_DIR/server.log" >&2; tail -20 "$LOG_DIR/server.log" >&2; exit 1; }
fi

worker_pid="$(cat "$PREFECT_HOME/worker.pid" 2>/dev/null || true)"
if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
  echo "[main] worker already running (pid $worker_pid)"
else
  echo "[main] starting a worker on pool $TAG_WORK_POOL (log: $LOG_DIR/worker.log)"
  # It asks for scheduled runs every second (Prefect's default, 10 s, left a new run waiting
  # up to 10 s); it creates its pool if the pool does not exist yet.
  PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-1}" nohup prefect worker start --pool "$TAG_WORK_POOL" --type process \
    > "$LOG_DIR/worker.log" 2>&1 < /dev/null &
  echo $! > "$PREFECT_HOME/worker.pid"
fi

# Work pools, the zombie automation (marks a run Crashed when its heartbeats stop, so
# `prefect flow-run retry` can resume it), the deployments (only when prefect.yaml, flows/*.py
# or the config models changed, or the server lost them), then the run and its report: all in
# one Python process, each Prefect import costs seconds.
exec python deployments/prepare.py --pool "$TAG_WORK_POOL" --log-dir "$LOG_DIR" --run tag/full -- "$@"

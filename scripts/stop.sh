#!/usr/bin/env bash
# Stop the worker and the Prefect server that scripts/main.sh started.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
for name in worker server; do
  pidfile="$PREFECT_HOME/$name.pid"
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "[stop] stopped $name (pid $pid)"
  else
    echo "[stop] no $name running"
  fi
  rm -f "$pidfile"
done

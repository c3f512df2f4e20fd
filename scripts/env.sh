# Shared environment of the project's scripts (sourced, not run).
# Prefect keeps all its state (SQLite database, results, logs, pid files) under the project.
PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PROJECT_DIR TAG_PROJECT_DIR="$PROJECT_DIR"
export PREFECT_HOME="$PROJECT_DIR/.prefect"
export TAG_PREFECT_PORT="${TAG_PREFECT_PORT:-4200}"
export TAG_WORK_POOL="${TAG_WORK_POOL:-tag-local}"
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_SERVER_API_PORT="$TAG_PREFECT_PORT"
export PREFECT_RESULTS_LOCAL_STORAGE_PATH="$PREFECT_HOME/results"
# Zombie runs: every flow run sends a `prefect.flow-run.heartbeat` event every N seconds
# (Prefect refuses N < 30; PREFECT_RUNNER_HEARTBEAT_FREQUENCY is the setting's older name,
# honoured here). The automation of deployments/automations.py marks a run Crashed once its
# heartbeats stop for TAG_ZOMBIE_AFTER_S seconds (default 3 heartbeats), so it can be retried.
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-${PREFECT_RUNNER_HEARTBEAT_FREQUENCY:-30}}"
case "$PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in
  '' | *[!0-9]*) _tag_heartbeat_ok=false ;;
  *) [ "$PREFECT_FLOWS_HEARTBEAT_FREQUENCY" -ge 30 ] && _tag_heartbeat_ok=true || _tag_heartbeat_ok=false ;;
esac
if [ "$_tag_heartbeat_ok" != true ]; then
  echo "[env] PREFECT_FLOWS_HEARTBEAT_FREQUENCY=$PREFECT_FLOWS_HEARTBEAT_FREQUENCY: seconds, 30 or more (Prefect's minimum)" >&2
  unset _tag_heartbeat_ok
  return 1
fi
unset _tag_heartbeat_ok
# No network at run time: nothing may phone home or reach a model hub.
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export LITELLM_LOCAL_MODEL_COST_MAP=True
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV="$PROJECT_DIR/.venv"

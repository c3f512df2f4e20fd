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
# No network at run time: nothing may phone home or reach a model hub.
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export LITELLM_LOCAL_MODEL_COST_MAP=True
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV="$PROJECT_DIR/.venv"

#!/usr/bin/env bash
# The test command: create or update the environment, then run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/llm -k parse).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$PROJECT_DIR/scripts/setup.sh"
# llama.cpp's server for the local LLM backend's tests (built once per machine, ~5 minutes)
bash "$PROJECT_DIR/scripts/setup_llama.sh"
export TAG_REQUIRE_LOCAL_LLM=1
cd "$PROJECT_DIR"
# Tests start their own Prefect (prefect_test_harness): never a running server's API.
unset PREFECT_API_URL PREFECT_HOME PREFECT_RESULTS_LOCAL_STORAGE_PATH
# One pytest worker per core (pytest-xdist), each test file kept on one worker so its module
# fixtures are built once; TAG_TEST_WORKERS=0 runs in this process (e.g. for pdb).
exec "$VENV/bin/python" -m pytest -n "${TAG_TEST_WORKERS:-auto}" --dist loadfile "$@"

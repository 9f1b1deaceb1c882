#!/usr/bin/env bash
# The project's test command (README): the whole suite on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
export DSS_SHARED_DIR="${DSS_SHARED_DIR:-$(pwd)/../shared}"
export DSS_DATA_DIR="${DSS_DATA_DIR:-$DSS_SHARED_DIR/dss_datasets}"
exec python -m pytest -n 2 --durations=15 "$@" tests

#!/usr/bin/env bash
# The GPU check, on the device machine, from the repository root:   bash scripts/gpu_check.sh
# (device tool: carry [".gpu"], $OUT set). Everything is in scripts/gpu_check.py; this picks the
# interpreter that holds the image's torch. Extra arguments pass through, e.g. --only bench_score,
# --dry-run (here, before a lease).
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"

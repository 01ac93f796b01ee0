#!/usr/bin/env bash
# Download, here on a CPU machine with internet, exactly what the GPU check carries to the device machine:
#   .gpu/wheels/  the wheels of scripts/gpu_wheels.txt for the device's CPython 3.12 on x86-64 Linux
#   .gpu/data/    four real JPEG 2000 radiographs from pydicom-data (RG1/RG3, lossless and lossy)
# then check the set (every listed wheel once, nothing else, under 40 MiB) with gpu_check.py.
# .gpu/ is git-ignored; name it in the device tool's `carry`. Usage: bash scripts/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.gpu
mkdir -p "$DEST/wheels" "$DEST/data"

mapfile -t PINS < <(sed 's/#.*//' scripts/gpu_wheels.txt | grep -E '^[A-Za-z0-9][^ ]*==' | awk '{print $1}')
PLATFORMS=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" --platform any -d "$DEST/wheels" "${PINS[@]}"

# The radiographs come out of the pydicom-data wheel (too big to carry whole).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" pydicom-data==1.0.0
"$PY" - "$TMP" "$DEST/data" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("pydicom_data-*.whl"))
dest = Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in ("RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"):
        (dest / name).write_bytes(zf.read(f"data_store/data/{name}"))
EOF

exec "$PY" scripts/gpu_check.py --verify-wheels --prune

#!/usr/bin/env bash
# The GPU check in one command, for a fresh GPU machine that has PyTorch but not our other
# dependencies (docs/benchmarks.md, "The GPU path"):
#
#   bash scripts/gpu_check.sh                # on the GPU machine, from the repository root
#   bash scripts/gpu_check.sh --cpu-smoke    # here: tiny sizes, 2 steps, on the CPU
#
# Installs the wheels carried in .gpu/wheels (scripts/fetch_wheels.sh makes them) that
# this machine lacks, into a folder of its own, then runs scripts/gpu_check.py: four
# stages, each under its own time limit, 6.5 minutes at most in all. Results go to
# $OUT (the device tool's folder that comes back) or the current folder:
# gpu-check.json, gpu-check.log and one log per stage.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-.}
site=${GPU_CHECK_SITE:-/tmp/bertpretrain-site}

missing=()
for wheel in .gpu/wheels/*.whl; do
    [ -e "$wheel" ] || break
    name=$(basename "$wheel" | cut -d- -f1)
    "$python" -c "from importlib.metadata import version; version('$name')" 2>/dev/null ||
        missing+=("$wheel")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" "${missing[@]}"
fi
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_INSTALLED="${missing[*]##*/}"
export PYTHONUNBUFFERED=1

mkdir -p "$out"
"$python" scripts/gpu_check.py --out-dir "$out" "$@" 2>&1 | tee "$out/gpu-check.log"

#!/usr/bin/env bash
# The GPU check, prepared so that a short lease of a CUDA machine leaves nothing to decide (at most 5 minutes):
#   1. the tests marked gpu (a bf16 training step, CUDA-generator checkpoint and resume, the GPU claim,
#      evaluation from the cache);
#   2. benchmarks/gpu_check.py: 200 timed steps each of LoRA and Comp-LoRA on the 16-shot-ImageNet-shaped
#      step, evaluation throughput, and the extrapolated time of one 16-shot ImageNet run and of the paper grid,
#      printed as one JSON line (also written to $OUT/gpu_check.json when OUT is set).
# Run from anywhere: bash benchmarks/gpu_check.sh. Where open_clip_torch is not installed, wheels in .whl/
# (benchmarks/README.md says which) are installed into /tmp/site first; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import open_clip" 2>/dev/null; then
    [ -d .whl ] || { echo "gpu_check: open_clip is missing and there is no .whl/ folder of wheels" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

start=$(date +%s)
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "gpu tests: $(( $(date +%s) - start )) s"

report=$(timeout 200 "$PYTHON" benchmarks/gpu_check.py --steps 200 | tail -n 1)
echo "$report"
if [ -n "${OUT:-}" ]; then echo "$report" > "$OUT/gpu_check.json"; fi
echo "gpu check: $(( $(date +%s) - start )) s in all"

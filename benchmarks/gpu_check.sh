#!/usr/bin/env bash
# The GPU check, prepared so that a short lease of a CUDA machine leaves nothing to decide (about 5 minutes):
#   1. the tests marked gpu (a bf16 training step, CUDA-generator checkpoint and resume, the GPU claim,
#      evaluation from the cache);
#   2. benchmarks/gpu_check.py: 200 timed steps each of LoRA and Comp-LoRA on the 16-shot-ImageNet-shaped
#      step, evaluation throughput, the extrapolated time of one 16-shot ImageNet run and of the paper grid,
#      the CLIP-LoRA-style reference and torch.compile; a JSON line after each stage, the last one complete.
# Run from anywhere: bash benchmarks/gpu_check.sh. With OUT set, the whole log and the last JSON line are
# written to $OUT/gpu_check.log and $OUT/gpu_check.json. Where open_clip_torch is not installed, wheels in
# .whl/ (benchmarks/README.md says which) are installed into /tmp/site first; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
LOG=${OUT:-/tmp}/gpu_check.log

if ! "$PYTHON" -c "import open_clip" 2>/dev/null; then
    [ -d .whl ] || { echo "gpu_check: open_clip is missing and there is no .whl/ folder of wheels" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible')" \
    || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG"

start=$(date +%s)
# A failing test must not cost the measurements: the lease is short and there may be no second one.
timeout 100 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee -a "$LOG"
tests=${PIPESTATUS[0]}
echo "gpu tests: exit $tests, $(( $(date +%s) - start )) s" | tee -a "$LOG"

timeout 200 "$PYTHON" benchmarks/gpu_check.py --steps 200 2>&1 | tee -a "$LOG"
check=${PIPESTATUS[0]}
last=$(grep '^{' "$LOG" | tail -n 1)
if [ -n "${OUT:-}" ] && [ -n "$last" ]; then echo "$last" > "$OUT/gpu_check.json"; fi
echo "gpu check: tests exit $tests, benchmark exit $check, $(( $(date +%s) - start )) s in all" | tee -a "$LOG"
[ "$tests" -eq 0 ] && [ "$check" -eq 0 ]

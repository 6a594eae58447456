#!/usr/bin/env bash
# One short GPU benchmark (< 4 min on an H100): student, teacher and SD-1.5-inpainting-shaped
# baseline at 512x512 (and 1024 for the growth exponent), CFG batch 2, float16 / bfloat16 /
# float32, eager; then the student under torch.compile in float16. Timed with CUDA events
# after synchronize. Results (bench.json, bench.md, latency.png) go to $OUT (default
# ./gpu-bench). Nothing is downloaded: diffusers, if missing, comes from a wheel carried in
# .whl/ (see docs/benchmarks.md); without it the SD baseline and the pipeline are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-bench}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

if ! "$PY" -c "import moebius" 2>/dev/null; then
    "$PY" -m pip install -q -e . --no-deps --no-build-isolation 2>/dev/null \
        || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
MODELS="moebius-0.2b,pixelhacker,sd15-inpaint"
PIPELINE="512"
if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if ls .whl/diffusers-*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target /tmp/site .whl/diffusers-*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "diffusers missing and no wheel in .whl/: SD baseline and pipeline skipped" >&2
        MODELS="moebius-0.2b,pixelhacker"
        PIPELINE=""
    fi
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv \
    > "$OUT/nvidia-smi.csv" || true

timeout 170 "$PY" -m moebius.cli bench --device cuda --models "$MODELS" \
    --sizes 512,1024 --batches 2 --dtypes float16,bfloat16,float32 --modes eager \
    --repeats 20 --warmup 3 --steps 20 --pipeline-sizes "$PIPELINE" \
    --roofline-size 8192 --out "$OUT"

# torch.compile on the student alone; bounded so the whole script stays under 4 minutes.
timeout 50 "$PY" -m moebius.cli bench --device cuda --models moebius-0.2b --no-plain \
    --sizes 512 --batches 2 --dtypes float16 --modes eager,compile --repeats 20 --warmup 3 \
    --pipeline-sizes "" --no-profile --no-accuracy --roofline-size 8192 \
    --out "$OUT/compile" || echo "torch.compile run did not finish in time" >&2

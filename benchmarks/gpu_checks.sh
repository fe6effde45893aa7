#!/usr/bin/env bash
# Every GPU check of galgen in one run: the three families' benchmarks at the paper's size and
# the CUDA-only tests. Each step has its own time limit and writes its output under $OUT
# (default: ./gpu-results), so a step that fails or times out does not lose the others.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh            # on a machine with a CUDA GPU
#   QUICK=1 bash benchmarks/gpu_checks.sh                 # the first two lines of each family only
#   PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh  # another interpreter (default python3)
#
# The machine needs torch, lightning, torchmetrics, scipy and matplotlib. Wheels of what else
# galgen imports (jsonargparse for the tests, ...) are installed from ./.whl when that folder
# exists (see docs/diffusion.md, "Benchmarks"). Reference figures on one H200 (design notes):
# diffusion training 5,798 img/s (fp32, batch 512) and sampler 368 evaluations/s (one image at a
# time); Glow 200 img/s (batch 64); light-weight GAN 109 img/s (batch 64).
set -u
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

step() {  # step <name> <seconds> <command...>: run, keep stdout+stderr in $OUT/<name>.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$OUT/steps.jsonl"
  grep -h '^{' "$OUT/$name.log" >> "$OUT/results.jsonl" 2>/dev/null || true
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.version.cuda)" > "$OUT/versions.txt" 2>&1

# diffusion (issue 2): fp32 like the reference, then bf16 + channels-last; sampler batched
step diffusion_fp32 150 "$PY" benchmarks/bench_diffusion.py --device cuda --size full
step diffusion_bf16_cl 150 "$PY" benchmarks/bench_diffusion.py --device cuda --size full --bf16 --channels-last
# the galgen fit loop (Trainer, device-resident loader; and the per-item DataLoader with 4 workers)
# against the bare step, same model and batch (issue 14): ratio_device should be >= 0.9
step fit_loop_bf16 300 "$PY" benchmarks/bench_fit.py --device cuda --size full --bf16 --repeats 1 --workers 4
# Glow (issue 3): eager at the paper's batch, then a larger batch
step glow_b16 150 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 16
step glow_b64 150 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64
# light-weight GAN (issue 4)
step gan_fp32 150 "$PY" benchmarks/bench_gan.py --device cuda --size full
step gan_bf16_cl_b256 150 "$PY" benchmarks/bench_gan.py --device cuda --size full --bf16 --channels-last --batch-size 256
if [ -z "${QUICK:-}" ]; then
  step glow_b64_bf16 150 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64 --bf16
  step glow_b64_compile 300 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64 --compile
  step diffusion_bf16_cl_compile 300 "$PY" benchmarks/bench_diffusion.py --device cuda --size full --bf16 --channels-last --compile
  # the CUDA-only tests (need jsonargparse and the test dependencies from .whl)
  step pytest_gpu 300 "$PY" -m pytest -q -m gpu tests/test_glow.py
fi
echo "results: $OUT/results.jsonl (one JSON object per benchmark), steps: $OUT/steps.jsonl, logs: $OUT/*.log"

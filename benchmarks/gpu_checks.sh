#!/usr/bin/env bash
# The GPU checks of galgen in one prepared run of under ten minutes: each GPU-path option of the
# families (docs/gpu.md: channels_last, fused_adam, compile, sampler_graph) timed at the paper's
# size, and the real `galgen fit` loop against the bare training step (bench_fit.py's ratio).
# Every step has its own time limit (their sum, with the set-up's and 2 s of grace each, is under
# 600 s: tests/test_diffusion.py checks it)
# and writes its log under $OUT (default ./gpu-results); a step that fails or times out loses
# nothing else. Every benchmark prints JSON lines (images/s, peak memory, the option set), which
# are gathered, with the step's name, into $OUT/results.jsonl; $OUT/steps.jsonl has each step's
# exit status and seconds (124: it hit its limit).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh             # on a machine with a CUDA GPU
#   EXTRA=1 bash benchmarks/gpu_checks.sh                  # then the slow extras (over ten minutes)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh  # another interpreter (default python3)
#
# The machine needs torch, lightning, torchmetrics, scipy and matplotlib. Wheels of what else
# galgen imports (jsonargparse for the tests, ...) are installed from ./.whl when that folder
# exists. Reference figures on one H200 (design notes): diffusion training 5,798 img/s (fp32,
# batch 512) and sampler 368 evaluations/s (one image at a time); Glow 200 img/s (batch 64);
# light-weight GAN 109 img/s (batch 64).
set -u
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
START=$SECONDS

step() {  # step <name> <seconds> <command...>: run under a time limit, log to $OUT/<name>.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout -k 2 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"limit\": $limit}" | tee -a "$OUT/steps.jsonl"
  grep -h '^{' "$OUT/$name.log" | sed "s/^{/{\"step\": \"$name\", /" >> "$OUT/results.jsonl" 2>/dev/null || true
}

# --- set-up: 40 s ---------------------------------------------------------------------------
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  step install_wheels 20 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
step gpu_info 8 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step versions 12 "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.version.cuda)"

# --- diffusion, the paper's U-Net at batch 512, bf16 (configs/diffusion.yaml's precision): 270 s
# base (foreach Adam), channels_last, fused_adam: one line each, in one process
step diffusion_options 75 "$PY" benchmarks/bench_diffusion.py --device cuda --size full --bf16 \
  --train-steps 30 --sample-steps 30 --variants base,channels_last,fused_adam
# compile: torch.compile of the training step's U-Nets (the compilation is in the warm-up)
step diffusion_compile 105 "$PY" benchmarks/bench_diffusion.py --device cuda --size full --bf16 \
  --train-steps 30 --sample-steps 10 --compile
# sampler_graph: the sampler step's denoiser as a CUDA graph (and its largest difference from eager)
step diffusion_sampler_graph 90 "$PY" benchmarks/bench_diffusion.py --device cuda --size full --bf16 \
  --train-steps 5 --sample-steps 30 --sampler-graph

# --- the galgen fit loop (Trainer, the device-resident loader; and the per-item DataLoader with
# 4 workers) against the bare step, same model and batch (issue 14): ratio_device >= 0.9: 70 s
step fit_loop 70 "$PY" benchmarks/bench_fit.py --device cuda --size full --bf16 --repeats 1 --steps 30 --workers 4

# --- light-weight GAN (the family's default: fused Adam on CUDA), bf16: 110 s
step gan_base 40 "$PY" benchmarks/bench_gan.py --device cuda --size full --bf16 --steps 8 --warmup 2
step gan_no_fused_adam 35 "$PY" benchmarks/bench_gan.py --device cuda --size full --bf16 --steps 8 --warmup 2 --no-fused-adam
step gan_channels_last 35 "$PY" benchmarks/bench_gan.py --device cuda --size full --bf16 --steps 8 --warmup 2 --channels-last

# --- Glow at batch 64, fp32 (configs/glow.yaml's precision; the default: fused Adam on CUDA): 78 s
step glow_base 28 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64 --steps 10 --warmup 2
step glow_no_fused_adam 25 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64 --steps 10 --warmup 2 --no-fused-adam
step glow_channels_last 25 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64 --steps 10 --warmup 2 --channels-last

if [ -n "${EXTRA:-}" ]; then  # beyond the ten minutes: the full-size search, long compilations and the CUDA tests
  step search_full 30 "$PY" benchmarks/bench_search.py --device cuda --size full --repeats 2  # 1,000 x 100,000 at 64 px
  step glow_compile 300 "$PY" benchmarks/bench_glow.py --device cuda --batch-size 64 --compile
  step gan_compile 300 "$PY" benchmarks/bench_gan.py --device cuda --size full --bf16 --compile
  step pytest_gpu 300 "$PY" -m pytest -q -m gpu tests/test_glow.py tests/test_diffusion.py tests/test_gan.py
fi
echo "{\"step\": \"total\", \"seconds\": $((SECONDS - START))}" | tee -a "$OUT/steps.jsonl"
echo "results: $OUT/results.jsonl (one JSON object per measurement), steps: $OUT/steps.jsonl, logs: $OUT/*.log"

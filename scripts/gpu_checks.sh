#!/usr/bin/env bash
# Every GPU check this project has, in one run, on a machine with an NVIDIA GPU.
#
#   scripts/gpu_checks.sh [OUT] [--quick]
#
# Needs: the runtime + export packages installed (make test's .venv, or pip install -e runtime -e export),
# cuda-python, and whichever of these the GPU can use: onnxruntime-gpu (ONNX Runtime CUDA),
# tensorrt-rtx-cu12-libs/-bindings (SM75/80/86/89/120/121) or datacenter tensorrt (any GPU, Hopper too).
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
#
# Steps, each logged to OUT/<step>.log and continuing past failures (the summary says which failed):
#   gpu       nvidia-smi: name, driver, compute capability, memory
#   pytest    pytest -m gpu tests/gpu (TensorRT build + parity, pipelining, CUDA buffers, ORT CUDA: fused
#             vs eager, no Memcpy nodes, CUDA graphs replay equal results; embedrt embed --devices 0 / 0,0:
#             worker processes on the GPU equal one worker and the CPU)
#   export    a 0.6B-shaped random Qwen3 (28 layers; 4 with --quick), exported at max length 512: the fused
#             graph (default) and its eager twin, FP32 + FP16, each parity-gated
#   bench_gpu scripts/bench_gpu.py: ORT CUDA fused FP16 (+ CUDA graphs, - flash) vs eager FP16 vs PyTorch
#             FP16 + SDPA at 1x32, 8x128, 32x512, 64x512; engines FP16 (and INT8 if quantized) where a
#             TensorRT flavour runs on this GPU; GPU memory; Memcpy placement check
# Time on an H100 (16 cores) before the fused graph: export 148 s, bench_gpu ~3 min; the fused export
# traces twice (budget ~5 min). With little device time left, run --quick first.
#   server    scripts/bench_server.py against the GPU backend (dynamic batching vs batch-of-one)
# OUT defaults to build/gpu-checks. Nothing in docs/ is changed; copy figures there by hand, with the GPU's name.
set -u
out=build/gpu-checks
layers=28
for arg in "$@"; do
  case "$arg" in
    --quick) layers=4 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) out=$arg ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
bin=$(dirname "$PYTHON")
embedrt=$bin/embedrt; [ -x "$embedrt" ] || embedrt="$PYTHON -m embedrt.cli"
mkdir -p "$out"
work=$out/work
declare -a summary=()

step() {  # step NAME COMMAND...: run, log, record the outcome
  local name=$1; shift
  local started=$SECONDS
  echo "== $name: $*" >"$out/$name.log"
  "$@" >>"$out/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-10s rc=%-3s %5ss' "$name" "$rc" "$((SECONDS - started))")")
  tail -n 25 "$out/$name.log"
  return $rc
}

if ! command -v nvidia-smi >/dev/null; then
  echo "no nvidia-smi: this script needs an NVIDIA GPU" >&2
  exit 2
fi
step gpu nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
step pytest "$PYTHON" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider
if step export bash -c "'$PYTHON' scripts/make_random_qwen3.py '$work/model' --shape 0.6b --layers $layers \
    && $embedrt export '$work/model' --out '$work/art' --max-length 512 --overwrite"; then
  step bench_gpu "$PYTHON" scripts/bench_gpu.py --model "$work/model" --artefact "$work/art" --out "$out/bench_gpu.json"
  step server "$PYTHON" scripts/bench_server.py --artefact "$work/art" --device cuda --no-docs
fi
echo
echo "summary ($out):"
printf '  %s\n' "${summary[@]}"

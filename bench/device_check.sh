#!/usr/bin/env bash
# The accelerator checks of issues 13/14 as one script, for a bare GPU machine that has torch (and
# numba, numba-cuda, scipy, pytest) but not the project's other dependencies.
#
#   bench/device_check.sh OUT_DIR [WHEEL_DIR]      # on the GPU machine (DEVICE=cuda, the default)
#   DEVICE=cpu bench/device_check.sh /tmp/check    # the same end to end on a CPU, before it meets a GPU
#
# WHEEL_DIR holds the missing pure-Python dependencies as wheels (bench/fetch_device_wheels.sh makes
# it); they are installed with `pip --no-index` into a private folder. Writes env.json, one log per
# step, codec_speed.json and summary.json to OUT_DIR. Each step has its own time limit so the whole
# script ends within 8 minutes; a step that fails or times out is recorded and the rest still run.
set -uo pipefail
OUT_DIR=${1:?usage: bench/device_check.sh OUT_DIR [WHEEL_DIR]}
WHEEL_DIR=${2:-}
DEVICE=${DEVICE:-cuda}
# issue 13's 64 images on the GPU; on a CPU the check is that the script works, and 64 images take
# the CPU model 2-3 minutes of the step's 200 s
if [ "$DEVICE" = cpu ]; then IMAGES=${BBD_GPU_IMAGES:-16}; else IMAGES=${BBD_GPU_IMAGES:-64}; fi
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

if [ -n "$WHEEL_DIR" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/bbd-site "$WHEEL_DIR"/*.whl >"$OUT_DIR/install.log" 2>&1 \
    || { echo "wheel install failed: see $OUT_DIR/install.log"; exit 2; }
  export PYTHONPATH=/tmp/bbd-site:${PYTHONPATH:-}
  export PATH=$PATH:/tmp/bbd-site/bin  # mpiexec from the mpich wheel, only where the machine has none
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

python3 - "$OUT_DIR/env.json" "$DEVICE" <<'PY'
import json, os, sys
import torch
info = {"device": sys.argv[2], "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
for module in ("numba", "numba_cuda"):
    try:
        info[module] = __import__(module).__version__
    except ImportError:
        info[module] = None
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
PY
if [ "$DEVICE" != "cpu" ] && ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "DEVICE=$DEVICE but torch sees no CUDA device"; exit 2
fi

declare -A RC SECONDS_TAKEN
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  RC[$name]=$?
  SECONDS_TAKEN[$name]=$(( $(date +%s) - t0 ))
  tail -n 15 "$OUT_DIR/$name.log"
  echo "== $name: exit ${RC[$name]} after ${SECONDS_TAKEN[$name]} s"
}

# 1. compile (and cache) the CUDA coder's kernels with a tiny roundtrip of both codecs: a compile failure
#    shows here on its own, and the later steps' processes load the kernels from the cache
step cuda_warmup 90 python3 bench/cuda_coder_warmup.py --device "$DEVICE"
# 2. the tests marked gpu (on DEVICE): exact, repeatable roundtrip of $IMAGES CIFAR-shaped images on the CUDA
#    coder, both coders' rates, BB-ANS, a CUDA file refused on the CPU before the model, a two-rank decode, ...
step gpu_tests 200 env BBD_TEST_DEVICE="$DEVICE" BBD_GPU_IMAGES="$IMAGES" \
    python3 -m pytest -m gpu tests -q -p no:cacheprovider -o addopts="" -rA
# 3. codec vs model time per step, CIFAR-10 architecture, batch 16, both backends and codecs, and (on CUDA)
#    the CUDA coder
step codec_speed 100 python3 bench/codec_speed.py --device "$DEVICE" --steps "${SPEED_STEPS:-3}" --no-floor \
    --json "$OUT_DIR/codec_speed.json"
# 4. the CUDA coder on one block per multiprocessor (BBD_CUDA_BLOCKS=sm) instead of one block: which is faster
step codec_speed_grid 70 env BBD_CUDA_BLOCKS=sm python3 bench/codec_speed.py --device "$DEVICE" \
    --steps "${SPEED_STEPS:-3}" --codecs bitswap --no-floor --json "$OUT_DIR/codec_speed_grid.json"

python3 - "$OUT_DIR" cuda_warmup "${RC[cuda_warmup]}" "${SECONDS_TAKEN[cuda_warmup]}" \
    gpu_tests "${RC[gpu_tests]}" "${SECONDS_TAKEN[gpu_tests]}" \
    codec_speed "${RC[codec_speed]}" "${SECONDS_TAKEN[codec_speed]}" \
    codec_speed_grid "${RC[codec_speed_grid]}" "${SECONDS_TAKEN[codec_speed_grid]}" <<'PY'
import json, os, sys
out, rest = sys.argv[1], sys.argv[2:]
summary = {"env": json.load(open(os.path.join(out, "env.json")))}
for i in range(0, len(rest), 3):
    summary[rest[i]] = {"exit": int(rest[i + 1]), "seconds": int(rest[i + 2])}
for step in ("codec_speed", "codec_speed_grid"):
    path = os.path.join(out, step + ".json")
    if os.path.isfile(path):
        summary[step]["results"] = json.load(open(path))
# the grid variant is a measurement to compare, not a requirement
summary["ok"] = all(summary[rest[i]]["exit"] == 0 for i in range(0, len(rest), 3) if rest[i] != "codec_speed_grid")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("summary:", json.dumps({k: v for k, v in summary.items() if k != "env"})[:2000])
PY
[ "${RC[cuda_warmup]}" = 0 ] && [ "${RC[gpu_tests]}" = 0 ] && [ "${RC[codec_speed]}" = 0 ]

#!/usr/bin/env bash
# The GPU part of the tests and benchmarks in one run (results: bench/RESULTS.md).
#
#   bash bench/gpu_checks.sh [RESULTS_DIR [PART...]]   # default bench/results, every part
#   parts: tests interp_sd15 step_sd15 inv_sd15 interp_shapes step_shapes inv_shapes
#
# Needs a CUDA build of torch plus diffusers, transformers and open-clip-torch (the full-size model's
# tokenizer). The *_sd15 parts use a random-weight SD 1.5-sized model (python3 -m bench.full_size_model) at
# 512 px: its times and memory are the real model's, its images are not.
set -uo pipefail
cd "$(dirname "$0")/.."  # the scripts run as modules of the repository root (python3 -m bench.…)
out=${1:-bench/results}
shift || true
parts=${*:-tests interp_sd15 step_sd15 inv_sd15 interp_shapes step_shapes inv_shapes}
model=${SD15_DIR:-/tmp/sd15-random}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
run() { echo "== $*"; start=$SECONDS; timeout 240 "$@"; echo "== exit $? after $((SECONDS - start)) s"; }
full_size="--model $model --dtype float16 --size 512"
for part in $parts; do
    case $part in
        *_sd15) [ -d "$model" ] || run python3 -m bench.full_size_model --out "$model" ;;
    esac
    case $part in
        tests) run python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
        interp_sd15) run python3 -m bench.interpolation_throughput --device cuda $full_size --frames 16 --output "$out/interpolation_throughput_cuda_sd15.json" ;;
        step_sd15) run python3 -m bench.train_step_cost --device cuda --model "$model" --batch 4 --latent-size 64 --steps 12 --output "$out/train_step_cost_cuda_sd15.json" ;;
        inv_sd15) run python3 -m bench.inversion_cost --device cuda $full_size --output "$out/inversion_cost_cuda_sd15.json" ;;
        interp_shapes) run python3 -m bench.interpolation_throughput --device cuda --output "$out/interpolation_throughput_cuda.json" ;;
        step_shapes) run python3 -m bench.train_step_cost --device cuda --output "$out/train_step_cost_cuda.json" ;;
        inv_shapes) run python3 -m bench.inversion_cost --device cuda --output "$out/inversion_cost_cuda.json" ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
done

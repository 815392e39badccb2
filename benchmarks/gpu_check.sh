#!/usr/bin/env bash
# GPU check of issue 13 (item 4): the kit's training step against a bare loop, and the paper-run
# estimate, on one CUDA GPU, in a few minutes. Run from the repository root with a Python that has
# torch (CUDA) and the kit's other dependencies installed (bring them as wheels if the machine has
# no package registry: pip install --no-index --find-links wheels/ -e .).
#
#   bash benchmarks/gpu_check.sh [PYTHON]        # PYTHON defaults to python3
#
# Record in benchmarks/README.md ("GPU"): the GPU name and torch version printed first, the two
# `kit/bare:` lines (fp32 and the default precision), and the `total on 1 device` line of each
# dataset from `selmask estimate` (with the per-step train/eval seconds).
set -euo pipefail
PY=${1:-python3}
export SELMASK_NO_PROGRESS=1 PYTHONPATH=${PYTHONPATH:-.}:.
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true

echo "== kit vs bare loop, paper size (256 px, batch 32), 4 loader workers, default precision (auto: bf16) =="
timeout 240 "$PY" benchmarks/bench_throughput.py --device cuda --image-size 256 --batch-size 32 --workers 4 \
    --rounds 3 --pretrain-epochs 2 --finetune-epochs 2 || echo "bench_throughput (auto precision) failed: $?"

echo "== paper-run estimate: 20 steps after 3 warm-up steps, paper batch and size =="
timeout 240 "$PY" -m selmask_lib.cli estimate --preset paper --steps 20 --warmup 3 --gpus 4 \
    || echo "estimate failed: $?"

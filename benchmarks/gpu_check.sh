#!/usr/bin/env bash
# GPU check of issue 13 (item 4): the kit's training step against a bare loop at the paper's size,
# with and without sync_free_steps, the colour jitter on the GPU for fine-tuning too, where the host
# waits for the GPU (a sync census), a profile, each epoch's start, and (ESTIMATE=1) the paper-run
# estimate, on one CUDA GPU; the steps' limits add up to 575 s (under a lent machine's 600 s a call)
# without the estimate. Run from the repository root with a Python that
# has torch (CUDA) and the kit's other dependencies (on a machine with no package registry, bring
# them as wheels and put them on PYTHONPATH).
#
#   bash benchmarks/gpu_check.sh [PYTHON]        # PYTHON defaults to python3
#   ESTIMATE=1 bash benchmarks/gpu_check.sh      # also the paper-run estimate (90 s more)
#
# Every step has its own time limit, so one slow step cannot take the others with it. Record in
# benchmarks/README.md ("GPU"): the GPU name and torch version printed first, each step's kit and
# bare images/s, its `kit/bare:` line and its ratios after the first epoch, the sync census, and the
# `total on 1 device` line of each dataset from `selmask estimate` (with the per-step train/eval seconds).
set -uo pipefail
PY=${1:-python3}
export SELMASK_NO_PROGRESS=1 PYTHONPATH=${PYTHONPATH:-.}:. PYTHONUNBUFFERED=1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
nproc

echo "== colour jitter on the GPU against the workers' jitter; no host-device sync while finishing a batch =="
timeout 40 "$PY" benchmarks/check_jitter_on_device.py --device cuda || echo "(check_jitter_on_device: exit $?)"

# Paper size: 256 px crops; pretraining batch 32 on every pretraining image of the embedded data
# (504 a training epoch), 6 timed epochs; fine-tuning at the paper's batch 8 on a generated set of
# 480 training images, 3 epochs (the embedded set's few dozen would time epoch starts, not steps).
SIZE=(--device cuda --image-size 256 --batch-size 32 --finetune-batch-size 8 --train-images 480
      --set max_train_images=480 --pretrain-epochs 6 --finetune-epochs 3)
step() {  # step SECONDS TITLE ARGS...: one bench_throughput run under its own limit
    local limit=$1 title=$2; shift 2
    echo "== $title =="
    timeout "$limit" "$PY" benchmarks/bench_throughput.py "${SIZE[@]}" "$@" || echo "($title: exit $?)"
}
step 150 "default keys (bf16; pretraining's colour jitter on the GPU), 4 loader workers, 3 rounds" \
    --workers 4 --rounds 3
step 90 "losses read each step (sync_free_steps false: foreach Adam on both sides), 4 workers" --workers 4 \
    --rounds 1 --set sync_free_steps=false
step 60 "where the host waits for the GPU: sync census of one epoch of each side (default keys, 4 workers)" \
    --workers 4 --sync-census
step 90 "colour jitter on the GPU for fine-tuning too (jitter_on_device true), 4 workers" --workers 4 \
    --rounds 1 --set jitter_on_device=true
step 100 "where the time goes: a profile of one kit run of each loop (default keys, 4 workers)" --workers 4 \
    --rounds 1 --profile --profile-sort tottime

echo "== each epoch's start: a loader per epoch against the read-ahead one, 4 workers, a 30 ms stand-in step =="
timeout 45 "$PY" benchmarks/bench_epoch_start.py --workers 4 --step-ms 30 --rounds 1 --epochs 4 \
    || echo "(bench_epoch_start: exit $?)"

if [ "${ESTIMATE:-0}" != 0 ]; then  # recorded for an H100 and an H200 already: ESTIMATE=1 runs it again
    echo "== paper-run estimate: 20 steps after 3 warm-up steps, paper batch and size =="
    timeout 90 "$PY" -m selmask_lib.cli estimate --preset paper --steps 20 --warmup 3 --gpus 4 \
        || echo "(estimate: exit $?)"
fi
# Measured before and left out to keep the check short (benchmarks/README.md, GPU): fp32, channels_last,
# pin_memory/persistent_workers, 8 and 12 workers, the colour jitter in the workers for pretraining
# (jitter_on_device false: 0.495x against 0.652x on the GPU, H200 call 3), and torch.compile (its
# compilation outlasts a short run).

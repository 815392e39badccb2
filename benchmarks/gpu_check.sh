#!/usr/bin/env bash
# GPU check of issue 13 (item 4): the kit's training step against a bare loop at the paper's size,
# with its default keys, with uint8_batches (the colour jitter back in the workers, uint8 transfers),
# with channels_last, and a torch.profiler view of one epoch of each side (GPU busy time, kernels a
# step), the device's finishing of a batch against the workers' (check_jitter_on_device.py), and
# a loader worker's cost of an item on this host (bench_item_cost.py), and (ESTIMATE=1) the paper-run
# estimate, on one CUDA GPU; the steps' limits add up to 590 s (under a lent machine's 600 s a call;
# the last, the item cost, is the one a slow call may lose) without the estimate. Run from the repository root with a Python
# that has torch (CUDA) and the kit's other dependencies (on a machine with no package registry, bring
# them as wheels and put them on PYTHONPATH).
#
#   bash benchmarks/gpu_check.sh [PYTHON]        # PYTHON defaults to python3
#   ESTIMATE=1 bash benchmarks/gpu_check.sh      # also the paper-run estimate (up to 180 s more)
#
# Every step has its own time limit, so one slow step cannot take the others with it. Record in
# benchmarks/README.md ("GPU"): the GPU name and torch version printed first, each step's kit and
# bare images/s, its `kit/bare:` line and its ratios after the first epoch, the profile's ms a step,
# GPU busy and kernels a step of each side, and the `total on 1 device` line of each dataset from
# `selmask estimate` (with the per-step train/eval/loader seconds).
set -uo pipefail
PY=${1:-python3}
export SELMASK_NO_PROGRESS=1 PYTHONPATH=${PYTHONPATH:-.}:. PYTHONUNBUFFERED=1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
nproc

echo "== the device's finishing of a batch against the workers (jitter_on_device and uint8_batches); no host wait =="
timeout 45 "$PY" benchmarks/check_jitter_on_device.py --device cuda || echo "(check_jitter_on_device: exit $?)"

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
# H200 call 5 found both loops bound by the host's kernel launches (GPU busy 28-36 % of a step; the kit's
# pretraining 1783 kernels a step against the bare loop's 1455, its colour jitter on the GPU most of the
# difference). uint8_batches moves the jitter back to the workers but keeps uint8 transfers.
step 150 "default keys (bf16; pretraining's colour jitter on the GPU), 4 loader workers, 3 rounds" \
    --workers 4 --rounds 3
# With uint8_batches a worker crops, flips and jitters: 2.6-3.3 ms an item at 256 px on one core of the 2-core dev
# machine (0.3 ms with the jitter left to the device; bench_item_cost.py), 300-390 items/s a worker, so 4 workers would
# barely outpace the bare loop's 960-1114 img/s (H200) while sharing the host with the launching thread:
# 8 workers, so that the launches, not the workers, are what this step measures.
step 110 "jitter in the workers, uint8 batches (jitter_on_device false, uint8_batches true), 8 workers, 2 rounds" \
    --workers 8 --rounds 2 --set jitter_on_device=false --set uint8_batches=true
step 90 "channels_last (no NCHW/NHWC conversions around cuDNN's bf16 convolutions), 4 workers" --workers 4 \
    --rounds 1 --set channels_last=true
step 170 "where the GPU's time goes with uint8 batches: torch.profiler over one epoch of each side" --workers 8 \
    --device-profile --set jitter_on_device=false --set uint8_batches=true

# A loader worker's cost of one item on this host's cores, for each batch form (CPU only; how many workers
# uint8_batches needs here). Last, so that a call that runs out of time loses only this.
echo "== a loader worker's ms an item on this host, 256 px (bench_item_cost.py) =="
timeout 25 "$PY" benchmarks/bench_item_cost.py --items 100 || echo "(bench_item_cost: exit $?)"

# Recorded for an H100 and an H200 already, on float batches; since 0ca3b17 each kind of step gets batches
# as its loader sends them (uint8 with the jitter left to the device, by default for random masking), and since
# d5860ee each step counts its loader's item time: ESTIMATE=1.
if [ "${ESTIMATE:-0}" != 0 ]; then
    echo "== paper-run estimate: 20 steps after 3 warm-up steps, paper batch and size =="
    timeout 180 "$PY" -m selmask_lib.cli estimate --preset paper --steps 20 --warmup 3 --gpus 4 \
        || echo "(estimate: exit $?)"
fi
# Measured before and left out to keep the check short (benchmarks/README.md, GPU): fp32,
# pin_memory/persistent_workers, 8 and 12 workers (H200 call 6), the colour jitter in the workers
# sending floats (jitter_on_device false: 0.495x against 0.652x, call 3), the device jitter for
# fine-tuning and sync_free_steps off (call 5), the sync census (call 5), the epoch start
# (bench_epoch_start.py, call 5), and torch.compile (its compilation outlasts a short run).

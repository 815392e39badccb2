#!/usr/bin/env bash
# GPU check of issue 13 (item 4): the kit's training step against a bare loop at the paper's size,
# with its default keys (uint8_batches: the colour jitter in the workers, uint8 transfers), with the
# colour jitter on the GPU (jitter_on_device), at the paper's pretraining batch of 128, and a torch.profiler view of one epoch of each side (GPU busy time, kernels a
# step), the device's finishing of a batch against the workers' (check_jitter_on_device.py), and
# a loader worker's cost of an item on this host (bench_item_cost.py), and (ESTIMATE=1) the paper-run
# estimate, on one CUDA GPU; the steps' limits add up to 590 s (under a lent machine's 600 s a call;
# the last, the item cost, is the one a slow call may lose) without the estimate. Run from the repository root with a Python
# that has torch (CUDA) and the kit's other dependencies (on a machine with no package registry, bring
# them as wheels and put them on PYTHONPATH).
#
#   bash benchmarks/gpu_check.sh [PYTHON]        # PYTHON defaults to python3
#   ESTIMATE=1 bash benchmarks/gpu_check.sh      # also the paper-run estimate (up to 270 s more: 860 s in all)
#   ESTIMATE=only bash benchmarks/gpu_check.sh   # the estimate alone (270 s): a lent machine's call is 600 s
#   COMPILE=1 bash benchmarks/gpu_check.sh       # instead: torch.compile, default and reduce-overhead (580 s)
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

estimate() {  # the paper-run estimate, on all four datasets, then voc's with the colour jitter on the GPU
    echo "== paper-run estimate: 20 steps after 3 warm-up steps, paper batch and size =="
    timeout 180 "$PY" -m selmask_lib.cli estimate --preset paper --steps 20 --warmup 3 --gpus 4 \
        || echo "(estimate: exit $?)"
    # At batch 128 the workers set the pace (call 8: 12-19 needed); with the jitter on the GPU an item costs
    # an eighth as much and the ~300 extra launches are paid per step of 128 images, not per image.
    echo "== the same for voc with the colour jitter on the GPU (jitter_on_device true) =="
    timeout 90 "$PY" -m selmask_lib.cli estimate --preset paper --dataset voc --steps 20 --warmup 3 \
        --set jitter_on_device=true || echo "(estimate, jitter_on_device: exit $?)"
}
if [ "${ESTIMATE:-0}" = only ]; then
    estimate
    exit 0
fi

# COMPILE=1: the compiled kit against the eager bare loop, one round each, so a ratio above 1 is what
# compiling gains. Compilation (each model, and again for a last partial batch) falls in the first epoch:
# read the ratios after it. 'reduce-overhead' replays the compiled passes as CUDA graphs, one launch for
# the ~1500 kernels a step that the host launches one by one otherwise (calls 5-8: host-bound steps).
if [ "${COMPILE:-0}" != 0 ]; then
    step 290 "torch.compile, mode default, 8 workers, 1 round (12 pretraining epochs)" --workers 8 --rounds 1 \
        --pretrain-epochs 12 --set compile=true
    step 290 "torch.compile, mode reduce-overhead (CUDA graphs), 8 workers, 1 round (12 pretraining epochs)" \
        --workers 8 --rounds 1 --pretrain-epochs 12 --set compile=true --set compile_mode=reduce-overhead
    exit 0
fi

echo "== the device's finishing of a batch against the workers (jitter_on_device and uint8_batches); no host wait =="
timeout 45 "$PY" benchmarks/check_jitter_on_device.py --device cuda || echo "(check_jitter_on_device: exit $?)"
# H200 calls 5-6 found both loops bound by the host's kernel launches (GPU busy 28-36 % of a step), the
# colour jitter on the GPU most of the kit's extra launches; calls 7-8 made uint8_batches (the jitter in
# the workers, uint8 transfers) the default: kit 1478 kernels a pretraining step against the bare loop's
# 1455. A worker's item then costs 3.5 ms at 256 px (bench_item_cost.py, last step), about 280 items a
# second, so these steps run 8 workers: what they measure is the launches, not the workers.
step 150 "default keys (bf16; uint8_batches: colour jitter in the workers, uint8 batches), 8 loader workers, 3 rounds" \
    --workers 8 --rounds 3
step 70 "colour jitter on the GPU (jitter_on_device true; pretraining's default before call 8), 8 workers, 1 round" \
    --workers 8 --rounds 1 --set jitter_on_device=true
# The paper pretrains at batch 128 (voc, cityscapes): a batch's handover from the workers and the launches
# are paid per step, so their share of an image falls: call 9 (one round, 74 s) gave 0.971x after the first
# epoch against 0.92x at batch 32. 12 epochs of 4 steps, 2 rounds.
step 130 "the paper's pretraining batch 128, default keys, 8 workers, 2 rounds" --workers 8 --rounds 2 \
    --batch-size 128 --pretrain-epochs 12
step 160 "where the GPU's time goes with the default keys: torch.profiler over one epoch of each side" --workers 8 \
    --device-profile

# A loader worker's cost of one item on this host's cores, for each batch form (CPU only; how many workers
# uint8_batches needs here). Last, so that a call that runs out of time loses only this.
echo "== a loader worker's ms an item on this host, 256 px (bench_item_cost.py) =="
timeout 35 "$PY" benchmarks/bench_item_cost.py --items 100 || echo "(bench_item_cost: exit $?)"

# Recorded for an H100 and an H200 (calls 1 and 8): each kind of step gets batches as its loader sends them
# (uint8_batches by default since call 8) and counts its loader's item time over the preset's workers,
# and says where the loader sets the pace: ESTIMATE=1.
if [ "${ESTIMATE:-0}" != 0 ]; then
    estimate
fi
# Measured before and left out to keep the check short (benchmarks/README.md, GPU): fp32,
# pin_memory/persistent_workers, 8 and 12 workers (H200 call 6), the colour jitter in the workers
# sending floats (uint8_batches false: 0.495x against 0.652x, call 3), the device jitter for
# fine-tuning and sync_free_steps off (call 5), the sync census (call 5), the epoch start
# (bench_epoch_start.py, call 5), channels_last (call 7, one round: 0.62x / 0.84x against 0.70x / 0.73x), and
# torch.compile (its compilation outlasts a short run; COMPILE=1 measures it on longer runs).

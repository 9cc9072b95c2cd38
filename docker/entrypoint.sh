#!/bin/sh
# Runs one training job described by the environment (README: "Container environment").
# One GPU: the job runs in this process. Several: torchrun starts one process per GPU.
set -eu
gpus="${QUANTLAB_NUM_GPUS:-1}"
if [ "$gpus" -gt 1 ]; then
    exec torchrun --standalone --nproc_per_node="$gpus" -m trainer.container "$@"
fi
exec python3 -m trainer.container "$@"

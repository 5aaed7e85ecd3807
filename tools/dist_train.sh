#!/usr/bin/env bash
# Multi-GPU (or multi-process CPU) training with torchrun:
#   bash tools/dist_train.sh CONFIG NUM_GPUS [train.py options...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT.
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
cd "$(dirname "$0")/.."
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" --nproc_per_node="$GPUS" \
    tools/train.py "$CONFIG" --launcher pytorch "${@:3}"

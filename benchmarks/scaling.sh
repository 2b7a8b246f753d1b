#!/usr/bin/env bash
# Multi-GPU scaling of `bench` with the engine: 1, 2, 4 workers (one GPU each).
#
#   benchmarks/scaling.sh OUTDIR [QUANTS] [WORKERS]      e.g. benchmarks/scaling.sh results/scaling "Q8_0 F16" "1 2 4"
# Env: PRESET (tinyllama-1.1b), DEVICE (cuda), SLOTS (32), PER_WORKER (192), MAX_TOKENS (64), MPIRUN, LLCUDA_MPI_STORE.
#
# Makes the TinyLlama-1.1B-shape model, stages it into the node's store with
# jobs/stage.py, runs bench from the store at a load that keeps every worker's
# batch full (closed loop, --inflight = --slots), then `report --compare`.
# MPIRUN defaults to mpiexec; on Open MPI as root: MPIRUN="mpirun --allow-run-as-root --oversubscribe".
set -euo pipefail
out=${1:?usage: scaling.sh OUTDIR [QUANTS] [WORKERS]}
quants=${2:-"Q8_0 F16"}
workers=${3:-"1 2 4"}
slots=${SLOTS:-32}
per_worker=${PER_WORKER:-192}          # measured requests per worker
max_tokens=${MAX_TOKENS:-64}
launch=${MPIRUN:-mpiexec}
preset=${PRESET:-tinyllama-1.1b}
device=${DEVICE:-cuda}
export LLCUDA_MPI_STORE=${LLCUDA_MPI_STORE:-${TMPDIR:-/tmp}/llcuda-store}
mkdir -p "$out"
for q in $quants; do
    model=${TMPDIR:-/tmp}/$preset-$q.gguf
    [ -f "$model" ] || python3 -m llcuda_mpi make-model --preset "$preset" --quant "$q" --output "$model"
    timeout 600 $launch -n 2 python3 -m llcuda_mpi.jobs.stage "$model" --name "$preset:$q"
    for w in $workers; do
        timeout 900 $launch -n $((w + 1)) python3 -m llcuda_mpi.jobs.bench --model "store:$preset:$q" \
            --device "$device" --slots "$slots" --inflight "$slots" --num-prompts $((w * per_worker)) \
            --warmup $((w * 4)) --max-tokens "$max_tokens" --ignore-eos --input-len 64 \
            --output "$out/$q-w$w.h5"
    done
    python3 -m llcuda_mpi report --compare "$out"/$q-w*.h5 --plots "$out/plots-$q" | tee "$out/compare-$q.txt"
done

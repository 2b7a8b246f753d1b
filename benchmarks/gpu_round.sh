#!/usr/bin/env bash
# The GPU engine checked and measured against llama.cpp on the same card, in three device calls
# (each stays under the device tool's 10-minute limit; the warm machine keeps .gpu-cache/):
#
#   source .device/gpu-env.sh && bash benchmarks/gpu_round.sh prepare   # llama.cpp CUDA build + models in the
#                      # background; GPU tests of the newest kernels; gemv vs gemvq per matrix; step profiles
#   source .device/gpu-env.sh && bash benchmarks/gpu_round.sh compare   # engine tok/s (int8 route off, on)
#                      # and llama-bench / llama-batched-bench on the same GGUF files
#   source .device/gpu-env.sh && bash benchmarks/gpu_round.sh suite     # the whole tests/gpu
#
# Carry .whl .device .peer/lcpp-trim.tar.gz. Each part writes $OUT/<part>.txt (OUT defaults to
# ./gpu-round) under its own time limit and prints its tail. Environment: QUANTS (default
# "F16 Q8_0 Q4_0 Q4_K_M"), CACHE (default .gpu-cache: models/ and lcpp/), LCPP_SDIST
# (default .peer/lcpp-trim.tar.gz).
set -uo pipefail

OUT=${OUT:-./gpu-round}
CACHE=${CACHE:-.gpu-cache}
MODELS=$CACHE/models
QUANTS=${QUANTS:-F16 Q8_0 Q4_0 Q4_K_M}
export LCPP_SDIST=${LCPP_SDIST:-.peer/lcpp-trim.tar.gz} LCPP_DIR=${LCPP_DIR:-$CACHE/lcpp} LCPP_JOBS=${LCPP_JOBS:-12}
mkdir -p "$OUT" "$MODELS"
t0=$SECONDS

part() {                         # part NAME LIMIT_S CMD...: run, keep the output, say how it went
    local name=$1 limit=$2
    shift 2
    local t=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "[$((SECONDS - t0)) s] $name: exit $rc after $((SECONDS - t)) s"
    tail -n 30 "$OUT/$name.txt"
}

prepare() {
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader | tee "$OUT/card.txt"
    local pids=() build=""
    if [ ! -x "$LCPP_DIR/build/bin/llama-bench" ]; then
        timeout 540 bash benchmarks/llamacpp_gpu.sh build > "$OUT/lcpp-build.txt" 2>&1 &
        build=$!
    fi
    for q in $QUANTS; do
        if [ ! -f "$MODELS/tinyllama-1.1b-$q.gguf" ]; then
            timeout 400 python3 -m llcuda_mpi make-model --preset tinyllama-1.1b --quant "$q" \
                -o "$MODELS/tinyllama-1.1b-$q.gguf" > "$OUT/make-$q.txt" 2>&1 &
            pids+=($!)
        fi
    done
    part tests-new 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_gemvq_gpu.py \
        tests/gpu/test_engine_gpu.py -k "linked or gemvq or int8"
    part gemv 150 python3 benchmarks/gemv.py --types F16,Q8_0,Q4_0,Q4_K --batches 1,4
    [ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
    ls -la "$MODELS"
    part profile 60 python3 benchmarks/profile_step.py --quant Q8_0 --model-dir "$MODELS"
    part profile-int8 60 env LLCUDA_INT8_X=1 python3 benchmarks/profile_step.py --quant Q8_0 --model-dir "$MODELS"
    if [ -n "$build" ]; then
        wait "$build"
        tail -n 3 "$OUT/lcpp-build.txt"
    fi
}

compare() {
    local qs
    qs=$(echo $QUANTS | tr ' ' ',')
    part engine 240 python3 benchmarks/engine.py --quants "$qs" --batches 1,32 --steps 24 --prefill 512 \
        --model-dir "$MODELS" --json "$OUT/engine.json"
    part engine-int8 120 env LLCUDA_INT8_X=1 python3 benchmarks/engine.py --quants Q8_0,Q4_0 --batches 1,8 \
        --steps 24 --prefill 0 --model-dir "$MODELS" --json "$OUT/engine-int8.json"
    part llamacpp 220 env QUANTS="$QUANTS" bash benchmarks/llamacpp_gpu.sh bench "$MODELS"
}

case "${1:-}" in
    prepare) prepare ;;
    compare) compare ;;
    suite) part tests-gpu 560 python3 -m pytest -q -p no:cacheprovider tests/gpu ;;
    *) echo "usage: $0 prepare | compare | suite" >&2; exit 2 ;;
esac
echo "[$((SECONDS - t0)) s] $1 done; outputs in $OUT"

#!/usr/bin/env bash
# One device call (< 10 min): llama.cpp CUDA build in the background while ours is checked and timed,
# then llama-bench on the same files. Outputs: $R/*.txt (R defaults to /tmp/gr).
#
#   source .device/gpu-env.sh && bash benchmarks/gpu_quick.sh     # carry .whl .device .peer/lcpp-trim.tar.gz
#
# QUANTS (default "Q8_0 Q4_0 Q4_K_M F16"), BATCHES (default 1,8), PREFILL (prompt length, default 0: none),
# ROUTES (default "0 1": LLCUDA_INT8_X off, on), LCPP (empty: no llama.cpp build / bench),
# TESTS (pytest arguments for the first part; default: the int8 route's GPU tests; TESTS2: a second
# pytest part), PROFILE (types whose decode step is profiled per kernel, default Q8_0; an item
# QUANT:--batch=32 or QUANT:--prefill=512 passes that option), GEMV (empty: skip benchmarks/gemv.py),
# MMA (default "1", the engine's default; "0 1": timed without and with LLCUDA_MMA, the tensor-core prefill / B > 8),
# MMA_K (default "0"; "0 1": timed without and with LLCUDA_MMA_K, gemmq's opt-in Q4_K / Q6_K kinds),
# TESTS_LIMIT / TESTS2_LIMIT (seconds for the pytest parts, default 200 / 100: the two big GPU test
# files in one part need ~300 on a fresh machine),
# GEMM (non-empty: benchmarks/gemm.py, FP32 gemm vs gemmq per matrix at 32 and 512 tokens),
# NCU (a kernel-name regex, e.g. attention: Nsight Compute sections for its first launches),
# LINKED_AB (non-empty: B = 1 decode of these types again with LLCUDA_LINKED_INTRIN=1, the linked
# CUDA C helpers instead of inline PTX). First a smoke check of the inline-PTX intrinsics: if they
# fail to build or compute, the rest runs with LLCUDA_LINKED_INTRIN=1 LLCUDA_MMA=0 (and says so).
set -uo pipefail
R=${R:-/tmp/gr}
M=${M:-/tmp/models}
QUANTS=${QUANTS:-Q8_0 Q4_0 Q4_K_M F16}
BATCHES=${BATCHES:-1,8}
ROUTES=${ROUTES:-0 1}
export LCPP_SDIST=${LCPP_SDIST:-.peer/lcpp-trim.tar.gz} LCPP_DIR=${LCPP_DIR:-/tmp/lcpp} LCPP_JOBS=${LCPP_JOBS:-12}
mkdir -p "$R" "$M"
t0=$SECONDS
part() {                         # part NAME LIMIT_S CMD...
    local name=$1 limit=$2 t=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$R/$name.txt" 2>&1
    echo "[$((SECONDS - t0)) s] $name: exit $? after $((SECONDS - t)) s"
    tail -n "${TAIL:-12}" "$R/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader | tee "$R/card.txt"
python3 - <<'PY' 2>&1 | tee "$R/versions.txt"
import numba, numba_cuda
from numba.cuda.cudadrv.driver import _have_nvjitlink
print("numba", numba.__version__, "numba-cuda", getattr(numba_cuda, "__version__", "?"), "nvJitLink", _have_nvjitlink())
PY
if ! timeout 120 python3 - > "$R/smoke.txt" 2>&1 <<'PY'
import numpy as np
from llcuda_mpi.kernels import intrin
rng = np.random.default_rng(1)
A, B = rng.integers(-128, 128, (16, 32)).astype(np.int8), rng.integers(-128, 128, (32, 8)).astype(np.int8)
assert (intrin.mma_s8_check(A, B) == A.astype(np.int32) @ B.astype(np.int32)).all(), "mma_s8"
A, B = rng.standard_normal((16, 16)).astype(np.float16), rng.standard_normal((16, 8)).astype(np.float32)
want = A.astype(np.float64) @ B.astype(np.float16).astype(np.float64) + 1
assert np.allclose(intrin.mma_f16_check(A, B), want, rtol=1e-3, atol=1e-3), "mma_f16"
print("inline PTX intrinsics: ok")
PY
then
    echo "SMOKE FAILED: the inline-PTX intrinsics; continuing with LLCUDA_LINKED_INTRIN=1 LLCUDA_MMA=0"
    tail -n 20 "$R/smoke.txt"
    export LLCUDA_LINKED_INTRIN=1
    MMA=0
fi
cat "$R/smoke.txt"
build=""
if [ -n "${LCPP-1}" ] && [ ! -x "$LCPP_DIR/build/bin/llama-bench" ]; then
    timeout 420 bash benchmarks/llamacpp_gpu.sh build > "$R/lcpp-build.txt" 2>&1 &
    build=$!
fi
pids=()
for q in $QUANTS; do
    [ -f "$M/tinyllama-1.1b-$q.gguf" ] || { timeout 300 python3 -m llcuda_mpi make-model --preset tinyllama-1.1b \
        --quant "$q" -o "$M/tinyllama-1.1b-$q.gguf" > "$R/make-$q.txt" 2>&1 & pids+=($!); }
done
TESTS=${TESTS:-tests/gpu/test_gemvq_gpu.py tests/gpu/test_engine_gpu.py -k "dp4a or h2f or mma or gemvq or int8"}
eval "part tests-new ${TESTS_LIMIT:-200} python3 -m pytest -q -p no:cacheprovider $TESTS"
[ -n "${TESTS2-}" ] && eval "part tests-more ${TESTS2_LIMIT:-100} python3 -m pytest -q -p no:cacheprovider $TESTS2"
[ -n "${GEMV-1}" ] && part gemv 90 python3 benchmarks/gemv.py --types F16,Q8_0,Q4_0,Q4_K --batches 1,4
[ -n "${GEMM-}" ] && part gemm 120 python3 benchmarks/gemm.py --types ${GEMM_TYPES:-Q8_0,Q4_0} --tokens 32,512
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for item in ${PROFILE:-Q8_0}; do                 # QUANT or QUANT:--batch=32 / QUANT:--prefill=512
    q=${item%%:*}; args=""; [ "$item" != "$q" ] && args=${item#*:}
    TAIL=14 part "profile-$q${args//[^0-9a-z]/}" 60 python3 benchmarks/profile_step.py --quant "$q" $args --model-dir "$M"
done
# NCU=regex: Nsight Compute on the first launches of the kernels whose names match (when ncu is there)
if [ -n "${NCU-}" ]; then
    ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
    if [ -n "$ncu" ]; then
        TAIL=60 part ncu 150 "$ncu" --kernel-name "regex:$NCU" --launch-count 4 --section SpeedOfLight \
            --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
            python3 benchmarks/profile_step.py --quant Q8_0 --steps 2 --model-dir "$M"
    else
        echo "NCU: no ncu on this machine"
    fi
fi
# the timed runs start once the build is done: its 12 compiler processes would slow our host side
if [ -n "$build" ]; then wait "$build"; tail -n 2 "$R/lcpp-build.txt"; build=""; fi
for r in $ROUTES; do
    for mm in ${MMA:-1}; do
        for mk in ${MMA_K:-0}; do
            sfx=int8x$r; [ "$mm" = 0 ] && sfx=$sfx-nomma; [ "$mk" = 1 ] && sfx=$sfx-mmak
            part "engine-$sfx" 150 env LLCUDA_INT8_X=$r LLCUDA_MMA=$mm LLCUDA_MMA_K=$mk python3 benchmarks/engine.py \
                --quants "$(echo $QUANTS | tr ' ' ,)" --batches "$BATCHES" --steps 24 --prefill "${PREFILL:-0}" \
                --model-dir "$M" --json "$R/engine-$sfx.json"
        done
    done
done
if [ -n "${LINKED_AB-}" ]; then
    part engine-linked 120 env LLCUDA_LINKED_INTRIN=1 python3 benchmarks/engine.py --quants "$(echo $LINKED_AB | tr ' ' ,)" \
        --batches 1 --steps 24 --prefill 0 --model-dir "$M" --json "$R/engine-linked.json"
fi
[ -n "${LCPP-1}" ] && TAIL=40 part llamacpp 150 env QUANTS="$QUANTS" bash benchmarks/llamacpp_gpu.sh bench "$M"
echo "[$((SECONDS - t0)) s] done"

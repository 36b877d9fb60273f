#!/usr/bin/env bash
# The frozen base's precision against its peers, in one sitting on one host, quiet and then with
# a memory-bandwidth load beside it (a STREAM-like 256 MiB copy loop pinned to the last core),
# alternating the tools within each condition. Four conditions: `quiet` and `load` with THREADS
# threads on every core (the load then also takes CPU from the tools), and `quiet-pinned` and
# `load-pinned` with the tools pinned to the other cores and one thread fewer (the load takes
# memory bandwidth only). Within each:
#   - fedsim's LoRA train step (batch 4 x 128, r 8 on q/v, AdamW) per model.base_precision, with
#     its peak RSS (examples/train_step, the real GGUF read straight into the precision);
#   - PyTorch + PEFT's f32 step, generation and peak RSS (../shared/bench/torch_lora.py);
#   - greedy generation of 64 tokens from "The capital of France is": fedsim (sim generate) per
#     precision, with f32 activations and, for Q8_0 and Q4_1, 8-bit ones
#     (--inference-activations Int8), and llama.cpp on the same GGUF
#     (benches/llama_cpp_generate.mjs).
# Every figure comes with the other-process CPU share of its window (benches/measure.py); the
# host's CPU model, SIMD features and thread count head the output.
#
# Usage: benches/precision.sh [OUT_DIR] — needs a release build (cargo build --release
# --examples), the GGUF fetched (sim fetch-model smollm2-135m-instruct), TORCH_PY pointing at a
# Python with torch, transformers, peft and gguf, and LLAMA_CPP_DIR holding
# node_modules/node-llama-cpp (npm install node-llama-cpp). REPEATS (default 1) rounds per
# condition; THREADS (default 2); CONDITIONS (default all four, in this order); PRECISIONS
# (default F32 Bf16 Q8_0 Q4_1 Q8_0:Bf16 Q4_1:Bf16, PRECISION[:COMPUTE], COMPUTE a
# model.compute_dtype) and STEPS (timed steps after 2 warm-up ones, default 5) for the
# training step; GENERATIONS (default F32 Q8_0 Q4_1 Q8_0:Int8 Q4_1:Int8, PRECISION[:ACTIVATIONS])
# for generation.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench-precision}
REPEATS=${REPEATS:-1}
THREADS=${THREADS:-2}
TARGET=${CARGO_TARGET_DIR:-target}/release
GGUF=${SMOLLM2_GGUF:-$HOME/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TORCH_PY=${TORCH_PY:-python3}
LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-}
PROMPT="The capital of France is"
mkdir -p "$OUT" /tmp/anchor-torch
LOG="$OUT/precision.jsonl"
: > "$LOG"
M() { python3 benches/measure.py "$@"; }
record() { # condition, what, json
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["condition"]=sys.argv[1]; d["what"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" "$3" | tee -a "$LOG"
}

{
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
    echo "simd: $(grep -o -w -E 'avx2|fma|f16c|avx512f|avx512_vnni|avx512_bf16|amx_tile|amx_int8|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "kernels: fedsim bf16 matmuls (compute Bf16) AVX-512 BF16 vdpbf16ps when detected (else portable); fedsim packed rows AVX2+FMA+F16C when detected (else portable), 8-bit activation rows AVX2 (maddubs) when detected, gemm crate AVX-512 (x86-v4) when detected; threads $THREADS of $(nproc) cores ($((THREADS > $(nproc) - 1 ? $(nproc) - 1 : THREADS)) when pinned)"
} | tee "$OUT/host.txt"

load_pid=""
start_load() {
    taskset -c "$(($(nproc) - 1))" "$TORCH_PY" -c 'import numpy as np
a = np.ones(1 << 26, np.float32); b = np.empty_like(a)
while True: np.copyto(b, a)' &
    load_pid=$!
    sleep 2
}
stop_load() { [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null || true; load_pid=""; }
trap stop_load EXIT

LAST=$(($(nproc) - 1))
for condition in ${CONDITIONS:-quiet load quiet-pinned load-pinned}; do
    case "$condition" in
        load | load-pinned) start_load ;;
    esac
    case "$condition" in
        *-pinned) PIN="taskset -c 0-$((LAST - 1))"; T=$((THREADS > LAST ? LAST : THREADS)) ;;
        *) PIN=""; T=$THREADS ;;
    esac
    for _ in $(seq "$REPEATS"); do
        for s in ${PRECISIONS:-F32 Bf16 Q8_0 Q4_1 Q8_0:Bf16 Q4_1:Bf16}; do
            p=${s%%:*}; c=F32; [ "$s" != "$p" ] && c=${s#*:}
            what="fedsim step $p"; [ "$c" != F32 ] && what="$what, $c matmuls"
            record "$condition" "$what" "$(RAYON_NUM_THREADS=$T M $PIN "$TARGET/examples/train_step" "${STEPS:-5}" "$p" "$GGUF" "$c")"
        done
        record "$condition" "pytorch step+generation" "$(SMOLLM2_GGUF=$GGUF M $PIN "$TORCH_PY" ../shared/bench/torch_lora.py --phase gguf --threads "$T")"
        for g in ${GENERATIONS:-F32 Q8_0 Q4_1 Q8_0:Int8 Q4_1:Int8}; do
            p=${g%%:*}; a=F32; [ "$g" != "$p" ] && a=${g#*:}
            what="fedsim generate $p"; [ "$a" != F32 ] && what="$what, $a activations"
            record "$condition" "$what" "$(RAYON_NUM_THREADS=$T M $PIN "$TARGET/sim" generate --raw --model "$GGUF" --base-precision "$p" --inference-activations "$a" --max-tokens 64 --min-tokens 64 "$PROMPT")"
        done
        if [ -n "$LLAMA_CPP_DIR" ]; then
            cp benches/llama_cpp_generate.mjs "$LLAMA_CPP_DIR/"
            record "$condition" "llama.cpp generate" "$(M $PIN node "$LLAMA_CPP_DIR/llama_cpp_generate.mjs" "$GGUF" "$T" 64 "$PROMPT")"
        fi
    done
    stop_load
done
echo "wrote $LOG"

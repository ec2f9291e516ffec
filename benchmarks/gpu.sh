#!/usr/bin/env bash
# The GPU benchmark in one command: on a machine with an NVIDIA GPU, install the GPU runtime
# (the `gpu` extra: onnxruntime-gpu) into a folder of its own, make an fp16 variant, run
# `reranker bench scorer` on the CUDA provider with IO binding, then the window-100 latency
# over the 300 SciFact test queries, and write OUT_DIR/gpu.json. Everything within 8 minutes.
#
#   benchmarks/gpu.sh OUT_DIR [--wheels DIR] [--data DIR|ARCHIVE] [--model DIR]
#                     [--checkpoint DIR] [--python PY] [--allow-cpu] [-- gpu_bench options]
#
#   --wheels DIR      the GPU runtime, offline: a folder from `benchmarks/gpu_runtime.py
#                     prepare` (manifest.json + parts) and/or *.whl files (pip --no-index).
#                     Default: .gpu/ort when it exists; else, on a GPU machine, pip installs
#                     the `gpu` extra from the index. Never into an existing environment: into
#                     $RERANKER_GPU_WORK/site (default a new folder under /tmp), put first on
#                     PYTHONPATH.
#   --data DIR        SciFact in BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv), or a
#                     .tar.xz/.tar.gz of it. Default: .gpu/scifact(.tar.xz), else
#                     ../shared/data/scifact.
#   --model DIR       exported cross-encoder folder (default models/reranker-minilm-l6; an int8
#                     folder is dequantised to fp16, see export/dequantize.py).
#   --checkpoint DIR  export the fp16 variant from this Hugging Face checkpoint instead.
#   --allow-cpu       without CUDA, measure on the CPU instead of failing (also
#                     RERANKER_GPU_ALLOW_CPU=1); the tests use it.
#   after --           options for benchmarks/gpu_bench.py (--queries, --window, ...).
#
# Exit codes: 0 done; 1 failure; 2 bad usage; 3 CUDA requested and not usable; 4 the runtime's
# parts are missing or damaged; 124 the 8-minute budget ran out. gpu.json is written whenever
# the benchmark itself started (with "ok": false and the error on failure).
set -euo pipefail

started=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUDGET_S=${RERANKER_GPU_BUDGET_S:-480}

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
say() { echo "[gpu.sh] $*" >&2; }

OUT=""
WHEELS=""
DATA=""
MODEL=""
CHECKPOINT=""
PY=${PYTHON:-python3}
case "${RERANKER_GPU_ALLOW_CPU:-}" in 1 | true | yes | on) ALLOW_CPU=1 ;; *) ALLOW_CPU="" ;; esac
EXTRA=()
while (($#)); do
    case "$1" in
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
        --data) DATA=${2:?--data needs a folder}; shift 2 ;;
        --model) MODEL=${2:?--model needs a folder}; shift 2 ;;
        --checkpoint) CHECKPOINT=${2:?--checkpoint needs a folder}; shift 2 ;;
        --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
        --allow-cpu) ALLOW_CPU=1; shift ;;
        -h | --help) usage ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) say "unknown option $1"; usage ;;
        *) if [[ -z $OUT ]]; then OUT=$1; shift; else say "one OUT_DIR only (got $OUT and $1)"; usage; fi ;;
    esac
done
[[ -n $OUT ]] || usage
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"

WORK=${RERANKER_GPU_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/reranker-gpu.XXXXXX")}
mkdir -p "$WORK"
SITE=$WORK/site
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

has_cuda_provider() {
    "$PY" -c 'import sys, onnxruntime as o; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null
}
has_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

# 1. the GPU runtime ------------------------------------------------------------------------
if [[ -z $WHEELS && -f $REPO/.gpu/ort/manifest.json ]]; then WHEELS=$REPO/.gpu/ort; fi
if has_cuda_provider; then
    say "this onnxruntime already has the CUDA provider: nothing to install"
elif ! has_gpu && [[ -n $ALLOW_CPU ]]; then
    say "no NVIDIA GPU here: the GPU runtime is not installed, the benchmark runs on the CPU (--allow-cpu)"
elif ! has_gpu; then
    say "error: CUDA requested, but no NVIDIA GPU is visible here (nvidia-smi lists none)." \
        "Run this on a machine with an NVIDIA GPU, or pass --allow-cpu to measure on the CPU."
    exit 3
elif [[ -n $WHEELS ]]; then
    say "installing the GPU runtime from $WHEELS into $SITE (offline)"
    "$PY" benchmarks/gpu_runtime.py install --from "$WHEELS" --target "$SITE"
    export PYTHONPATH="$SITE:$PYTHONPATH"
else
    spec=$("$PY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))')
    say "installing the gpu extra ($spec) from the package index into $SITE"
    if "$PY" -m pip install -q --no-deps --no-cache-dir --target "$SITE" $spec; then
        export PYTHONPATH="$SITE:$PYTHONPATH"
    else
        say "pip could not install $spec (no index reachable? give --wheels DIR)"
    fi
fi
if has_gpu; then
    # cuBLAS, cuDNN, ... as pip packages (PyTorch's CUDA build brings them): loadable by name
    libs=$("$PY" benchmarks/gpu_runtime.py libpath 2>/dev/null || true)
    if [[ -n $libs ]]; then export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
fi

# 2. the data ---------------------------------------------------------------------------------
if [[ -z $DATA ]]; then
    for candidate in .gpu/scifact .gpu/scifact.tar.xz ../shared/data/scifact; do
        if [[ -e $candidate ]]; then DATA=$candidate; break; fi
    done
fi
if [[ -z $DATA || ! -e $DATA ]]; then
    say "error: no SciFact data: give --data DIR (corpus.jsonl, queries.jsonl, qrels/test.tsv)"
    exit 2
fi
if [[ -f $DATA ]]; then
    mkdir -p "$WORK/data"
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$DATA" "$WORK/data"
    corpus=$(find "$WORK/data" -name corpus.jsonl | head -n 1)
    if [[ -z $corpus ]]; then say "error: $DATA holds no corpus.jsonl"; exit 2; fi
    DATA=$(dirname "$corpus")
fi

# 3. the benchmark ----------------------------------------------------------------------------
args=(--out "$OUT" --data "$DATA" --work "$WORK/bench")
[[ -n $MODEL ]] && args+=(--model "$MODEL")
[[ -n $CHECKPOINT ]] && args+=(--checkpoint "$CHECKPOINT")
[[ -n $ALLOW_CPU ]] && args+=(--allow-cpu)
left=$((started + BUDGET_S - $(date +%s)))
if ((left < 60)); then say "error: only ${left} s of the ${BUDGET_S} s budget left after the install"; exit 124; fi
# measuring stops 20 s before the budget, so that the JSON is still written
args+=(--deadline "$((started + BUDGET_S - 20))")
say "benchmark: $PY benchmarks/gpu_bench.py ${args[*]} ${EXTRA[*]:-} (${left} s left)"
set +e
timeout --kill-after=10 "$left" "$PY" benchmarks/gpu_bench.py "${args[@]}" "${EXTRA[@]}"
code=$?
set -e
if ((code == 124 || code == 137)); then say "error: the benchmark ran past the ${BUDGET_S} s budget"; code=124; fi
if [[ -z ${RERANKER_GPU_WORK:-} ]]; then rm -rf "$WORK"; fi
say "done in $(($(date +%s) - started)) s (exit $code); $OUT/gpu.json"
exit "$code"

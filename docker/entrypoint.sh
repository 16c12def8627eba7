#!/usr/bin/env bash
# The image's entrypoint; docker-compose.yml runs one subcommand per service:
#   init   GPU host: export the vq02 ONNX, build TensorRT plans for the GPUs here and the model
#          repository, each only when missing or stale (the build scripts are idempotent), so
#          that a restart or a new GPU model rebuilds exactly what no longer fits; with
#          Step-Audio-EditX weights in EDITX the repository also serves the clone pipeline
#   serve  tritonserver on the built repository (ports 8000 HTTP, 8001 gRPC, 8002 metrics)
#   cpu    the synthetic default without a GPU: tiny synthetic tokenizer and EditX weights, a
#          CPU repository with the tokenizer and the clone pipeline, serve
# Settings come from the environment (defaults in brackets): WEIGHTS [/weights], EDITX
# [/editx] (used when it holds config.json), REPO [/models], ENGINES [/engines], GPUS [0],
# PLACEMENT [""] (build_repository --placement, e.g. vq02=0,vq06=1,llm=0,decoder=1 or auto),
# GPU_ENGINE tensorrt|onnxruntime|none [tensorrt], PRECISION fp32|fp16 [fp32],
# MAX_BATCH_SIZE [16], MAX_AUDIO_SECONDS [120], INSTANCES [""] (e.g. vq02=2,vq06=1),
# LLM_DTYPE [bfloat16], FLOW_DTYPE [float32], HIFT_DTYPE [float32] (float32|bfloat16), LLM_ENGINE python|vllm [python] (vllm: an image
# built on a tritonserver -vllm-python-py3 tag), CPU_BUILD [/build], CUDA_POOL_BYTES
# [268435456] per GPU, TRITON_ARGS [""].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WEIGHTS="${WEIGHTS:-/weights}"
EDITX="${EDITX:-/editx}"
LLM_DTYPE="${LLM_DTYPE:-bfloat16}"
FLOW_DTYPE="${FLOW_DTYPE:-float32}"
HIFT_DTYPE="${HIFT_DTYPE:-float32}"
LLM_ENGINE="${LLM_ENGINE:-python}"
REPO="${REPO:-/models}"
ENGINES="${ENGINES:-/engines}"
GPUS="${GPUS:-0}"
GPU_ENGINE="${GPU_ENGINE:-tensorrt}"
PRECISION="${PRECISION:-fp32}"
MAX_BATCH_SIZE="${MAX_BATCH_SIZE:-16}"
MAX_AUDIO_SECONDS="${MAX_AUDIO_SECONDS:-120}"
INSTANCES="${INSTANCES:-}"
CPU_BUILD="${CPU_BUILD:-/build}"
CUDA_POOL_BYTES="${CUDA_POOL_BYTES:-268435456}"

say() { echo "entrypoint: $*" >&2; }

build_repository() {  # build_repository WEIGHTS EDITX OUT [more build_repository.py arguments]
    local weights=$1 editx=$2 out=$3
    shift 3
    local editx_args=()
    if [ -f "$editx/config.json" ]; then
        editx_args=(--editx "$editx" --llm-dtype "$LLM_DTYPE" \
            --flow-dtype "$FLOW_DTYPE" --hift-dtype "$HIFT_DTYPE")
    else
        say "no EditX weights in $editx (no config.json): tokenizer only, no clone models"
    fi
    python3 -m build_scripts.build_repository --weights "$weights" --out "$out" \
        --max-batch-size "$MAX_BATCH_SIZE" --max-audio-seconds "$MAX_AUDIO_SECONDS" \
        ${INSTANCES:+--instances "$INSTANCES"} "${editx_args[@]}" "$@"
}

export_vq02() {  # the vq02 encoder ONNX, exported and checked against PyTorch once per weights
    say "vq02 encoder ONNX $ENGINES/vq02_encoder.onnx"
    python3 -m build_scripts.export_vq02_onnx --weights "$WEIGHTS" --out "$ENGINES/vq02_encoder.onnx"
}

build_plan() {  # build_plan ONNX PLAN: kept when built for this GPU, TensorRT, ONNX and limits
    say "TensorRT plan $2"
    # built on the first GPU of GPUS; build_repository checks every GPU of GPUS against the
    # plan's GPU model and TensorRT version
    CUDA_VISIBLE_DEVICES="${GPUS%%,*}" python3 -m build_scripts.build_tensorrt --onnx "$1" \
        --out "$2" "--$PRECISION" --max-batch-size "$MAX_BATCH_SIZE" \
        --max-audio-seconds "$MAX_AUDIO_SECONDS"
}

init() {
    mkdir -p "$ENGINES" "$REPO"
    local engine_args=()
    case "$GPU_ENGINE" in
        tensorrt)
            export_vq02
            build_plan "$ENGINES/vq02_encoder.onnx" "$ENGINES/vq02_encoder.plan"
            build_plan "$WEIGHTS/speech_tokenizer_v1.onnx" "$ENGINES/vq06_encoder.plan"
            engine_args=(--gpu-engine tensorrt --plan-check require
                         --vq02-engine "$ENGINES/vq02_encoder.plan"
                         --vq06-engine "$ENGINES/vq06_encoder.plan")
            ;;
        onnxruntime)
            export_vq02
            engine_args=(--gpu-engine onnxruntime --vq02-engine "$ENGINES/vq02_encoder.onnx")
            ;;
        none) ;;
        *) say "GPU_ENGINE must be tensorrt, onnxruntime or none, not '$GPU_ENGINE'"; exit 2 ;;
    esac
    say "model repository $REPO"
    local llm_args=()
    if [ "$LLM_ENGINE" != python ]; then llm_args=(--llm-engine "$LLM_ENGINE"); fi
    build_repository "$WEIGHTS" "$EDITX" "$REPO" --device gpu --gpus "$GPUS" \
        ${PLACEMENT:+--placement "$PLACEMENT"} "${engine_args[@]}" "${llm_args[@]}"
}

serve() {  # serve REPO [more tritonserver arguments]
    local repo=$1
    shift
    if [ ! -f "$repo/audio_tokenizer/config.pbtxt" ]; then
        say "$repo holds no built repository: run the init service first"
        exit 1
    fi
    # explicit model control (every model loaded at start) lets docker/healthcheck.py reload a
    # model whose Python stub died
    # shellcheck disable=SC2086  # TRITON_ARGS is a list of flags
    exec tritonserver --model-repository="$repo" --http-port=8000 --grpc-port=8001 \
        --metrics-port=8002 --disable-auto-complete-config --exit-timeout-secs=30 \
        --model-control-mode=explicit --load-model='*' "$@" $TRITON_ARGS
}

cpu() {
    say "tiny synthetic tokenizer and EditX weights and a CPU repository in $CPU_BUILD"
    python3 -m build_scripts.make_synthetic_weights --preset tiny --out "$CPU_BUILD/weights/tiny"
    python3 -m build_scripts.make_synthetic_editx --preset tiny --out "$CPU_BUILD/weights/tiny-editx"
    build_repository "$CPU_BUILD/weights/tiny" "$CPU_BUILD/weights/tiny-editx" \
        "$CPU_BUILD/model_repository" --device cpu
    serve "$CPU_BUILD/model_repository"
}

TRITON_ARGS="${TRITON_ARGS:-}"
case "${1:-}" in
    init) init ;;
    serve)
        pools=()
        for gpu in ${GPUS//,/ }; do pools+=("--cuda-memory-pool-byte-size=$gpu:$CUDA_POOL_BYTES"); done
        serve "$REPO" "${pools[@]}"
        ;;
    cpu) cpu ;;
    *) echo "usage: entrypoint.sh init | serve | cpu" >&2; exit 2 ;;
esac

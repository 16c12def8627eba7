#!/usr/bin/env bash
# bash run.sh demo   set up, build tiny synthetic weights (tokenizer + EditX LLM/decoder) and the
#                    model repository, start tritonserver, clone the voice of a generated speech
#                    clip end to end over gRPC (`clone`: tokenizer, prompt builder, LLM, flow +
#                    HiFT), write the cloned wav, print per-stage timing and the prompt tokens,
#                    stop the server
# bash run.sh test   set up, then run the test suite (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=.venv/bin/python

demo() {
    local out=build/demo
    mkdir -p "$out"
    echo "== weights, model repository and a speech clip"
    "$PY" - "$out" <<'PYEOF'
import os
import sys
from pathlib import Path

import soundfile as sf

from build_scripts.build_repository import build as build_repository
from build_scripts.espeak_clips import speech_with_transcript
from build_scripts.make_synthetic_editx import build as build_editx
from build_scripts.make_synthetic_weights import build as build_weights

out = Path(sys.argv[1])
weights = build_weights("tiny", Path("build/weights/tiny"))
editx = build_editx("tiny", Path("build/weights/tiny-editx"))
repo = build_repository(weights, Path("build/model_repository"), editx=editx)
audio, rate, transcript = speech_with_transcript(8.0, seed=3)
sf.write(out / "prompt.wav", audio, rate)
(out / "prompt.txt").write_text(transcript + "\n")
print(f"weights:    {os.path.relpath(weights)}, {os.path.relpath(editx)} (tiny synthetic presets)")
print(f"repository: {os.path.relpath(repo)}")
print(f"clip:       {out / 'prompt.wav'} ({len(audio) / rate:.1f} s at {rate} Hz, espeak-ng)")
PYEOF

    echo "== starting tritonserver"
    rm -f "$out/ports.json"
    "$PY" build_scripts/serve.py --repo build/model_repository --address 127.0.0.1 \
        --log-file "$out/tritonserver.log" > "$out/ports.json" &
    local server=$!
    trap "kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true" EXIT
    until [ -s "$out/ports.json" ]; do
        if ! kill -0 "$server" 2>/dev/null; then
            echo "tritonserver did not start (see above and $out/tritonserver.log)" >&2
            exit 1
        fi
        sleep 0.5
    done
    local grpc
    grpc="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["grpc_port"])' "$out/ports.json")"
    echo "ready: $(cat "$out/ports.json")"

    echo "== cloning the voice of $out/prompt.wav over gRPC (python -m client clone ...)"
    # the synthetic LLM never says <|EOT|>: --max-new-tokens bounds it (126 ids = 3 s of speech)
    "$PY" -m client clone --prompt-wav "$out/prompt.wav" --prompt-text "$(cat "$out/prompt.txt")" \
        --text "Triton serves this cloned voice." -o "$out/cloned.wav" --url "localhost:$grpc" \
        --seed 7 --max-new-tokens 126 2>&1
    echo "== the prompt's audio tokens (python -m client tokenize ... --timing)"
    "$PY" -m client tokenize "$out/prompt.wav" --url "localhost:$grpc" --json "$out/tokens.json" --timing 2>&1
    "$PY" - "$out/tokens.json" <<'PYEOF'
import json
import sys

t = json.load(open(sys.argv[1]))
print(f"vq02 codes ({len(t['vq02_codes'])}, 16.7 Hz): {t['vq02_codes']}")
print(f"vq06 codes ({len(t['vq06_codes'])}, 25 Hz): {t['vq06_codes']}")
print(f"merged LLM ids ({len(t['merged_ids'])}): {t['merged_ids'][:15]} ...")
print(f"token string: {t['token_str'][:150]}...")
print(f"all tokens: {sys.argv[1]}")
PYEOF
    echo "== stopping tritonserver"
    kill -TERM "$server"
    wait "$server"
    trap - EXIT
}

case "${1:-}" in
    demo)
        bash build_scripts/setup_env.sh
        demo
        ;;
    test)
        bash build_scripts/setup_env.sh
        shift
        exec "$PY" -m pytest -q tests "$@"
        ;;
    *)
        echo "usage: bash run.sh demo | bash run.sh test [pytest arguments]" >&2
        exit 2
        ;;
esac

"""Command line for a running server: tokenize a sound file, or clone a voice.

    python -m client tokenize FILE.wav [--url HOST:PORT] [--protocol grpc|http] [--json OUT]
        [--timing]
    python -m client clone --prompt-wav P.wav --prompt-text "..." --text "..." -o OUT.wav
        [--url HOST:PORT] [--protocol grpc|http] [--stream] [--seed N] [--greedy] [--max-new-tokens N]

Any sample rate (from 8 kHz) and channel count soundfile reads. `tokenize` prints the tokens as
JSON, or writes them to OUT; --timing adds the per-model Triton timing on stderr. `clone`
writes the cloned speech (24 kHz wav) and prints the time per stage and in total.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import time

from .clone_client import CloneClient
from .tokenizer_client import AudioTokenizerClient
from .triton_base import TokenizerError, format_stage_times


def tokenize_file(path: str, url: str | None, protocol: str, timing: bool) -> tuple[dict, str]:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # [frames, channels]
    with AudioTokenizerClient(url, protocol) as client:
        tokens = client.tokenize(audio, rate)
        table = format_stage_times(client.stage_times(), client.stages, client.model) if timing else ""
    result = {
        "file": str(path),
        "sample_rate": int(rate),
        "channels": int(audio.shape[1]),
        "seconds": round(audio.shape[0] / rate, 3),
        "vq02_codes": tokens["vq02_codes"].tolist(),
        "vq06_codes": tokens["vq06_codes"].tolist(),
        "merged_ids": tokens["merged_ids"].tolist(),
        "token_str": tokens["token_str"],
    }
    return result, table


def clone_file(args) -> str:
    import soundfile as sf

    audio, rate = sf.read(args.prompt_wav, dtype="float32", always_2d=True)
    with CloneClient(args.url, args.protocol, timeout_s=args.timeout) as client:
        start = time.perf_counter()
        wave, out_rate = client.clone(audio, rate, args.prompt_text, args.text, stream=args.stream,
                                      seed=args.seed, greedy=True if args.greedy else None,
                                      max_new_tokens=args.max_new_tokens)
        total = time.perf_counter() - start
        timing = client.last_timing
    sf.write(args.output, wave, out_rate, subtype="FLOAT")
    seconds = len(wave) / out_rate if out_rate else 0.0
    lines = [f"{args.output}: {seconds:.2f} s of speech at {out_rate} Hz",
             f"total {total:.2f} s (real-time factor {total / seconds:.2f})" if seconds else
             f"total {total:.2f} s"]
    if args.stream and client.first_chunk_s is not None:
        lines.append(f"first audio after {client.first_chunk_s:.2f} s, "
                     f"{len(client.chunk_seconds)} chunks")
    if timing:
        lines.append("server: " + ", ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds
                                            in timing.items() if stage != "prompt_cached")
                     + f"; prompt {'cached' if timing.get('prompt_cached') else 'encoded'}")
    return "\n".join(lines)


def _call(path: str, action: Callable):
    """(0, action()) for an existing input file, or (exit code, None) after printing why not."""
    if not Path(path).is_file():
        print(f"client: error: {path}: no such file", file=sys.stderr)
        return 2, None
    try:
        return 0, action()
    except TokenizerError as exc:
        print(f"client: error: {exc}", file=sys.stderr)
    except Exception as exc:  # unreadable file, server down, ...
        print(f"client: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenize", help="tokenize a sound file")
    tok.add_argument("file")
    tok.add_argument("--url", default=None, help="server HOST:PORT (default localhost:8001 for "
                                                  "grpc, localhost:8000 for http)")
    tok.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    tok.add_argument("--json", default=None, metavar="OUT", help="write the tokens to OUT")
    tok.add_argument("--timing", action="store_true", help="print per-model timing on stderr")
    cl = sub.add_parser("clone", help="clone a voice: prompt recording + transcript + text -> wav")
    cl.add_argument("--prompt-wav", required=True, help="the voice to clone (any rate >= 8 kHz)")
    cl.add_argument("--prompt-text", required=True, help="what the prompt recording says")
    cl.add_argument("--text", required=True, help="what the cloned voice should say")
    cl.add_argument("-o", "--output", required=True, help="wav file to write (24 kHz)")
    cl.add_argument("--url", default=None, help="server HOST:PORT (default localhost:8001 for "
                                                 "grpc, localhost:8000 for http)")
    cl.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    cl.add_argument("--stream", action="store_true", help="clone_stream: audio in chunks (gRPC)")
    cl.add_argument("--seed", type=int, default=None, help="reproducible sampling and vocoder noise")
    cl.add_argument("--greedy", action="store_true", help="greedy LLM decoding instead of sampling")
    cl.add_argument("--max-new-tokens", type=int, default=None,
                    help="at most this many LLM audio tokens (about 42 per second of speech)")
    cl.add_argument("--timeout", type=float, default=None, help="client deadline in seconds")
    args = parser.parse_args(argv)

    if args.command == "clone":
        code, report = _call(args.prompt_wav, lambda: clone_file(args))
        if code == 0:
            print(report, file=sys.stderr)
        return code
    code, answer = _call(args.file, lambda: tokenize_file(args.file, args.url, args.protocol,
                                                           args.timing))
    if code:
        return code
    result, table = answer
    text = json.dumps(result, ensure_ascii=False)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
        print(f"{args.file}: {len(result['vq02_codes'])} vq02, {len(result['vq06_codes'])} vq06, "
              f"{len(result['merged_ids'])} merged tokens -> {args.json}", file=sys.stderr)
    else:
        print(text)
    if table:
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: tokenize a sound file on a running audio tokenizer server.

    python -m client tokenize FILE.wav [--url HOST:PORT] [--protocol grpc|http] [--json OUT]
        [--timing]

Any sample rate (from 8 kHz) and channel count soundfile reads. Prints the tokens as JSON, or
writes them to OUT; --timing adds the per-model Triton timing of this request on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .tokenizer_client import AudioTokenizerClient, TokenizerError, format_stage_times


def tokenize_file(path: str, url: str | None, protocol: str, timing: bool) -> tuple[dict, str]:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # [frames, channels]
    with AudioTokenizerClient(url, protocol) as client:
        tokens = client.tokenize(audio, rate)
        table = format_stage_times(client.stage_times()) if timing else ""
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
    args = parser.parse_args(argv)

    if not Path(args.file).is_file():
        print(f"client: error: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        result, table = tokenize_file(args.file, args.url, args.protocol, args.timing)
    except TokenizerError as exc:
        print(f"client: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # unreadable file, server down, ...
        print(f"client: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
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

"""Export the batched chunked vq02 encoder, k-means included, to ONNX, check it, write it atomically.

    python -m build_scripts.export_vq02_onnx --weights DIR [--out FILE] [--opset 17] [--force]

DIR is a tokenizer weights directory (the Paraformer directory and linguistic_tokenizer.npy).
The graph is `ChunkedEncoderQuantizer.forward` traced with the TorchScript exporter
(dynamo=False): packed features of any number of utterances plus their window plan in, codes
and encoder outputs out, every leading axis dynamic (frames, windows, output rows).

Before anything is written, onnxruntime runs the graph on several lengths and one multi-utterance
batch; its tokens must equal the PyTorch path's exactly, otherwise nothing is written. Then
FILE (default build/engines/vq02_encoder.<weights hash>.onnx) and FILE.json (metadata: weights
sha256, opset, versions, I/O contract, check results) replace any old ones, each by a rename.
An existing FILE whose metadata matches the weights, opset and exporter code is left alone
unless --force.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from build_scripts import onnx_export
from python_backends.file_io import log_stage, sha256_file
from python_backends.tokenizer.chunk_encoder import GRAPH_INPUTS, GRAPH_OUTPUTS, ChunkedEncoderQuantizer
from python_backends.settings import ALGORITHM as A
from python_backends.settings import CENTROIDS_FILE, PARAFORMER_DIR
from python_backends.tokenizer.vq02 import default_onnx_path, weights_digest

LOG = logging.getLogger("export_vq02_onnx")
FORMAT = 1
DEFAULT_OPSET = 17
# code whose changes change the exported graph: metadata written by other code is stale
CODE_SOURCES = ("python_backends/tokenizer/chunk_encoder.py", "build_scripts/export_vq02_onnx.py")
AXES = {"feats": {0: "frames"}, "pos_enc": {0: "frames"}, "window_src": {0: "windows"},
        "window_valid": {0: "windows"}, "window_prev": {0: "windows"}, "key_mask": {0: "windows"},
        "out_rows": {0: "rows"}, "codes": {0: "rows"}, "enc": {0: "rows"}}
# check cases, seconds of 16 kHz speech: singles (incl. tails under one 3840-sample chunk), one batch
CHECK_SINGLES = (0.2, 0.27, 0.9, 3.3, 10.0)
CHECK_BATCH = (0.5, 2.4, 7.1, 0.25, 1.0)
CHECK_SEED = 20  # speech seeds 20.. (tests use 0..9, the synthetic weights were fitted on 100+)


ORT_DTYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(bool)": "bool"}


class ExportCheckFailed(RuntimeError):
    """onnxruntime's tokens differ from the PyTorch path's: the file was not written."""


def _stage(name: str, **fields):
    return log_stage(LOG, name, **fields)


def is_up_to_date(onnx_path: Path, digest: str, opset: int) -> bool:
    """FILE exists with the size its metadata records, exported from these weights by this code."""
    return onnx_export.is_up_to_date(onnx_path, digest, opset,
                                     onnx_export.code_fingerprint(CODE_SOURCES), FORMAT)


def load_model(weights: Path) -> tuple[ChunkedEncoderQuantizer, object]:
    from python_backends.tokenizer.paraformer_weights import load_paraformer

    w = load_paraformer(weights / PARAFORMER_DIR)
    model = ChunkedEncoderQuantizer(w.encoder_conf, A.n_mels * A.lfr_m, np.load(weights / CENTROIDS_FILE))
    model.load_encoder_state(w.encoder_state)
    return model.eval(), w


def check_features(w) -> tuple[list[tuple[str, list[np.ndarray]]], str]:
    """Check cases as (name, [feats per utterance]): espeak-ng speech, or noise without espeak-ng."""
    from python_backends.tokenizer.fbank_frontend import ParaformerFrontend

    frontend = ParaformerFrontend(w.cmvn_shift, w.cmvn_scale, 0.0, w.frontend_conf.get("window", "hamming"))
    try:
        from build_scripts.espeak_clips import EspeakNotFound, speech_of_duration
        from python_backends.tokenizer.resample import resample

        def utterance(seconds: float, seed: int) -> np.ndarray:
            audio, rate = speech_of_duration(seconds, seed=seed)
            return frontend(resample(audio, rate, A.sample_rate))

        source = "espeak-ng"
        singles = [utterance(s, CHECK_SEED + i) for i, s in enumerate(CHECK_SINGLES)]
    except EspeakNotFound:
        rng = np.random.default_rng(CHECK_SEED)

        def utterance(seconds: float, seed: int) -> np.ndarray:  # CMVN'd features are ~N(0, 1)
            n = int(seconds * A.sample_rate / A.frame_shift_samples / A.lfr_n)
            return rng.standard_normal((n, A.n_mels * A.lfr_m)).astype(np.float32)

        source = "gaussian noise (espeak-ng not found)"
        singles = [utterance(s, 0) for s in CHECK_SINGLES]
    batch = [utterance(s, CHECK_SEED + 50 + i) for i, s in enumerate(CHECK_BATCH)]
    cases = [(f"{s:g}s", [f]) for s, f in zip(CHECK_SINGLES, singles)]
    cases.append(("batch:" + "+".join(f"{s:g}s" for s in CHECK_BATCH), batch))
    return cases, source


def run_checks(model: ChunkedEncoderQuantizer, onnx_file: Path, cases) -> list[dict]:
    """Tokens of onnxruntime vs PyTorch for each case; raises ExportCheckFailed on any difference."""
    from python_backends.onnx_runtime import onnx_session

    session = onnx_session(str(onnx_file), "cpu")
    results, failed = [], []
    for name, feats in cases:
        lengths = [len(f) for f in feats]
        inputs = model.graph_inputs(torch.from_numpy(np.concatenate(feats)), lengths)
        t0 = time.perf_counter()
        with torch.inference_mode():
            codes_pt, enc_pt = model(*(inputs[k] for k in GRAPH_INPUTS))
        t1 = time.perf_counter()
        codes_ort, enc_ort = session.run(list(GRAPH_OUTPUTS), {k: v.numpy() for k, v in inputs.items()})
        t2 = time.perf_counter()
        same = codes_ort.dtype == np.int32 and np.array_equal(codes_ort, codes_pt.numpy())
        result = {"case": name, "utterances": len(lengths), "frames": int(sum(lengths)),
                  "tokens_identical": bool(same),
                  "token_mismatches": int((codes_ort != codes_pt.numpy()).sum()),
                  "max_abs_enc_diff": float(np.abs(enc_ort - enc_pt.numpy()).max()) if sum(lengths) else 0.0,
                  "torch_ms": round(1000 * (t1 - t0), 1), "onnxruntime_ms": round(1000 * (t2 - t1), 1)}
        LOG.info("stage=check case=%s frames=%d tokens_identical=%s max_abs_enc_diff=%.2e torch_ms=%.1f "
                 "onnxruntime_ms=%.1f", name, result["frames"], same, result["max_abs_enc_diff"],
                 result["torch_ms"], result["onnxruntime_ms"])
        results.append(result)
        if not same:
            failed.append(f"{name} ({result['token_mismatches']} of {result['frames']} tokens differ)")
    if failed:
        raise ExportCheckFailed(f"{onnx_file}: onnxruntime tokens differ from PyTorch: {', '.join(failed)}")
    return results


def _pin_enc_width(onnx_file: Path, d: int) -> None:
    """The exporter's shape inference leaves enc's width symbolic; it is the model's d."""
    import onnx

    model = onnx.load(str(onnx_file))
    for value in model.graph.output:
        if value.name == "enc":
            width = value.type.tensor_type.shape.dim[1]
            width.Clear()
            width.dim_value = d
    onnx.save(model, str(onnx_file))


def io_contract(onnx_file: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def describe(args):
        return [{"name": a.name, "dtype": ORT_DTYPES.get(a.type, a.type),
                 "shape": list(a.shape)} for a in args]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def _export_locked(weights: Path, out: Path, opset: int, digest: str, per_file: dict, force: bool) -> Path:
    if not force and is_up_to_date(out, digest, opset):
        LOG.info("stage=skip seconds=0.00 out=%s weights=%s (up to date)", out, digest[:12])
        return out
    t_all = time.perf_counter()
    with _stage("load") as info:
        model, w = load_model(weights)
        info["params"] = sum(p.numel() for p in model.parameters())
        info["blocks"] = 1 + len(model.encoders)
        info["d"] = model.d
    with onnx_export.StagedExport(out) as staged:
        tmp = staged.tmp
        with _stage("export", opset=opset) as info:
            example = [np.random.default_rng(0).standard_normal((n, model.input_size)).astype(np.float32)
                       for n in (23, 41)]
            inputs = model.graph_inputs(torch.from_numpy(np.concatenate(example)), [23, 41])
            with torch.no_grad(), onnx_export.quiet_exporter():
                torch.onnx.export(model, tuple(inputs[k] for k in GRAPH_INPUTS), str(tmp),
                                  input_names=list(GRAPH_INPUTS), output_names=list(GRAPH_OUTPUTS),
                                  dynamic_axes=AXES, opset_version=opset, dynamo=False)
            _pin_enc_width(tmp, model.d)
            info["bytes"] = tmp.stat().st_size
        export_seconds = time.perf_counter() - t_all
        with _stage("features") as info:
            cases, source = check_features(w)
            info.update(source=f'"{source}"', cases=len(cases))
        with _stage("check") as info:
            checks = run_checks(model, tmp, cases)
            info["passed"] = True
        with _stage("write", out=out):
            staged.publish({
                "format": FORMAT, "model": "vq02_encoder", "exporter": "build_scripts/export_vq02_onnx.py",
                "code_fingerprint": onnx_export.code_fingerprint(CODE_SOURCES),
                "weights": {"dir": str(weights.resolve()), "sha256": digest, "files": per_file},
                "opset": opset, "torch": torch.__version__, "onnx": _version("onnx"),
                "onnxruntime": _version("onnxruntime"),
                **io_contract(tmp), "dynamic_axes": {k: v[0] for k, v in AXES.items()},
                "algorithm": {"chunk_new_frames": A.chunk_new_frames, "chunk_lookahead": A.chunk_lookahead,
                              "encoder_look_back": A.encoder_look_back},
                "encoder": {"d": model.d, "input_size": model.input_size, "blocks": 1 + len(model.encoders),
                            "heads": model.encoders0[0].heads,
                            "codebook_size": int(model.centroids.shape[0])},
                "onnx_file": {"name": out.name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)},
                "export_seconds": round(export_seconds, 2),
                "check": {"passed": True, "features": source, "cases": checks},
            })
    LOG.info("stage=done seconds=%.2f out=%s bytes=%d weights=%s", time.perf_counter() - t_all, out,
             out.stat().st_size, digest[:12])
    return out


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "absent"


def export(weights: Path, out: Path | None = None, opset: int = DEFAULT_OPSET, force: bool = False) -> Path:
    """Export, check and write the vq02 encoder ONNX for `weights` (skipped when up to date) → path."""
    weights = Path(weights)
    with _stage("hash", weights=weights) as info:
        digest, per_file = weights_digest(weights / PARAFORMER_DIR, weights / CENTROIDS_FILE)
        info["sha256"] = digest[:12]
    out = Path(out) if out is not None else default_onnx_path(digest)
    with onnx_export.locked_output(out):
        return _export_locked(weights, out, int(opset), digest, per_file, force)


def main(argv: list[str] | None = None) -> int:
    return onnx_export.main(argv, __doc__.split("\n\n")[0], ("weights", "tokenizer weights directory"),
                            "build/engines/vq02_encoder.<weights hash>.onnx", DEFAULT_OPSET, export, ExportCheckFailed, LOG)


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic Step-Audio-Tokenizer weights with the real release's architectures and file layout.

    python -m build_scripts.make_synthetic_weights --preset tiny|full --out DIR [--seed N] [--force]

writes
    DIR/dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
        config.yaml, model.pt, am.mvn, tokens.json, configuration.json   (FunASR ParaformerStreaming)
    DIR/linguistic_tokenizer.npy      float32 [1024, encoder dim]: vq02 k-means centroids
    DIR/speech_tokenizer_v1.onnx      S3 tokenizer v1 25 Hz: feats, feats_length → indices
    DIR/synthetic_weights.json        manifest (preset, seed, sizes, sha256), written last

Weights are random (seeded per tensor). am.mvn holds the fbank statistics of espeak-ng speech,
and both codebooks are k-means fitted to the model's own features of espeak-ng speech (seeds
100+, apart from the seeds 0..9 tests speak), so codes vary on speech as real ones do.
Same preset + seed → same bytes (on one machine and library set). A DIR already holding the
same preset and seed, written by the same generator code (see `generator_fingerprint`), is left
alone unless --force; a DIR holding tokenizer files without our manifest is never overwritten
without --force.
"""
from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from build_scripts import espeak_clips
from build_scripts.espeak_clips import speech_of_duration
from build_scripts.synthetic import codebooks, manifest as mf, paraformer_dir, speech_tokenizer_onnx as s3
from build_scripts.synthetic.files import atomic_open, temp_path_for
from build_scripts.synthetic.manifest import WeightsDirInUse  # noqa: F401 (re-exported: callers catch it)
from build_scripts.synthetic.presets import PRESETS, Preset, get_preset
from python_backends.file_io import log_stage
from python_backends.settings import CENTROIDS_FILE, PARAFORMER_DIR, SPEECH_TOKENIZER_FILE

LOG = logging.getLogger("synthetic_weights")
MANIFEST = "synthetic_weights.json"
FORMAT = 1
# code whose changes change the output: a manifest written by other code is not "complete"
FINGERPRINT_SOURCES = ("build_scripts/make_synthetic_weights.py", "build_scripts/espeak_clips.py",
                       "build_scripts/synthetic/paraformer_dir.py",
                       "build_scripts/synthetic/speech_tokenizer_onnx.py",
                       "build_scripts/synthetic/codebooks.py", "build_scripts/synthetic/presets.py",
                       "build_scripts/synthetic/random_init.py", "python_backends/settings.py",
                       "python_backends/tokenizer/paraformer_weights.py", "python_backends/tokenizer/fbank_frontend.py",
                       "python_backends/tokenizer/fbank_torch.py", "python_backends/tokenizer/chunk_encoder.py")
PARAFORMER_FILES = ("config.yaml", "model.pt", "am.mvn", "tokens.json", "configuration.json")
FILES = tuple(f"{PARAFORMER_DIR}/{n}" for n in PARAFORMER_FILES) + (CENTROIDS_FILE, SPEECH_TOKENIZER_FILE)
FIT_RATE = 16000


def _stage(name: str, **fields):
    return log_stage(LOG, name, **fields)


def _sub_seed(seed: int, purpose: int) -> int:
    return int(np.random.SeedSequence([int(seed), purpose]).generate_state(1)[0])


def generator_fingerprint() -> str:
    """sha256 over the generator's sources and the espeak-ng version."""
    version = subprocess.run([espeak_clips._espeak_path(), "--version"], capture_output=True,
                             check=False).stdout
    return mf.fingerprint(FINGERPRINT_SOURCES, version.strip())


def _manifest_header(preset: Preset, seed: int) -> dict:
    return {"format": FORMAT, "generator": "build_scripts/make_synthetic_weights.py",
            "generator_fingerprint": generator_fingerprint(), "preset": preset.name,
            "seed": int(seed), "preset_config": dataclasses.asdict(preset)}


def read_manifest(out: Path) -> dict | None:
    return mf.read_manifest(out, MANIFEST)


def is_complete(out: Path, preset: Preset, seed: int) -> bool:
    """DIR holds every file of `preset`/`seed` with the sizes its manifest records."""
    return mf.is_complete(out, MANIFEST, _manifest_header(preset, seed), FILES)


# ---------------------------------------------------------------- stages
def fitting_speech(preset: Preset) -> list[np.ndarray]:
    import soxr

    clips = []
    for i in range(preset.fit_clips):
        audio, rate = speech_of_duration(preset.fit_clip_seconds, seed=preset.fit_seed_base + i)
        clips.append(np.asarray(soxr.resample(audio, rate, FIT_RATE), dtype=np.float32))
    return clips


def fbank_statistics(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from python_backends.tokenizer.fbank_frontend import ParaformerFrontend

    n = paraformer_dir.N_MELS * paraformer_dir.LFR_M
    fe = ParaformerFrontend(np.zeros(n, np.float32), np.ones(n, np.float32), dither=0.0)
    fb = np.concatenate([fe.fbank(c) for c in clips]).astype(np.float64)
    return fb.mean(axis=0), np.maximum(fb.std(axis=0), 1e-3)


def fit_vq02_centroids(model_dir: Path, clips: list[np.ndarray], preset: Preset, seed: int):
    from python_backends.tokenizer.chunk_encoder import ChunkedEncoderQuantizer
    from python_backends.tokenizer.fbank_frontend import ParaformerFrontend
    from python_backends.tokenizer.paraformer_weights import load_paraformer

    w = load_paraformer(model_dir)
    fe = ParaformerFrontend(w.cmvn_shift, w.cmvn_scale, w.dither)
    feats = [fe(c) for c in clips]
    d = int(w.encoder_conf["output_size"])
    enc = ChunkedEncoderQuantizer(w.encoder_conf, paraformer_dir.INPUT_SIZE, np.zeros((1, d), np.float32))
    enc.load_encoder_state(w.encoder_state)
    enc.eval()
    _, enc_out = enc.encode(torch.from_numpy(np.concatenate(feats)), [len(f) for f in feats])
    frames = enc_out.numpy()
    centroids = codebooks.fit_kmeans(frames, preset.vq02_codes, preset.kmeans_iterations,
                                     seed=_sub_seed(seed, 2))
    return centroids, len(frames)


def fit_vq06_codebook(model: s3.SpeechTokenizerV1, clips: list[np.ndarray], preset: Preset, seed: int):
    mels = [s3.whisper_log_mel(c, preset.speech_tokenizer.n_mels) for c in clips]
    frames = s3.normalized_features(model, mels)
    codes = codebooks.fit_kmeans(frames, preset.speech_tokenizer.n_codes, preset.kmeans_iterations,
                                 seed=_sub_seed(seed, 3), spherical=True)
    s3.set_codebook(model, codes)
    return len(frames)


# ---------------------------------------------------------------- driver
def _build_locked(preset: Preset, out: Path, seed: int, force: bool) -> None:
    header = _manifest_header(preset, seed)
    if not force and is_complete(out, preset, seed):
        LOG.info("stage=skip seconds=0.00 preset=%s seed=%d out=%s (already complete)", preset.name, seed, out)
        return
    if not force:
        mf.guard_foreign_files(out, MANIFEST, FILES)
    t_all = time.perf_counter()
    mf.begin(out, MANIFEST, header)
    with _stage("speech", clips=preset.fit_clips, seconds_each=preset.fit_clip_seconds):
        clips = fitting_speech(preset)
    with _stage("am_mvn"):
        mean80, std80 = fbank_statistics(clips)
    model_dir = out / PARAFORMER_DIR
    with _stage("paraformer", dir=PARAFORMER_DIR) as info:
        state = paraformer_dir.write_paraformer_dir(model_dir, preset.paraformer, seed, mean80, std80)
        info["params"] = sum(t.numel() for t in state.values())
        del state
    with _stage("vq02_centroids") as info:
        centroids, info["frames"] = fit_vq02_centroids(model_dir, clips, preset, seed)
        with atomic_open(out / CENTROIDS_FILE) as f:
            np.save(f, centroids)
        info["shape"] = "x".join(map(str, centroids.shape))
    with _stage("vq06_codebook") as info:
        model = s3.random_model(preset.speech_tokenizer, seed)
        info["frames"] = fit_vq06_codebook(model, clips, preset, seed)
    with _stage("onnx_export", file=SPEECH_TOKENIZER_FILE) as info:
        tmp = temp_path_for(out / SPEECH_TOKENIZER_FILE)
        try:
            s3.export_onnx(model, tmp)
            tmp.replace(out / SPEECH_TOKENIZER_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        info["params"] = sum(p.numel() for p in model.parameters())
    with _stage("manifest"):
        mf.finish(out, MANIFEST, header, FILES)
    LOG.info("stage=done seconds=%.2f preset=%s seed=%d out=%s", time.perf_counter() - t_all,
             preset.name, seed, out)


def build(preset: str, out: Path, seed: int = 0, force: bool = False) -> Path:
    """Write the synthetic weights of `preset` into `out` (skipped when already complete) → out."""
    p = get_preset(preset)
    out = Path(out)
    with mf.locked(out):
        _build_locked(p, out, int(seed), force)
    return out


def main(argv: list[str] | None = None) -> int:
    return mf.main(argv, __doc__.split("\n\n")[0], PRESETS, build, LOG)


if __name__ == "__main__":
    sys.exit(main())

"""A Whisper-style S3 tokenizer v1 (25 Hz) with the real file's module hierarchy and interface.

`speech_tokenizer_v1.onnx` of CosyVoice-300M-25Hz, as Step-Audio uses it:
  inputs  feats float32 [B, 128, T] (Whisper log-mel), feats_length int32 [B]
  output  indices int64 [B, 1, T'] with T' = ceil(ceil(T / 2) / 2)
conv1 (k3, s2, p1) + GELU → conv2 (k3, s2, p1) + GELU → + positional table (1500 rows) →
pre-LN blocks (attn: query / key without bias / value / out; mlp.0 → GELU → mlp.2) →
L2-normalise → nearest unit-norm codeword of a [4096, D] codebook.

Module and parameter names follow the real graph (`encoders.conv1`, `blocks.N.attn.query`,
`blocks.N.mlp.0`, `quantizer.rq.model.layers.0._codebook`), so the ONNX node and
initializer names match it. Frames at or beyond an utterance's valid length are zeroed before
each conv and masked as attention keys, so a padded batch gives, on valid frames, the codes of
one-by-one calls. The masks are built from tensor shapes so the exported graph keeps B and T
dynamic.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .presets import SpeechTokenizerPreset
from .random_init import init_parameter

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
INPUT_NAMES = ("feats", "feats_length")
OUTPUT_NAMES = ("indices",)
DYNAMIC_AXES = {"feats": {0: "batch", 2: "frames"}, "feats_length": {0: "batch"},
                "indices": {0: "batch", 2: "tokens"}}
OPSET = 17
POSITION_SCALE = 0.05  # small table amplitude: content, not position, drives the codes


# ---------------------------------------------------------------- features (fitting only)
_MEL_FILTERS: dict[int, torch.Tensor] = {}


def _mel_filters(n_mels: int) -> torch.Tensor:
    if n_mels not in _MEL_FILTERS:
        import librosa

        _MEL_FILTERS[n_mels] = torch.from_numpy(
            librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32))
    return _MEL_FILTERS[n_mels]


def whisper_log_mel(audio: np.ndarray | torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """Whisper's log-mel of 16 kHz float32 samples → float32 [n_mels, len // 160]."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True,
                      pad_mode="reflect", return_complex=True)
    power = spec[..., :-1].abs() ** 2
    logmel = torch.clamp(_mel_filters(n_mels) @ power, min=1e-10).log10()
    logmel = torch.maximum(logmel, logmel.max() - 8.0)
    return (logmel + 4.0) / 4.0


# ---------------------------------------------------------------- model
def position_table(rows: int, channels: int) -> torch.Tensor:
    """Sinusoids over `rows` positions: first half sin, second half cos, geometric timescales."""
    half = channels // 2
    inv = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32))
    angle = torch.arange(rows, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def _time_mask(lengths: torch.Tensor, frames: torch.Tensor | int, dtype) -> torch.Tensor:
    """[B, frames] 1.0 where t < length; `frames` comes from a tensor shape (stays dynamic)."""
    return (torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def downsampled_length(lengths: torch.Tensor) -> torch.Tensor:
    """Valid frames after conv1 and conv2 (each k3, s2, p1): ceil(ceil(L / 2) / 2)."""
    return ((lengths + 1) // 2 + 1) // 2


class Encoders(nn.Module):
    def __init__(self, p: SpeechTokenizerPreset):
        super().__init__()
        self.conv1 = nn.Conv1d(p.n_mels, p.n_state, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(p.n_state, p.n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(p.n_ctx, p.n_state))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        x = feats * _time_mask(lengths, feats.shape[2], feats.dtype)[:, None, :]
        x = F.gelu(self.conv1(x))
        lengths = (lengths + 1) // 2
        x = x * _time_mask(lengths, x.shape[2], x.dtype)[:, None, :]
        x = F.gelu(self.conv2(x))
        lengths = (lengths + 1) // 2
        x = x.transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        return x, _time_mask(lengths, x.shape[1], x.dtype), lengths


class Attention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_head
        scale = (d // h) ** -0.25
        q = self.query(x).reshape(b, t, h, -1).permute(0, 2, 1, 3) * scale
        k = self.key(x).reshape(b, t, h, -1).permute(0, 2, 3, 1) * scale
        v = self.value(x).reshape(b, t, h, -1).permute(0, 2, 1, 3)
        w = torch.softmax(torch.matmul(q, k) + key_bias, dim=-1)
        return self.out(torch.matmul(w, v).permute(0, 2, 1, 3).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.attn = Attention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_bias)
        return x + self.mlp(self.mlp_ln(x))


class Codebook(nn.Module):
    def __init__(self, n_codes: int, n_state: int):
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(n_codes, n_state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed = self.embed.t()  # stored transposed [D, K] in the graph, as in the real file
        dist = -(x.pow(2).sum(-1, keepdim=True) - 2 * torch.matmul(x, embed)
                 + embed.pow(2).sum(0)[None, None, :])
        return dist.argmax(dim=-1)


class _Layer(nn.Module):
    def __init__(self, n_codes: int, n_state: int):
        super().__init__()
        self._codebook = Codebook(n_codes, n_state)

    def forward(self, x):
        return self._codebook(x)


class _Layers(nn.Module):
    def __init__(self, n_codes: int, n_state: int):
        super().__init__()
        self.layers = nn.ModuleList([_Layer(n_codes, n_state)])

    def forward(self, x):
        return self.layers[0](x)


class _Rq(nn.Module):
    def __init__(self, n_codes: int, n_state: int):
        super().__init__()
        self.model = _Layers(n_codes, n_state)

    def forward(self, x):
        return self.model(x)


class Quantizer(nn.Module):
    def __init__(self, n_codes: int, n_state: int):
        super().__init__()
        self.rq = _Rq(n_codes, n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rq(F.normalize(x, p=2.0, dim=-1))


class SpeechTokenizerV1(nn.Module):
    def __init__(self, p: SpeechTokenizerPreset):
        super().__init__()
        self.preset = p
        self.encoders = Encoders(p)
        self.blocks = nn.ModuleList([Block(p.n_state, p.n_head, p.n_mlp) for _ in range(p.n_layer)])
        self.quantizer = Quantizer(p.n_codes, p.n_state)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.rq.model.layers[0]._codebook.embed

    def encode(self, feats: torch.Tensor, feats_length: torch.Tensor):
        """→ pre-quantiser features [B, T', D] and valid lengths [B] int64."""
        x, keep, lengths = self.encoders(feats, feats_length.to(torch.int64))
        key_bias = ((1.0 - keep) * -1.0e10)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_bias)
        return x, lengths

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        x, _ = self.encode(feats, feats_length)
        return self.quantizer(x).unsqueeze(1)


def random_model(p: SpeechTokenizerPreset, seed: int) -> SpeechTokenizerV1:
    """Random weights drawn per tensor name; positional table = scaled sinusoids; codebook
    left at zero until `set_codebook`."""
    model = SpeechTokenizerV1(p).eval()
    norm_params = {f"{mod_name}.{n}" for mod_name, mod in model.named_modules()
                   if isinstance(mod, nn.LayerNorm) for n, _ in mod.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_codebook.embed"):
                continue
            param.copy_(init_parameter(seed, f"speech_tokenizer/{name}", param.shape,
                                       name in norm_params))
        model.encoders.positional_embedding.copy_(position_table(p.n_ctx, p.n_state) * POSITION_SCALE)
    return model


def set_codebook(model: SpeechTokenizerV1, codes: np.ndarray) -> None:
    c = torch.nn.functional.normalize(torch.as_tensor(codes, dtype=torch.float32), dim=1)
    if tuple(c.shape) != tuple(model.codebook.shape):
        raise ValueError(f"codebook must be {tuple(model.codebook.shape)}, got {tuple(c.shape)}")
    with torch.no_grad():
        model.codebook.copy_(c)


@torch.inference_mode()
def normalized_features(model: SpeechTokenizerV1, mels: list[torch.Tensor]) -> np.ndarray:
    """L2-normalised pre-quantiser frames of each log-mel [128, T] (one call each) → [N, D]."""
    out = []
    for mel in mels:
        x, lengths = model.encode(mel[None], torch.tensor([mel.shape[1]], dtype=torch.int32))
        out.append(F.normalize(x[0, : int(lengths[0])], dim=-1))
    return torch.cat(out).numpy()


def export_onnx(model: SpeechTokenizerV1, path: Path) -> None:
    p = model.preset
    lengths = torch.tensor([160, 131], dtype=torch.int32)
    feats = torch.randn(2, p.n_mels, 160, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (feats, lengths), str(path), input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=DYNAMIC_AXES,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)

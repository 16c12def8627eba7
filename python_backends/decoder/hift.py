"""HiFT vocoder (HiFTNet: neural source filter + iSTFT), 80-bin mel at 50 Hz → 24 kHz waveform
(EditX `stepvocoder/cosyvoice2/hifigan/generator.py`, spec §3.2-3.3 step 5). Our own code.

Module and parameter names equal the release's `hift.pt`: weight-normed convs store
`<conv>.parametrizations.weight.original0` (g) and `.original1` (v), as torch's parametrized
`weight_norm` names them (the layout EditX's file has); files in the older `weight_g` /
`weight_v` layout load too. Weight norm is folded into plain weights after loading.

Computation per request (T mel frames, upsampling 8·5·3 = 120 frames, iSTFT hop 4 → 480·T
samples):
  f0 = |Linear(5 × (Conv k3 + ELU)(mel))|                                    ConvRNNF0Predictor
  source (SourceModuleHnNSF2): f0 repeated ×480; harmonics k·f0 (k = 1..9), phase increments
    (k·f0/sr mod 1) with a random initial phase added at t = 0 (harmonics 2..9), linearly
    resampled to 1/480, cumulated, ×480 and linearly resampled back, sin·0.1; voiced where
    f0 > threshold; Gaussian noise (σ 0.003 voiced, 0.1/3 unvoiced) added; tanh(Linear(9 → 1)).
    (Upstream's downsampling reads samples 480j+239/240 only, so the random initial phase,
    drawn anyway, never reaches the output.)
  STFT of the source (n_fft 16, hop 4, centred, reflect) → 18 channels at 120·T + 1 frames.
  mel → conv_pre → per level: leaky ReLU, transposed conv (last level: reflect pad 1 left),
    + source_downs(stft) → source ResBlock, mean of the level's ResBlocks (Snake activations);
    leaky ReLU (slope 0.01, torch's default, as upstream) → conv_post → log-magnitude (exp,
    ≤ 100) and phase (sin) → iSTFT → clamp ±audio_limit.

Randomness: each request draws from its own CPU `torch.Generator` (a seed or a generator per
request), so a request's waveform does not depend on the batch it runs in or the device. The
draws are the ones upstream's SineGen2 makes for a batch of one from the global CPU generator
after `torch.manual_seed(seed)`, so the same seed gives the same numbers: `rand(1, 9)` for the
initial phases, then `randn_like` of the sine waves, a [1, 480·T, 9] transposed view stored as
[1, 9, 480·T]. torch fills a non-contiguous tensor element by element in memory order (its
contiguous `randn` uses another algorithm), so the noise is drawn into that same layout
(`SourceModule.draw`; ≈15 ms of one CPU core per second of audio, 3× a contiguous
`randn`). Upstream's last draw, `randn_like(uv)`, is never used and not made here.
On CUDA upstream draws from the CUDA generator instead.

Batching (`hift_inference`): f0 is predicted per request (a 1-ulp f0 difference from a batched
conv becomes a phase error proportional to the utterance length: ~1e-4 after 0.6 s, worse on long
speech); everything else runs padded to the longest request. Every conv output is zeroed
past the request's own length at that resolution (so a later conv sees zeros there, as zero
padding alone), the source is reflect-padded at each request's own end before its STFT, the
source phase is held at its last valid frame before upsampling, and the iSTFT divides by each
request's own window envelope. `reference_hift` is the plain batch-1 computation (torch.stft /
torch.istft on unpadded tensors) the tests compare against.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from .cosyvoice_yaml import CLASS_KEY
from .prompt_mel import reflect_pad_rows

HIFT_CLASS = "HiFTGenerator"
F0_PREDICTOR_CLASS = "ConvRNNF0Predictor"
SNAKE_EPS = 1e-9
MAGNITUDE_CLIP = 1e2
ENVELOPE_FLOOR = 1e-11  # torch.istft refuses windows whose overlap-added square is below this
FINAL_LRELU_SLOPE = 0.01  # upstream calls F.leaky_relu(x) without its configured slope here
LEGACY_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0",
                      "weight_v": "parametrizations.weight.original1"}
Randomness = int | torch.Generator


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def _length_mask(lengths: torch.Tensor | None, size: int, like: torch.Tensor
                 ) -> torch.Tensor | None:
    """[B, 1, size] 1 where t < length, in `like`'s dtype/device (None: no batching mask)."""
    if lengths is None:
        return None
    t = torch.arange(size, device=like.device)
    return (t[None, :] < lengths.to(like.device)[:, None]).to(like.dtype)[:, None, :]


class Snake(nn.Module):
    """x + sin²(αx)/α per channel (α stored as `alpha`, linear scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + torch.sin(x * alpha).pow(2) / (alpha + SNAKE_EPS)


class ResBlock(nn.Module):
    """Per dilation d: x += conv_k(Snake(conv_{k,d}(Snake(x)))), 'same' padding."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                  padding=d * (kernel_size - 1) // 2)) for d in dilations)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2))
            for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1,
                                            self.activations2):
            xt = _masked(conv1(act1(x)), mask)
            x = x + _masked(conv2(act2(xt)), mask)
        return x


class ConvRNNF0Predictor(nn.Module):
    """mel [B, 80, T] → f0 [B, T] ≥ 0. `condnet` interleaves convs and ELUs (indices 0, 2, …, 8
    hold the weights, as in the release)."""

    def __init__(self, num_class: int = 1, in_channels: int = 80, cond_channels: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [weight_norm(nn.Conv1d(in_channels if i == 0 else cond_channels,
                                             cond_channels, kernel_size=3, padding=1)), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.abs(self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1))


class SourceModule(nn.Module):
    """Harmonic-plus-noise excitation from f0 (SourceModuleHnNSF2); only `l_linear` is learnt."""

    def __init__(self, sampling_rate: int, upsample_scale: int, harmonic_num: int,
                 sine_amp: float, noise_std: float, voiced_threshold: float):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.upsample_scale = upsample_scale
        self.harmonics = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def draw(self, randomness: Randomness, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One request's random initial phases [1, H] (first harmonic 0) and noise [1, L, H],
        the numbers upstream's `rand` and `randn_like(sine_waves)` draw for the same seed."""
        gen = randomness if isinstance(randomness, torch.Generator) else \
            torch.Generator().manual_seed(int(randomness))
        phases = torch.rand(1, self.harmonics, generator=gen)
        phases[:, 0] = 0
        samples = frames * self.upsample_scale
        sine_layout = torch.empty(1, self.harmonics, samples).transpose(1, 2)
        return phases, torch.randn_like(sine_layout, generator=gen)

    def forward(self, f0: torch.Tensor, phases: torch.Tensor, noise: torch.Tensor,
                frames: torch.Tensor | None = None) -> torch.Tensor:
        """f0 [B, T] (Hz, float32), phases [B, H], noise [B, 480·T, H] → source [B, 480·T].
        `frames` (valid T per request) holds each request's phase at its last frame."""
        scale = self.upsample_scale
        f0_up = F.interpolate(f0[:, None], scale_factor=scale, mode="nearest").transpose(1, 2)
        orders = torch.arange(1, self.harmonics + 1, device=f0.device, dtype=f0.dtype)
        increments = (f0_up * orders / self.sampling_rate) % 1
        increments[:, 0, :] = increments[:, 0, :] + phases
        increments = F.interpolate(increments.transpose(1, 2), scale_factor=1 / scale,
                                   mode="linear").transpose(1, 2)
        phase = torch.cumsum(increments, dim=1) * 2 * math.pi
        if frames is not None:
            t = torch.arange(phase.shape[1], device=f0.device)[None, :, None]
            last = (frames.to(f0.device) - 1)[:, None, None].expand(-1, 1, self.harmonics)
            phase = torch.where(t < frames.to(f0.device)[:, None, None], phase,
                                phase.gather(1, last))
        phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale,
                              mode="linear").transpose(1, 2)
        uv = (f0_up > self.voiced_threshold).to(f0.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        waves = torch.sin(phase) * self.sine_amp * uv + noise_amp * noise
        weight, bias = self.l_linear.weight.float(), self.l_linear.bias.float()
        return torch.tanh(F.linear(waves, weight, bias)).squeeze(-1)


class HiFTGenerator(nn.Module):
    """The vocoder; constructor arguments are the `hift` section of cosyvoice.yaml."""

    def __init__(self, in_channels: int = 80, base_channels: int = 512, nb_harmonics: int = 8,
                 sampling_rate: int = 24000, nsf_alpha: float = 0.1, nsf_sigma: float = 0.003,
                 nsf_voiced_threshold: float = 10, upsample_rates: Sequence[int] = (8, 5, 3),
                 upsample_kernel_sizes: Sequence[int] = (16, 11, 7),
                 istft_params: dict | None = None,
                 resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
                 resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5),) * 3,
                 source_resblock_kernel_sizes: Sequence[int] = (7, 7, 11),
                 source_resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5),) * 3,
                 lrelu_slope: float = 0.1, audio_limit: float = 0.99,
                 f0_predictor: ConvRNNF0Predictor | None = None):
        super().__init__()
        istft_params = istft_params or {"n_fft": 16, "hop_len": 4}
        self.n_fft = int(istft_params["n_fft"])
        self.hop = int(istft_params["hop_len"])
        self.sampling_rate = int(sampling_rate)
        self.lrelu_slope = float(lrelu_slope)
        self.audio_limit = float(audio_limit)
        self.upsample_rates = [int(u) for u in upsample_rates]
        self.samples_per_frame = int(np.prod(self.upsample_rates)) * self.hop
        self.num_kernels = len(resblock_kernel_sizes)
        self.m_source = SourceModule(self.sampling_rate, self.samples_per_frame, int(nb_harmonics),
                                     float(nsf_alpha), float(nsf_sigma), float(nsf_voiced_threshold))
        self.conv_pre = weight_norm(nn.Conv1d(in_channels, base_channels, 7, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(base_channels // 2 ** i, base_channels // 2 ** (i + 1),
                                           k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(self.upsample_rates, upsample_kernel_sizes)))
        spec_channels = self.n_fft + 2
        down_rates = np.cumprod([1] + self.upsample_rates[::-1][:-1])[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(zip(down_rates, source_resblock_kernel_sizes,
                                          source_resblock_dilation_sizes)):
            ch, u = base_channels // 2 ** (i + 1), int(u)
            self.source_downs.append(nn.Conv1d(spec_channels, ch, 1) if u == 1 else
                                     nn.Conv1d(spec_channels, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, int(k), d))
        self.resblocks = nn.ModuleList(
            ResBlock(base_channels // 2 ** (i + 1), int(k), d)
            for i in range(len(self.ups))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes))
        self.conv_post = weight_norm(nn.Conv1d(base_channels // 2 ** len(self.ups), spec_channels,
                                               7, padding=3))
        self.f0_predictor = f0_predictor if f0_predictor is not None else ConvRNNF0Predictor()

    @property
    def window(self) -> torch.Tensor:
        """The (i)STFT's periodic Hann window, float32 whatever the model dtype."""
        return torch.hann_window(self.n_fft, device=self.conv_pre.bias.device)

    def decode_frames(self, mel: torch.Tensor, s_stft: torch.Tensor,
                      frames: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, 80, T], source STFT [B, n_fft+2, 120·T+1] → [B, n_fft+2, 120·T+1]
        (log-magnitude rows, then phase rows). `frames`: valid T per request (batching masks)."""
        x = _masked(self.conv_pre(mel), _length_mask(frames, mel.shape[2], mel))
        scale = 1
        for i, up in enumerate(self.ups):
            scale *= self.upsample_rates[i]
            x = up(F.leaky_relu(x, self.lrelu_slope))
            last = i == len(self.ups) - 1
            if last:
                x = F.pad(x, (1, 0), mode="reflect")
            mask = _length_mask(None if frames is None else frames * scale + int(last),
                                x.shape[2], x)
            x = _masked(x, mask)
            source = _masked(self.source_downs[i](s_stft), mask)
            x = x + self.source_resblocks[i](source, mask)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(block(x, mask) for block in blocks) / self.num_kernels
        return self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))

    def spectrum(self, frames_out: torch.Tensor) -> torch.Tensor:
        """decode_frames output → complex [B, n_fft/2+1, F] (float32)."""
        bins = self.n_fft // 2 + 1
        magnitude = torch.clamp(torch.exp(frames_out[:, :bins].float()), max=MAGNITUDE_CLIP)
        phase = torch.sin(frames_out[:, bins:].float())
        return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-norm parametrization by its computed weight (inference only)."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
    return module


def _class_name(section: dict, what: str, expected: str) -> None:
    name = str(section.get(CLASS_KEY, ""))
    if name.rsplit(".", 1)[-1] != expected:
        raise ValueError(f"cosyvoice.yaml: {what} is {name or 'missing its class'}, "
                         f"expected a {expected}")


def build_hift(hift_kwargs: dict) -> HiFTGenerator:
    """The parsed `hift` section ({"__class__": ….HiFTGenerator, …, "f0_predictor": {…}}) →
    an untrained HiFTGenerator with weight-norm parametrizations (the hift.pt key layout)."""
    _class_name(hift_kwargs, "hift", HIFT_CLASS)
    f0_kwargs = dict(hift_kwargs.get("f0_predictor") or {})
    _class_name(f0_kwargs, "hift.f0_predictor", F0_PREDICTOR_CLASS)
    f0_kwargs.pop(CLASS_KEY)
    kwargs = {k: v for k, v in hift_kwargs.items() if k not in (CLASS_KEY, "f0_predictor")}
    try:
        return HiFTGenerator(**kwargs, f0_predictor=ConvRNNF0Predictor(**f0_kwargs))
    except TypeError as e:  # a key our classes do not take
        raise ValueError(f"cosyvoice.yaml: hift section: {e}") from None


def _modern_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`x.weight_g` / `x.weight_v` (torch.nn.utils.weight_norm files) → parametrization names."""
    out = {}
    for name, tensor in state.items():
        prefix, _, leaf = name.rpartition(".")
        out[f"{prefix}.{LEGACY_WEIGHT_NORM[leaf]}" if leaf in LEGACY_WEIGHT_NORM else name] = tensor
    return out


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append("wrong shapes: " + ", ".join(shapes))
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))


def load_hift(path: str | Path, hift_kwargs: dict, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> HiFTGenerator:
    """hift.pt + the parsed `hift` yaml section → an eval-mode HiFTGenerator on device/dtype
    with weight norm folded."""
    model = build_hift(hift_kwargs)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: name it
        raise ValueError(f"cannot read the HiFT weights {path}: {exc}") from exc
    state = _modern_names(state)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return fold_weight_norm(model).to(device=device, dtype=dtype).eval()


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """[B, F, n] frames → [B, n + hop·(F−1)] summed where they overlap."""
    n = frames.shape[2]
    length = n + hop * (frames.shape[1] - 1)
    return F.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, n),
                  stride=(1, hop))[:, 0, 0]


def _check_batch(hift: HiFTGenerator, mel: torch.Tensor, mel_lens, randomness, who: str
                 ) -> list[int]:
    lens = [int(n) for n in (mel_lens.tolist() if torch.is_tensor(mel_lens) else mel_lens)]
    if len(lens) != mel.shape[0] or len(randomness) != mel.shape[0]:
        raise ValueError(f"{who}: {mel.shape[0]} mels, {len(lens)} lengths, "
                         f"{len(randomness)} seeds")
    if min(lens) < 1 or max(lens) > mel.shape[2]:
        raise ValueError(f"{who}: mel lengths {lens} outside 1..{mel.shape[2]}")
    return lens


def masked_mel(hift: HiFTGenerator, mel: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """mel [B, 80, ≥T_max] → [B, 80, T_max] on the model's device/dtype, zero past each length."""
    param = next(hift.parameters())
    mel = mel[:, :, :max(lens)].to(device=param.device, dtype=param.dtype)
    return _masked(mel, _length_mask(torch.tensor(lens, device=param.device), mel.shape[2], mel))


def batched_source(hift: HiFTGenerator, mel: torch.Tensor, lens: list[int],
                   randomness: Sequence[Randomness]) -> torch.Tensor:
    """Masked mel [B, 80, T_max] (masked_mel) → NSF source [B, 480·T_max] float32; each
    request's draws come from its own seed or generator (a generator continues)."""
    device = mel.device
    width, spf = max(lens), hift.samples_per_frame
    frames = torch.tensor(lens, device=device)
    # f0 per request: the source phase integrates f0 over the whole utterance, so the last-bit
    # differences a batched conv may make would grow into audible phase differences
    f0 = torch.zeros(len(lens), width, device=device)
    for i, n in enumerate(lens):
        f0[i, :n] = hift.f0_predictor(mel[i:i + 1, :, :n])[0].float()
    src = hift.m_source
    phases = torch.zeros(len(lens), src.harmonics)
    noise = torch.zeros(len(lens), width * spf, src.harmonics)
    for i, (n, r) in enumerate(zip(lens, randomness)):
        phases[i:i + 1], noise[i:i + 1, :n * spf] = src.draw(r, n)
    return src(f0, phases.to(device), noise.to(device), frames)


def decode_source(hift: HiFTGenerator, mel: torch.Tensor, source: torch.Tensor,
                  lens: list[int]) -> torch.Tensor:
    """Masked mel + source [B, 480·T_max] → waveform [B, 480·T_max] (zero past each end)."""
    device, dtype = mel.device, mel.dtype
    width, spf = max(lens), hift.samples_per_frame
    frames = torch.tensor(lens, device=device)
    pad = hift.n_fft // 2
    window = hift.window
    padded = reflect_pad_rows(source, frames * spf, pad)
    spec = torch.stft(padded, hift.n_fft, hift.hop, hift.n_fft, window=window,
                      center=False, return_complex=True)
    stft_frames = frames * (spf // hift.hop) + 1
    stft_mask = _length_mask(stft_frames, spec.shape[2], spec.real)
    s_stft = torch.cat([spec.real, spec.imag], dim=1) * stft_mask
    # requests of equal length need no masks in the conv stack (≈6 % of its time on the CPU)
    out = hift.decode_frames(mel, s_stft.to(dtype), None if min(lens) == width else frames)

    spectrum = hift.spectrum(out) * stft_mask
    signal = torch.fft.irfft(spectrum.transpose(1, 2), n=hift.n_fft) * window
    envelope = _overlap_add(stft_mask.transpose(1, 2) * window.pow(2), hift.hop)
    summed = _overlap_add(signal, hift.hop)
    samples = width * spf
    envelope = envelope[:, pad:pad + samples]
    valid = _length_mask(frames * spf, samples, envelope)[:, 0] * (envelope > ENVELOPE_FLOOR)
    wave = summed[:, pad:pad + samples] / torch.where(valid > 0, envelope, 1.0) * valid
    return torch.clamp(wave, -hift.audio_limit, hift.audio_limit)


@torch.inference_mode()
def hift_inference(hift: HiFTGenerator, mel: torch.Tensor, mel_lens: Sequence[int] | torch.Tensor,
                   randomness: Sequence[Randomness]) -> tuple[torch.Tensor, list[int]]:
    """Batched vocoder. mel [B, 80, T_max] (frames past each length ignored), one seed or CPU
    generator per request → float32 waveform [B, 480·T_max] on the model's device (zero past
    each request's end) and each length 480·T_i. Each request equals running it alone."""
    lens = _check_batch(hift, mel, mel_lens, randomness, "hift_inference")
    mel = masked_mel(hift, mel, lens)
    source = batched_source(hift, mel, lens, randomness)
    return decode_source(hift, mel, source, lens), [n * hift.samples_per_frame for n in lens]


@torch.inference_mode()
def reference_hift(hift: HiFTGenerator, mel: torch.Tensor, randomness: Randomness) -> torch.Tensor:
    """Plain batch-1 vocoder (upstream's order of operations, torch.stft / torch.istft, no
    masks): mel [80, T] or [1, 80, T] → float32 waveform [480·T]."""
    param = next(hift.parameters())
    mel = mel.reshape(1, mel.shape[-2], mel.shape[-1]).to(param.device, param.dtype)
    f0 = hift.f0_predictor(mel).float()
    phases, noise = hift.m_source.draw(randomness, mel.shape[2])
    source = hift.m_source(f0, phases.to(param.device), noise.to(param.device))
    spec = torch.stft(source, hift.n_fft, hift.hop, hift.n_fft, window=hift.window,
                      return_complex=True)
    s_stft = torch.cat([spec.real, spec.imag], dim=1).to(param.dtype)
    spectrum = hift.spectrum(hift.decode_frames(mel, s_stft))
    wave = torch.istft(spectrum, hift.n_fft, hift.hop, hift.n_fft, window=hift.window)
    return torch.clamp(wave, -hift.audio_limit, hift.audio_limit)[0]

"""The original code's decisive arithmetic, written out here independently of ours, against our
implementation: HiFT's random source (Step-Audio-EditX `SineGen2`), torchaudio's resampler (both
ways the original calls it) and EditX's prompt peak cap. Each is checked with 0 difference on
this torch (2.13 CPU), and against literals computed once from the original's formula, so a
change on either side shows. No server, no weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly
from torch.nn import functional as F

from build_scripts.espeak_clips import speech_of_duration
from python_backends.decoder.hift import SourceModule
from python_backends.decoder.prompt_audio import prompt_audio
from python_backends.settings import EditxSettings
from python_backends.tokenizer.resample import FUNCTIONAL, TRANSFORM, _kernel, resample

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---- HiFT's random source ---------------------------------------------------------------------

def upstream_source_draws(seed: int, harmonics: int, samples: int, scale: int,
                          sampling_rate: int = 24000) -> tuple[torch.Tensor, torch.Tensor]:
    """SineGen2.forward's random draws for a batch of one after `torch.manual_seed(seed)`, by
    its own calls: `rand` for the initial phases, then `randn_like` of the sine waves, which
    are a transposed interpolation output (f0 is a constant 120 Hz: only the layout counts)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        f0 = torch.full((1, samples, 1), 120.0)
        fn = torch.multiply(f0, torch.FloatTensor([[range(1, harmonics + 1)]]))
        rad_values = (fn / sampling_rate) % 1
        rand_ini = torch.rand(fn.shape[0], fn.shape[2])
        rand_ini[:, 0] = 0
        rad_values[:, 0, :] = rad_values[:, 0, :] + rand_ini
        rad_values = F.interpolate(rad_values.transpose(1, 2), scale_factor=1 / scale,
                                   mode="linear").transpose(1, 2)
        phase = torch.cumsum(rad_values, dim=1) * 2 * np.pi
        phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale,
                              mode="linear").transpose(1, 2)
        sine_waves = torch.sin(phase) * 0.1
        return rand_ini, torch.randn_like(sine_waves)


def source(scale: int) -> SourceModule:
    return SourceModule(24000, scale, harmonic_num=8, sine_amp=0.1, noise_std=0.003,
                        voiced_threshold=10)


def test_hift_draw_is_upstreams_literal_numbers():
    """seed 0, 9 harmonics, 12 samples: values printed once from upstream_source_draws."""
    phases, noise = source(12).draw(0, frames=1)
    assert phases.tolist() == [[0.0, 0.7682217955589294, 0.08847743272781372, 0.13203048706054688,
                                0.30742281675338745, 0.6340786814689636, 0.4900934100151062,
                                0.8964447379112244, 0.455627977848053]]
    assert noise.shape == (1, 12, 9)
    # memory order is harmonic-major: the first numbers drawn are harmonic 0 over time
    assert noise[0, :4, 0].tolist() == [0.6472479701042175, 0.24900221824645996,
                                        -0.33539512753486633, 0.45635277032852173]
    assert noise[0, 0, :4].tolist() == [0.6472479701042175, 0.4153595268726349,
                                        1.8739570379257202, -0.13295190036296844]
    assert noise[0, 11, 8].item() == -0.13099345564842224
    _, real = source(480).draw(0, frames=1)  # HiFT's 480 samples per frame
    assert real[0, 0, :3].tolist() == [0.6472479701042175, 0.7602527737617493, 0.9178932905197144]
    assert real[0, 479, 8].item() == 0.39580169320106506


@pytest.mark.parametrize("seed,frames", [(0, 1), (7, 3), (123456789, 11)])
def test_hift_draw_equals_upstreams_calls(seed, frames):
    phases, noise = source(480).draw(seed, frames)
    want_phases, want_noise = upstream_source_draws(seed, 9, frames * 480, 480)
    assert torch.equal(phases, want_phases) and torch.equal(noise, want_noise)
    again = source(480).draw(torch.Generator().manual_seed(seed), frames)
    assert torch.equal(again[1], noise)


# ---- torchaudio's resampler -------------------------------------------------------------------

def torchaudio_kernel(orig: int, new: int, dtype: torch.dtype | None
                      ) -> tuple[torch.Tensor, int]:
    """`_get_sinc_resample_kernel(orig, new, gcd=1, 6, 0.99, "sinc_interp_hann", dtype=dtype)`
    as torchaudio writes it: dtype float32 is `functional.resample` on float32 audio, None is
    `transforms.Resample`'s cached kernel."""
    lowpass_filter_width, rolloff = 6, 0.99
    base_freq = min(orig, new)
    base_freq *= rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx_dtype = dtype if dtype is not None else torch.float64
    idx = torch.arange(-width, width + orig, dtype=idx_dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    if dtype is None:
        kernels = kernels.to(dtype=torch.float32)
    return kernels, width


def torchaudio_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int,
                        dtype: torch.dtype | None) -> torch.Tensor:
    """`_apply_sinc_resample_kernel` as torchaudio writes it."""
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    kernel, width = torchaudio_kernel(orig, new, dtype)
    shape = waveform.size()
    waveform = waveform.view(-1, shape[-1])
    num_wavs, length = waveform.shape
    waveform = F.pad(waveform, (width, width + orig))
    resampled = F.conv1d(waveform[:, None], kernel, stride=orig)
    resampled = resampled.transpose(1, 2).reshape(num_wavs, -1)
    target_length = torch.ceil(torch.as_tensor(new * length / orig)).long()
    resampled = resampled[..., :target_length]
    return resampled.view(shape[:-1] + resampled.shape[-1:])


STYLES = [(FUNCTIONAL, torch.float32), (TRANSFORM, None)]


@pytest.fixture(scope="module")
def speech() -> dict[int, np.ndarray]:
    """espeak speech at 22.05 kHz and (scipy's polyphase filter, not ours) at 44.1 kHz."""
    audio, rate = speech_of_duration(3.0, seed=11)
    audio = (audio * (0.9 / np.abs(audio).max())).astype(np.float32)
    return {rate: audio, 2 * rate: resample_poly(audio, 2, 1).astype(np.float32)}


@pytest.mark.parametrize("arithmetic,dtype", STYLES)
@pytest.mark.parametrize("orig,new", [(22050, 16000), (22050, 24000), (44100, 16000),
                                      (44100, 24000)])
def test_resample_is_torchaudios_bit_for_bit(speech, arithmetic, dtype, orig, new):
    audio = speech[orig]
    want = torchaudio_resample(torch.from_numpy(audio), orig, new, dtype).numpy()
    got = resample(audio, orig, new, arithmetic)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("arithmetic,dtype", STYLES)
@pytest.mark.parametrize("orig,new", [(48000, 24000), (16000, 24000), (8000, 16000),
                                      (24000, 16000)])
def test_resample_other_rates_are_torchaudios(speech, arithmetic, dtype, orig, new):
    audio = resample_poly(speech[22050][:30000], orig // 50, 441).astype(np.float32)  # to orig
    want = torchaudio_resample(torch.from_numpy(audio), orig, new, dtype).numpy()
    assert np.array_equal(resample(audio, orig, new, arithmetic), want)


@pytest.mark.parametrize("arithmetic,dtype", STYLES)
def test_resample_kernel_is_torchaudios(arithmetic, dtype):
    for orig, new in [(441, 320), (147, 160), (441, 640), (3, 2), (2, 1), (1, 2), (3, 1)]:
        kernel, width = _kernel(orig, new, arithmetic)
        want, want_width = torchaudio_kernel(orig, new, dtype)
        assert width == want_width and kernel.dtype == torch.float32
        assert torch.equal(kernel, want), (orig, new)


# (orig, new, output phase, tap): (functional, transforms) values printed once from
# torchaudio_kernel; the last of each ratio is where the two styles differ most
KERNEL_LITERALS = [
    (441, 320, 0, 9, 0.718367338180542, 0.718367338180542),
    (441, 320, 160, 230, 0.5702582597732544, 0.5702614188194275),
    (441, 320, 296, 416, 0.29020917415618896, 0.2902182936668396),
    (147, 160, 0, 7, 0.9900000095367432, 0.9900000095367432),
    (147, 160, 104, 102, 0.5615421533584595, 0.5615364909172058),
]


@pytest.mark.parametrize("orig,new,phase,tap,functional,transform", KERNEL_LITERALS)
def test_resample_kernel_literals(orig, new, phase, tap, functional, transform):
    assert _kernel(orig, new, FUNCTIONAL)[0][phase, 0, tap].item() == functional
    assert _kernel(orig, new, TRANSFORM)[0][phase, 0, tap].item() == transform


def test_resample_length_is_torchaudios_float32_ceiling(speech):
    """320·200101/441 = 145198.0045…: float32 rounds it to 145198, whose ceiling torchaudio
    takes, one sample short of the exact ceiling."""
    audio = np.tile(speech[22050], 4)[:200101]
    assert len(resample(audio, 22050, 16000)) == 145198 == math.ceil(320 * 200101 / 441) - 1
    want = torchaudio_resample(torch.from_numpy(audio), 22050, 16000, torch.float32).numpy()
    assert np.array_equal(resample(audio, 22050, 16000), want)


def test_resample_refuses_an_unknown_arithmetic():
    with pytest.raises(ValueError, match="resample arithmetic 'float64'"):
        resample(np.zeros(100, np.float32), 22050, 16000, "float64")


# ---- the prompt's peak cap --------------------------------------------------------------------

@pytest.mark.parametrize("gain", [0.6000001, 0.93, 1.7, 3.3])
def test_prompt_peak_cap_is_editx_order(speech, gain):
    audio = (speech[22050] * (gain / np.abs(speech[22050]).max())).astype(np.float32)
    prompt_wav = torch.from_numpy(audio)[None]
    norm = torch.max(torch.abs(prompt_wav), dim=1, keepdim=True)[0]
    want = (prompt_wav / norm * 0.6)[0].numpy()  # tts.py preprocess_prompt_wav
    got = prompt_audio(audio, 22050, 1, EditxSettings("x"))
    assert np.array_equal(got, want)
    assert not np.array_equal(got, (audio * np.float32(0.6 / float(norm))).astype(np.float32))

"""The CosyVoice flow of Step-Audio-EditX (`CausalMaskedDiffWithXvec`): token rows → 50 Hz mel.

`load_flow` builds the modules from `cosyvoice.yaml`, loads `flow.pt` (the release's state dict,
strict) and the start-noise buffer; `flow_inference` runs a batch of requests, each equal to
running it alone (step_audio_internals.md §3.3):

1. rows = prompt rows ‖ generated rows; embed both columns; encode (×2 upsampling) → mu (80 ch).
2. cond = the prompt mel on the prompt frames, 0 elsewhere; speaker = affine(L2-normalised x-vector).
3. Euler, 10 steps on t_k = 1 − cos(π/2·k/10), from the fixed noise buffer's first frames; each
   step runs the DiT once on 2B rows, (x, mu, spk, cond) and (x, 0, 0, 0), and moves along
   v = (1 + r)·v_cond − r·v_uncond (r = 0.7).
4. Drop the prompt frames.

The noise buffer. Upstream draws it (`randn(1, 80, 30000)`, a non-persistent buffer, so not in
`flow.pt`) when the model is built, from whatever the global RNG state is then. To reproduce a
real deployment, dump that buffer once from a reference process as `flow_noise.npy` (float32
[1, 80, 30000]) next to `flow.pt`; the synthetic generator ships its own.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..settings import DECODER
from .cosyvoice_yaml import class_name, load_cosyvoice_yaml
from .flow_dit import DiT, DiTConfig
from .flow_encoder import DualCodebookEmbedding, EncoderConfig, UpsampleConformerEncoderV2

COSYVOICE_YAML_FILE = "cosyvoice.yaml"
FLOW_FILE = "flow.pt"
FLOW_NOISE_FILE = "flow_noise.npy"


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 5121
    cfg_rate: float = DECODER.cfg_rate
    encoder: EncoderConfig = EncoderConfig()
    estimator: DiTConfig = DiTConfig()


class CausalConditionalCFM(nn.Module):
    """Holds the estimator under the release's name (`decoder.estimator.*`)."""

    def __init__(self, estimator: DiT):
        super().__init__()
        self.estimator = estimator


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = DualCodebookEmbedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoderV2(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = CausalConditionalCFM(DiT(cfg.estimator))

    @property
    def up_rate(self) -> int:
        return self.encoder.up_layer.stride


@dataclasses.dataclass
class LoadedFlow:
    model: CausalMaskedDiffWithXvec
    noise: torch.Tensor  # [1, 80, N] start-noise buffer, model dtype and device


# ---------------------------------------------------------------- config from cosyvoice.yaml

_ENCODER_FIXED = {"input_layer": "linear", "pos_enc_layer_type": "rel_pos_espnet",
                  "selfattention_layer_type": "rel_selfattn", "normalize_before": True,
                  "activation_type": "swish"}


def _expect_class(node, expected: str, where: str) -> dict:
    if class_name(node) != expected:
        raise ValueError(f"cosyvoice.yaml: {where} must be a !new:…{expected} object, "
                         f"found {node.get('__class__') if isinstance(node, dict) else node!r}")
    return node


def _pick(node: dict, cls, where: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in node.items() if k in fields})
    except TypeError as e:
        raise ValueError(f"cosyvoice.yaml: {where}: {e}") from None


def flow_config_from_yaml(config: dict) -> FlowConfig:
    """The `flow` section of a parsed cosyvoice.yaml → FlowConfig (unsupported settings refused)."""
    flow = _expect_class(config.get("flow"), "CausalMaskedDiffWithXvec", "flow")
    embedding = _expect_class(flow.get("input_embedding"), "DualCodebookEmbedding",
                              "flow.input_embedding")
    encoder = _expect_class(flow.get("encoder"), "UpsampleConformerEncoderV2", "flow.encoder")
    decoder = _expect_class(flow.get("decoder"), "CausalConditionalCFM", "flow.decoder")
    estimator = _expect_class(decoder.get("estimator"), "DiT", "flow.decoder.estimator")
    for key, allowed in _ENCODER_FIXED.items():
        if encoder.get(key, allowed) != allowed:
            raise ValueError(f"cosyvoice.yaml: flow.encoder.{key}={encoder[key]!r} is not "
                             f"supported; allowed: {allowed!r}")
    cfg = FlowConfig(
        input_size=flow.get("input_size", FlowConfig.input_size),
        output_size=flow.get("output_size", FlowConfig.output_size),
        spk_embed_dim=flow.get("spk_embed_dim", FlowConfig.spk_embed_dim),
        vocab_size=flow.get("vocab_size", FlowConfig.vocab_size),
        cfg_rate=float(decoder.get("inference_cfg_rate", DECODER.cfg_rate)),
        encoder=_pick(encoder, EncoderConfig, "flow.encoder"),
        estimator=_pick(estimator, DiTConfig, "flow.decoder.estimator"),
    )
    if (embedding.get("vocab_size", cfg.vocab_size),
            embedding.get("input_size", cfg.input_size)) != (cfg.vocab_size, cfg.input_size):
        raise ValueError("cosyvoice.yaml: flow.input_embedding vocab_size/input_size must equal "
                         f"flow's ({cfg.vocab_size}, {cfg.input_size})")
    if cfg.estimator.in_channels != 4 * cfg.output_size or cfg.estimator.out_channels != cfg.output_size:
        raise ValueError("cosyvoice.yaml: flow.decoder.estimator in/out channels must be "
                         f"{4 * cfg.output_size}/{cfg.output_size} (x ‖ mu ‖ spk ‖ cond)")
    return cfg


# ---------------------------------------------------------------- loading

def load_state_strict(model: nn.Module, state: dict, source: Path) -> None:
    """Like load_state_dict(strict=True), with an error naming the file and each bad tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = ([f"missing tensor(s): {', '.join(missing)}"] if missing else []) + \
               ([f"unexpected tensor(s): {', '.join(unexpected)}"] if unexpected else []) + \
               ([f"wrong shape: {', '.join(wrong)}"] if wrong else [])
    if problems:
        raise ValueError(f"{source}: does not match cosyvoice.yaml's flow: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_noise(path: Path, channels: int) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the flow start-noise buffer is missing; dump the "
                                "reference model's decoder.rand_noise (float32 [1, 80, N]) there")
    noise = np.load(path)
    if noise.dtype != np.float32 or noise.ndim != 3 or noise.shape[:2] != (1, channels):
        raise ValueError(f"{path}: expected float32 [1, {channels}, N], got {noise.dtype} "
                         f"{list(noise.shape)}")
    return torch.from_numpy(noise)


def load_flow(cosyvoice_dir: Path | str, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> LoadedFlow:
    """cosyvoice.yaml + flow.pt + flow_noise.npy from a CosyVoice-300M-25Hz directory."""
    root = Path(cosyvoice_dir)
    cfg = flow_config_from_yaml(load_cosyvoice_yaml(root / COSYVOICE_YAML_FILE))
    model = CausalMaskedDiffWithXvec(cfg)
    try:
        state = torch.load(root / FLOW_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: name it
        raise ValueError(f"cannot read the flow weights {root / FLOW_FILE}: {exc}") from exc
    load_state_strict(model, state, root / FLOW_FILE)
    noise = load_noise(root / FLOW_NOISE_FILE, cfg.output_size)
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedFlow(model=model, noise=noise.to(device=device, dtype=dtype))


# ---------------------------------------------------------------- inference

def cosine_time_steps(n_steps: int, dtype: torch.dtype, device) -> torch.Tensor:
    """t_k = 1 − cos(π/2 · k/n), k = 0 … n, computed in the model dtype as upstream does."""
    t = torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype)
    return 1 - torch.cos(t * 0.5 * torch.pi)


def solve_euler(estimator: DiT, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor, cfg_rate: float,
                n_steps: int) -> torch.Tensor:
    """Integrate dx/dt = guided velocity from t=0 to 1; conditional and unconditional rows share
    one estimator call per step."""
    b = x.shape[0]
    t_span = cosine_time_steps(n_steps, x.dtype, x.device)
    mask_in = torch.cat([mask, mask])
    mu_in = torch.cat([mu, torch.zeros_like(mu)])
    spks_in = torch.cat([spks, torch.zeros_like(spks)])
    cond_in = torch.cat([cond, torch.zeros_like(cond)])
    t, dt = t_span[:1], t_span[1] - t_span[0]
    for step in range(1, n_steps + 1):
        v = estimator(torch.cat([x, x]), mask_in, mu_in, t.expand(2 * b), spks_in, cond_in)
        v_cond, v_uncond = v[:b], v[b:]
        x = x + dt * ((1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond)
        t = t + dt
        if step < n_steps:
            dt = t_span[step + 1] - t
    return x


def _check_inputs(token_rows, token_lens, prompt_rows, prompt_lens, prompt_mel, spk_embedding,
                  noise, cfg: FlowConfig, up: int) -> None:
    b = token_rows.shape[0]
    given = (token_rows, token_lens, prompt_rows, prompt_lens, prompt_mel, spk_embedding)
    shapes_ok = (token_rows.ndim == 3 and token_rows.shape[2] == 2
                 and prompt_rows.ndim == 3 and prompt_rows.shape[:1] + prompt_rows.shape[2:] == (b, 2)
                 and tuple(token_lens.shape) == (b,) and tuple(prompt_lens.shape) == (b,)
                 and prompt_mel.ndim == 3 and prompt_mel.shape[0] == b
                 and prompt_mel.shape[1] >= up * prompt_rows.shape[1]
                 and prompt_mel.shape[2] == cfg.output_size
                 and tuple(spk_embedding.shape) == (b, cfg.spk_embed_dim))
    if not shapes_ok:
        raise ValueError("flow_inference: shapes must be token_rows [B, R, 2], token_lens [B], "
                         f"prompt_rows [B, P, 2], prompt_lens [B], prompt_mel [B, {up}P, "
                         f"{cfg.output_size}], spk_embedding [B, {cfg.spk_embed_dim}]; got "
                         f"{[list(a.shape) for a in given]}")
    if bool((token_lens < 0).any() or (token_lens > token_rows.shape[1]).any()
            or (prompt_lens < 0).any() or (prompt_lens > prompt_rows.shape[1]).any()
            or ((token_lens + prompt_lens) < 1).any()):
        raise ValueError("flow_inference: lengths must lie within the padded inputs, with at "
                         "least one row per request")
    for name, rows in (("token_rows", token_rows), ("prompt_rows", prompt_rows)):
        if rows.numel() and int(rows.max()) >= cfg.vocab_size:
            raise ValueError(f"flow_inference: {name} ids must be < {cfg.vocab_size}")
    frames = up * int((token_lens + prompt_lens).max())
    if noise.ndim != 3 or noise.shape[:2] != (1, cfg.output_size) or noise.shape[2] < frames:
        raise ValueError(f"flow_inference: noise must be [1, {cfg.output_size}, ≥{frames}], "
                         f"got {list(noise.shape)}")


@torch.inference_mode()
def flow_inference(flow: CausalMaskedDiffWithXvec, token_rows: torch.Tensor,
                   token_lens: torch.Tensor, prompt_rows: torch.Tensor,
                   prompt_lens: torch.Tensor, prompt_mel: torch.Tensor,
                   spk_embedding: torch.Tensor, noise: torch.Tensor,
                   n_steps: int = DECODER.flow_steps) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel of B requests at once → (mel [B, 80, up·R_max] in the model dtype, zero past each
    request's end; mel_lens [B] = up·token_lens).

    token_rows [B, R, 2] / prompt_rows [B, P, 2] int64, padded; prompt_mel [B, up·P, 80] holds
    each request's up·prompt_lens frames first; spk_embedding [B, 192] (CAM++); noise [1, 80, N].
    """
    cfg, up = flow.cfg, flow.up_rate
    _check_inputs(token_rows, token_lens, prompt_rows, prompt_lens, prompt_mel, spk_embedding,
                  noise, cfg, up)
    param = next(flow.parameters())
    device, dtype = param.device, param.dtype
    token_lens, prompt_lens = token_lens.to(device), prompt_lens.to(device)
    b = token_rows.shape[0]
    lens = prompt_lens + token_lens
    rows_max = int(lens.max())

    # each request's [prompt ‖ generated] rows, left-aligned
    rows = torch.zeros(b, rows_max, 2, dtype=torch.long, device=device)
    cond = torch.zeros(b, up * rows_max, cfg.output_size, dtype=dtype, device=device)
    for i in range(b):
        p, r = int(prompt_lens[i]), int(token_lens[i])
        rows[i, :p] = prompt_rows[i, :p]
        rows[i, p:p + r] = token_rows[i, :r]
        cond[i, :up * p] = prompt_mel[i, :up * p]

    valid_rows = torch.arange(rows_max, device=device)[None, :] < lens[:, None]
    emb = flow.input_embedding(rows.clamp(min=0)) * valid_rows[..., None].to(dtype)
    mu = flow.encoder_proj(flow.encoder(emb, lens))
    spks = flow.spk_embed_affine_layer(F.normalize(spk_embedding.to(device, dtype), dim=1))

    frames = up * rows_max
    mask = (torch.arange(frames, device=device)[None, :] < up * lens[:, None]).to(dtype)[:, None, :]
    x0 = noise[:, :, :frames].to(device, dtype).expand(b, -1, -1)
    x = solve_euler(flow.decoder.estimator, x0, mask, mu.transpose(1, 2).contiguous(), spks,
                    cond.transpose(1, 2).contiguous(), cfg.cfg_rate, n_steps)

    out_frames = up * int(token_lens.max()) if b else 0
    mel = torch.zeros(b, cfg.output_size, out_frames, dtype=dtype, device=device)
    for i in range(b):
        p, r = up * int(prompt_lens[i]), up * int(token_lens[i])
        mel[i, :, :r] = x[i, :, p:p + r]
    return mel, up * token_lens

"""All tunables of the tokenizer in one typed place.

Algorithm constants (what Step-Audio fixes) live in `Algorithm`; what an operator may
change per deployment (paths, limits, threads, device) lives in `TokenizerSettings`, which
`build_scripts/build_repository.py` serialises into each model's config parameters.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Constants of the original Step-Audio tokenizer (see step_audio_internals.md §1)."""

    sample_rate: int = 16000
    # preprocess
    peak_floor: float = 0.01
    peak_target: float = 0.999
    trim_top_db: float = 20.0
    trim_frame_length: int = 512
    trim_hop_length: int = 128
    trim_unit: int = 240
    trim_left_context: int = 800
    trim_right_extra: int = 4320
    # vq02 streaming encoder: chunk_size=[0, 4, 5], encoder look-back 4
    chunk_new_frames: int = 4
    chunk_lookahead: int = 5
    encoder_look_back: int = 4
    chunk_samples: int = 3840
    # fbank / LFR
    n_mels: int = 80
    frame_length_samples: int = 400
    frame_shift_samples: int = 160
    lfr_m: int = 7
    lfr_n: int = 6
    # vq06
    vq06_piece_samples: int = 480000
    vq06_min_piece_samples: int = 480
    vq06_n_mels: int = 128
    # merge
    vq02_codes: int = 1024
    audio_token_offset: int = 65536
    group_vq02: int = 2
    group_vq06: int = 3


ALGORITHM = Algorithm()


class DeploymentSettings:
    """What both settings dataclasses share: their JSON form (the model configs carry it) and
    the process's torch threads."""

    num_threads: int

    def apply_threads(self) -> None:
        """torch's intra-op threads for this process (onnxruntime sessions take num_threads)."""
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        """JSON arrays come back as the tuples the fields hold (no field is a list)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})

PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
CENTROIDS_FILE = "linguistic_tokenizer.npy"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"


@dataclasses.dataclass(frozen=True)
class TokenizerSettings(DeploymentSettings):
    """Deployment settings shared by the tokenizer models, the reference and the benchmarks."""

    weights_dir: str
    device: str = "cpu"
    max_audio_seconds: float = 120.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    num_threads: int = 0  # 0: leave torch / onnxruntime defaults
    dither: float | None = None  # None: take frontend_conf.dither from the Paraformer config
    # vq02 encoder engine: "torch" (ChunkedEncoderQuantizer) or "onnx" (onnxruntime over the file
    # build_scripts/export_vq02_onnx.py writes; CUDA provider when device is cuda:N)
    vq02_engine: str = "torch"
    # that file; None: the export's default path for these weights
    # (build/engines/vq02_encoder.<weights hash>.onnx); a relative path is taken from the project root
    vq02_onnx: str | None = None
    # "fp32" (tokens identical to the original) or "bf16": the torch engine under bf16 autocast
    # (AMX/AVX512-BF16 CPUs, GPUs); faster, tokens agree only mostly (perf/RESULTS.md)
    vq02_precision: str = "fp32"

    @property
    def paraformer_dir(self) -> Path:
        return Path(self.weights_dir) / PARAFORMER_DIR

    @property
    def centroids_path(self) -> Path:
        return Path(self.weights_dir) / CENTROIDS_FILE

    @property
    def speech_tokenizer_path(self) -> Path:
        return Path(self.weights_dir) / SPEECH_TOKENIZER_FILE



# ------------------------------------------------------------------ Step-Audio-EditX (LLM + decoder)

LLM_CONFIG_FILE = "config.json"
TEXT_TOKENIZER_FILE = "tokenizer.model"
TEXT_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
COSYVOICE_DIR = "CosyVoice-300M-25Hz"


@dataclasses.dataclass(frozen=True)
class LlmAlgorithm:
    """Constants of the original clone generation (step_audio_internals.md §2.3-2.6)."""

    bos_id: int = 1
    eot_id: int = 3  # <|EOT|>: the stop token
    bot_id: int = 4  # <|BOT|>
    audio_token_offset: int = 65536  # <audio_N> = 65536 + N
    audio_tokens: int = 5120  # N in [0, 5119]: 1024 vq02 + 4096 vq06
    max_length: int = 8192  # HF generate(max_length=...): prompt + generated
    temperature: float = 0.7
    # what the float32 sampler computes without overflow (logits / t stay finite); the original
    # takes any t > 0 and fails on tiny ones with "probability tensor contains inf/nan"
    min_temperature: float = 1e-3
    max_temperature: float = 100.0
    top_k: int = 50
    repetition_window: int = 10  # RepetitionAwareLogitsProcessor: last 10 ids
    repetition_ratio: float = 0.1  # ban the newest id when count / window > this


@dataclasses.dataclass(frozen=True)
class DecoderAlgorithm:
    """Constants of the CosyVoice decoder as EditX runs it (step_audio_internals.md §3)."""

    output_sample_rate: int = 24000
    samples_per_row: int = 960  # 25 Hz token rows → 2 mel frames → 2 × 480 samples
    mel_bins: int = 80
    mel_n_fft: int = 1920
    mel_hop: int = 480
    mel_fmax: float = 8000.0
    speaker_sample_rate: int = 16000
    speaker_dim: int = 192
    flow_steps: int = 10
    cfg_rate: float = 0.7
    vq02_pad: int = 1024  # reshape: vq02 column pad id
    vq06_shift: int = 1025  # reshape: vq06 column = raw vq06 id (1024-based) + 1
    noise_frames: int = 30000  # the flow's fixed start-noise buffer randn(1, 80, 30000)
    prompt_peak_cap: float = 0.6  # EditX caps the prompt's peak at 0.6 before mel / CAM++ / tokens
    # streaming token2wav (EditX CosyVoice_stream_impl_): chunk sizes in token rows, the last
    # one repeated (0.6, 0.96, then 1.92 s of audio); each waits for the flow's look-ahead rows
    stream_chunk_rows: tuple[int, ...] = (15, 24, 48)
    stream_mel_cache_frames: int = 8  # HiFT context per chunk; 8 × 480 samples are cross-faded
    stream_estimator_left_frames: int = 96  # DiT attention cache kept past the prompt (2 × 48)


LLM = LlmAlgorithm()
DECODER = DecoderAlgorithm()


@dataclasses.dataclass(frozen=True)
class EditxSettings(DeploymentSettings):
    """Deployment settings of the LLM and decoder models (a Step-Audio-EditX weights directory:
    config.json, model-*.safetensors, tokenizer.model, CosyVoice-300M-25Hz/)."""

    editx_dir: str
    device: str = "cpu"
    # compute dtype per stage (float32 | bfloat16); the default is the original's mix: Step1 in
    # bfloat16, the CosyVoice flow and HiFT in float32 (tts.py loads only the LLM in bfloat16)
    llm_dtype: str = "bfloat16"
    flow_dtype: str = "float32"
    hift_dtype: str = "float32"
    num_threads: int = 0  # 0: leave torch / onnxruntime defaults
    # each E(...) of the prompt template starts with <s> (LlamaTokenizer's add_bos_token default,
    # EditX's tokenizer_config.json sets nothing); False: the chat-template variant (§2.4)
    inner_bos: bool = True
    max_prompt_text_chars: int = 1000
    max_target_text_chars: int = 1000
    max_prompt_seconds: float = 30.0
    min_prompt_seconds: float = 0.5
    min_prompt_peak: float = 1e-3  # a quieter prompt (below -60 dBFS) is refused as silent
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    max_length: int = LLM.max_length  # LLM total length limit (prompt + generated)
    max_active_sequences: int = 16  # LLM continuous batch: sequences decoded together per step
    # Step1 runtime (python_backends/llm; measurements in perf/RESULTS.md, "Step1 decode")
    llm_pack_weights: bool = True  # CPU bfloat16: every Linear prepacked for oneDNN (same ids)
    # packed Linear inputs of fewer rows padded to this many: oneDNN's 4-row bf16 kernel streams
    # the weights ~1.3x faster than its 1-row one (0: no padding, ids equal F.linear's alone)
    llm_pad_rows: int = 4
    llm_num_threads: int = 0  # llm_stream's torch threads; 0: every CPU the process may use
    llm_prefill_budget: int = 512  # prompt ids prefilled per step, shared by waiting requests
    # GPU: decode steps as CUDA graphs per batch bucket (python_backends/llm/static_decode.py);
    # off until perf/device_check.py has compared its ids with the eager path's on a GPU
    llm_cuda_graphs: bool = False
    prompt_cache_entries: int = 64  # clone: prompt tokens / speaker features kept per voice
    # clone_stream's decoder: token rows per chunk, the last repeated (DECODER.stream_chunk_rows)
    stream_chunk_rows: tuple[int, ...] = DECODER.stream_chunk_rows
    # the flow's DiT estimator: "torch" (flow_dit.DiT) or "onnx" (onnxruntime over the file
    # build_scripts/export_flow_onnx.py writes; CUDA provider when device is cuda:N)
    flow_engine: str = "torch"
    # that file; None: the export's default path for these weights
    # (build/engines/flow_estimator.<weights hash>.onnx); a relative path is taken from the project root
    flow_onnx: str | None = None

    @property
    def max_audio_seconds(self) -> float:
        """The name python_backends.tokenizer.preprocess.validate reads."""
        return self.max_prompt_seconds

    @property
    def llm_dir(self) -> Path:
        return Path(self.editx_dir)

    @property
    def cosyvoice_dir(self) -> Path:
        return Path(self.editx_dir) / COSYVOICE_DIR

    @property
    def text_tokenizer_path(self) -> Path:
        return Path(self.editx_dir) / TEXT_TOKENIZER_FILE


# serve.py names, in the server's environment, a file it creates when it begins to drain: the
# entry-point models (clone, clone_stream, llm) then answer new requests UNAVAILABLE
DRAIN_FILE_ENV = "STEP_AUDIO_DRAIN_FILE"
# llm_stream's output that carries a failure's message in its final response, for BLS callers
# (model_repository/llm_stream/config.pbtxt.template)
LLM_ERROR_OUTPUT = "error"

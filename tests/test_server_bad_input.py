"""Bad input gets a clear error naming the input (from our models or from Triton's own checks),
and the server keeps serving: the next good request still succeeds."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from conftest import TEST_MAX_AUDIO_SECONDS, assert_tokens_equal

ENSEMBLE = "in ensemble 'audio_tokenizer', "
TRITON = "[request id: <id_unknown>] "
RATE_RULE = "allowed: an integer from 8000 to 192000 Hz"
SHAPE_NOTE = (" NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
              "dimension to be prepended to each input shape. If you want to specify the full "
              "shape including the batch dim in your input dims config, try setting "
              "max_batch_size to zero. See the model configuration docs for more info on "
              "max_batch_size.")
SECOND = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)


def _raw_infer(url: str, **arrays):
    """A request built by hand, to send what our client never would."""
    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer("audio_tokenizer", inputs)


def _rate(value, dtype=np.int32):
    return np.array([[value]], dtype)


# (case id, request arrays, exact message)
CASES = [
    ("empty", dict(waveform=np.zeros((1, 0), np.float32), sample_rate=_rate(16000)),
     ENSEMBLE + "input 'waveform': is empty; allowed: at least one sample"),
    ("nan", dict(waveform=np.where(np.arange(16000) == 7, np.nan, SECOND)[None].astype(np.float32),
                 sample_rate=_rate(16000)),
     ENSEMBLE + "input 'waveform': contains NaN or Inf; allowed: finite float32 samples"),
    ("inf", dict(waveform=np.where(np.arange(16000) == 9, -np.inf, SECOND)[None].astype(np.float32),
                 sample_rate=_rate(16000)),
     ENSEMBLE + "input 'waveform': contains NaN or Inf; allowed: finite float32 samples"),
    ("rate_zero", dict(waveform=SECOND[None], sample_rate=_rate(0)),
     ENSEMBLE + f"input 'sample_rate': got 0 Hz; {RATE_RULE}"),
    ("rate_negative", dict(waveform=SECOND[None], sample_rate=_rate(-16000)),
     ENSEMBLE + f"input 'sample_rate': got -16000 Hz; {RATE_RULE}"),
    ("rate_below_8k", dict(waveform=SECOND[None], sample_rate=_rate(7999)),
     ENSEMBLE + f"input 'sample_rate': got 7999 Hz; {RATE_RULE}"),
    ("too_long", dict(waveform=np.tile(SECOND, int(TEST_MAX_AUDIO_SECONDS) + 1)[None],
                      sample_rate=_rate(16000)),
     ENSEMBLE + "input 'waveform': lasts 41 s (656000 samples per channel at 16000 Hz); allowed: "
                "at most 40 s of audio (640000 samples per channel at 16000 Hz)"),
    ("channels_zero", dict(waveform=SECOND[None], sample_rate=_rate(16000), channels=_rate(0)),
     ENSEMBLE + "input 'channels': got 0; allowed: an integer >= 1"),
    ("channels_not_dividing", dict(waveform=SECOND[None], sample_rate=_rate(16000),
                                   channels=_rate(3)),
     ENSEMBLE + "input 'waveform': holds 16000 samples, not a multiple of 3 channels; "
                "allowed: interleaved frames of `channels` samples"),
    ("batch_of_two", dict(waveform=np.stack([SECOND, SECOND]),
                          sample_rate=np.array([[16000], [16000]], np.int32)),
     ENSEMBLE + "input 'waveform': has batch size 2; allowed: batch size 1: one utterance per "
                "request, send several requests to batch"),
    ("waveform_fp64", dict(waveform=SECOND[None].astype(np.float64), sample_rate=_rate(16000)),
     TRITON + "inference input 'waveform' data-type is 'FP64', but model 'audio_tokenizer' "
              "expects 'FP32'"),
    ("waveform_int16", dict(waveform=(SECOND[None] * 32767).astype(np.int16),
                            sample_rate=_rate(16000)),
     TRITON + "inference input 'waveform' data-type is 'INT16', but model 'audio_tokenizer' "
              "expects 'FP32'"),
    ("sample_rate_int64", dict(waveform=SECOND[None], sample_rate=_rate(16000, np.int64)),
     TRITON + "inference input 'sample_rate' data-type is 'INT64', but model 'audio_tokenizer' "
              "expects 'INT32'"),
    ("waveform_rank3", dict(waveform=SECOND.reshape(1, 2, 8000), sample_rate=_rate(16000)),
     TRITON + "unexpected shape for input 'waveform' for model 'audio_tokenizer'. Expected "
              "[-1,-1], got [1,2,8000]." + SHAPE_NOTE),
    ("waveform_rank1", dict(waveform=SECOND, sample_rate=_rate(16000)),
     TRITON + "input 'waveform' batch size does not match other inputs for 'audio_tokenizer'"),
    ("sample_rate_two_values", dict(waveform=SECOND[None], sample_rate=np.array([[16000, 1]],
                                                                             np.int32)),
     TRITON + "unexpected shape for input 'sample_rate' for model 'audio_tokenizer'. Expected "
              "[-1,1], got [1,2]." + SHAPE_NOTE),
    ("sample_rate_missing", dict(waveform=SECOND[None]),
     TRITON + "expected number of inputs between 2 and 3 but got 1 inputs for model "
              "'audio_tokenizer'. Got input(s) ['waveform'], but missing required input(s) "
              "['sample_rate']. Please provide all required input(s)."),
]


@pytest.fixture(scope="module")
def good(clips, reference):
    clip = clips["0.5s"]
    return clip, reference(clip.samples, clip.rate)


@pytest.mark.parametrize("arrays,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_rejected_by_name_and_server_keeps_serving(arrays, message, triton_server,
                                                                  grpc_client, good):
    with pytest.raises(InferenceServerException) as caught:
        _raw_infer(triton_server.grpc_url, **arrays)
    assert caught.value.message() == message
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    clip, want = good
    assert_tokens_equal(grpc_client.tokenize(clip.samples, clip.rate), want)


def test_limits_come_from_the_repository_build(server_settings):
    """The too-long case above relies on the test repository's own limit."""
    assert server_settings.max_audio_seconds == TEST_MAX_AUDIO_SECONDS
    assert (server_settings.min_sample_rate, server_settings.max_sample_rate) == (8000, 192000)


def test_just_under_the_limits_is_accepted(grpc_client):
    audio = np.tile(SECOND, int(TEST_MAX_AUDIO_SECONDS))[: int(TEST_MAX_AUDIO_SECONDS * 8000)]
    got = grpc_client.tokenize(audio, 8000)  # exactly 40 s at exactly 8 kHz
    assert len(got["vq06_codes"]) > 0 and len(got["merged_ids"]) > 0

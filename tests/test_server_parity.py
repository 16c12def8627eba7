"""Server parity: the `audio_tokenizer` ensemble on a real tritonserver gives exactly the
tokens of the reference (the original Step-Audio algorithm) on tiny synthetic weights."""
from __future__ import annotations

import pytest

from conftest import assert_tokens_equal

PARITY_CLIPS = ("0.5s", "3s", "10s", "31s", "stereo_44k", "48k")


@pytest.mark.parametrize("name", PARITY_CLIPS)
def test_ensemble_matches_reference(name, clips, grpc_client, reference):
    clip = clips[name]
    got = grpc_client.tokenize(clip.samples, clip.rate, clip.channels)
    want = reference(clip.samples, clip.rate, clip.channels)
    assert len(want.vq02) > 0 and len(want.vq06) > 0 and len(want.merged_ids) > 0
    assert_tokens_equal(got, want)


def test_31s_clip_spans_two_vq06_pieces(clips, grpc_client):
    """31 s of speech is cut into a 30 s piece and a short one; both contribute 25 Hz codes."""
    got = grpc_client.tokenize(clips["31s"].samples, clips["31s"].rate)
    assert len(got["vq06_codes"]) > 30 * 25


def test_stereo_is_mixed_down_not_one_channel(clips, grpc_client, reference):
    clip = clips["stereo_44k"]
    left_only = clip.frames[:, 0].copy()
    both = grpc_client.tokenize(clip.frames, clip.rate)  # [N, 2] frames: the client interleaves
    one = grpc_client.tokenize(left_only, clip.rate)
    assert both["token_str"] == reference(clip.samples, clip.rate, 2).token_str
    assert both["token_str"] != one["token_str"]

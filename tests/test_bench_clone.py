"""perf/bench_clone.py on the tiny preset, in process only: the plain reference clone and ours must
agree (greedy fp32: the same LLM ids, the same waveform up to float rounding), and the output
length must follow from --max-new-tokens. Timings are printed, never checked."""
from __future__ import annotations

import json

import pytest
import torch

from perf.bench_clone import first_difference, main


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("bench_clone") / "clone.json"
    try:
        printed = main(["--preset", "tiny", "--greedy", "--skip-server", "--prompt-seconds", "3",
                        "--max-new-tokens", "31", "--warmup-tokens", "0", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(printed))
    return printed


def test_reference_and_ours_generate_the_same_ids_and_waveform(result):
    checks = result["checks"]
    assert checks["expect_identical_ids"] is True
    assert checks["llm_ids_identical"] is True
    assert checks["llm_ids_first_difference"] is None
    # the per-layer reference flow and ours differ in the last bits (1e-6, tests/test_flow.py);
    # voiced HiFT integrates that into its sine phase (~1e-2 here); a wrong stage is ~0.3
    assert checks["wave_max_abs_diff_reference_ours"] < 3e-2


def test_output_length_follows_max_new_tokens(result):
    # 31 new ids, the last dropped → 30 ids = 6 groups of 5 → 18 rows × 960 samples at 24 kHz
    for name in ("reference", "ours"):
        run = result["runs"][name]
        assert run["llm_ids"] == 30
        assert run["output_s"] == pytest.approx(18 * 960 / 24000)


def test_every_stage_is_timed(result):
    assert set(result["runs"]["reference"]["stages_s"]) == {
        "tokenizer", "prompt_mel", "speaker_embedding", "prompt_encoder", "prompt_builder", "llm",
        "flow", "hift", "token2wav"}
    assert set(result["runs"]["ours"]["stages_s"]) == {
        "tokenizer", "prompt_mel", "speaker_embedding", "prompt_encoder", "prompt_builder", "llm",
        "token2wav"}
    assert result["machine"].startswith("CPU ")


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2

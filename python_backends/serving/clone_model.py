"""The Triton side of `clone` and `clone_stream` (their model.py files only pick `stream`).

Requests are answered from worker threads (python_backends/serving/threaded_responder.py), so
concurrent clones wait on the LLM's continuous batch together. Each request's outcome, its
duration and each stage's are our own metrics (python_backends/serving/metrics.py), and so is
each prompt-cache lookup (`clone_prompt_cache_hits` / `_misses`, one per request), with a log
line per request.
"""
from __future__ import annotations

from . import stub
from .clone_pipeline import ClonePipeline, output_tensors, read_clone_request
from .metrics import ModelMetrics
from .prompt_cache import PromptCache
from ..settings import DECODER
from .model_config import load_editx_settings
from .threaded_responder import ThreadedResponder


class CloneModel:
    stream = False

    def initialize(self, args):
        self.settings = load_editx_settings(args)
        self.cache = PromptCache(self.settings.prompt_cache_entries)
        self.metrics = ModelMetrics.in_stub(args["model_name"])
        self.pipeline = ClonePipeline(self.cache, on_stage=self._stage_done)
        self.responder = ThreadedResponder(max_workers=max(4, 2 * self.settings.max_active_sequences),
                                           name=args["model_name"], metrics=self.metrics)

    def _handle(self, request, answer):
        req = read_clone_request(request, self.settings)
        wave, times = self.pipeline.clone(req, answer.is_cancelled)
        cached = times["prompt_cached"]
        with stub.STUB_IPC_LOCK:
            stub.pb().Logger.log_info(
                "clone: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()
                                      if k != "prompt_cached")
                + f"; prompt cache {'hit' if cached else 'miss'}")
        if not self.stream:
            return output_tensors(wave, times)
        step = max(1, int(self.settings.stream_chunk_seconds * DECODER.output_sample_rate))
        chunks = [wave[i:i + step] for i in range(0, len(wave), step)]
        for chunk in chunks[:-1]:
            answer.partial(output_tensors(chunk, times))
        return output_tensors(chunks[-1], times)

    def _stage_done(self, stage: str, value) -> None:
        if stage == "prompt_cached":
            self.metrics.add("clone_prompt_cache_hits" if value else "clone_prompt_cache_misses")
        else:
            self.metrics.observe("step_audio_stage_duration_seconds", value, stage=stage)

    def execute(self, requests):
        self.responder.submit(requests, self._handle)
        return None

    def finalize(self):
        self.responder.shutdown()

"""The Triton side of `clone` and `clone_stream` (their model.py files pick the class).

Requests are answered from worker threads (python_backends/serving/threaded_responder.py), so
concurrent clones wait on the LLM's continuous batch together. Each request's outcome, its
duration and each stage's are our own metrics (python_backends/serving/metrics.py), and so is
each prompt-cache lookup (`clone_prompt_cache_hits` / `_misses`, one per request), with a log
line per request.

`clone_stream` holds the streaming decoder itself (flow + HiFT on this instance's device, one
scheduler thread batching every open stream): its state per stream lives only as long as the
request, and a stream's chunks go out from that thread as soon as they are decoded.
"""
from __future__ import annotations

import dataclasses

from . import stub
from .clone_pipeline import ClonePipeline, output_tensors, read_clone_request
from .metrics import ModelMetrics
from .prompt_cache import PromptCache
from .model_config import load_editx_settings
from .threaded_responder import ThreadedResponder


class CloneModel:
    def initialize(self, args):
        self.name = args["model_name"]
        self.settings = load_editx_settings(args)
        self.cache = PromptCache(self.settings.prompt_cache_entries)
        self.metrics = ModelMetrics.in_stub(self.name)
        self.pipeline = ClonePipeline(self.cache, on_stage=self._stage_done)
        self.responder = ThreadedResponder(max_workers=max(4, 2 * self.settings.max_active_sequences),
                                           name=self.name, metrics=self.metrics)

    def _run(self, req, answer) -> tuple:
        return self.pipeline.clone(req, answer.is_cancelled)

    def _handle(self, request, answer):
        req = read_clone_request(request, self.settings)
        wave, times = self._run(req, answer)
        cached = times["prompt_cached"]
        stub.log_info(f"{self.name}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()
                                                   if k != "prompt_cached")
                      + f"; prompt cache {'hit' if cached else 'miss'}")
        return output_tensors(wave, times)

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


class CloneStreamModel(CloneModel):
    """model_repository/clone_stream: audio chunks as the streaming decoder makes them."""

    def initialize(self, args):
        super().initialize(args)
        from ..decoder.stream_scheduler import StreamScheduler
        from ..decoder.streaming import StreamingToken2Wav
        from ..decoder.token2wav import Token2Wav

        self.settings.apply_threads()
        # the chunked flow needs the torch DiT (an exported estimator has no chunk mode)
        token2wav = Token2Wav.from_settings(dataclasses.replace(self.settings, flow_engine="torch"))
        self.decoder = StreamScheduler(
            StreamingToken2Wav.from_token2wav(token2wav, chunk_rows=self.settings.stream_chunk_rows),
            max_batch=self.settings.max_active_sequences, name=f"{self.name}_decoder",
            on_streams=lambda count: self.metrics.set("step_audio_decoder_streams", count))
        self.metrics.set("step_audio_decoder_streams", 0)

    def _run(self, req, answer) -> tuple:
        return self.pipeline.clone_stream(
            req, self.decoder, lambda chunk, times: answer.partial(output_tensors(chunk, times)),
            answer.is_cancelled)

    def finalize(self):
        super().finalize()
        self.decoder.stop()

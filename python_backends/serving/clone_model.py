"""The Triton side of `clone` and `clone_stream` (their model.py files only pick `stream`).

Requests are answered from worker threads (python_backends/serving/threaded_responder.py), so concurrent
clones wait on the LLM's continuous batch together. The prompt cache's hits and misses are
Triton custom metrics (`clone_prompt_cache_hits` / `_misses` on the metrics port) and a log
line per request.
"""
from __future__ import annotations

from . import stub
from .clone_pipeline import ClonePipeline, output_tensors, read_clone_request
from .prompt_cache import PromptCache
from ..settings import DECODER
from .model_config import load_editx_settings
from .threaded_responder import ThreadedResponder


class CloneModel:
    stream = False

    def initialize(self, args):
        self.settings = load_editx_settings(args)
        self.cache = PromptCache(self.settings.prompt_cache_entries)
        self.pipeline = ClonePipeline(self.cache)
        self.responder = ThreadedResponder(max_workers=max(4, 2 * self.settings.max_active_sequences),
                                           name=args["model_name"])
        pb = stub.pb()
        # the families must outlive their metrics: keep both on the instance
        self.metric_families = {kind: pb.MetricFamily(name=f"clone_prompt_cache_{kind}",
                                        description=f"prompt cache {kind} of the {args['model_name']} model",
                                        kind=pb.MetricFamily.COUNTER) for kind in ("hits", "misses")}
        self.metrics = {kind: f.Metric(labels={"model": args["model_name"]})
                        for kind, f in self.metric_families.items()}

    def _handle(self, request, sender):
        req = read_clone_request(request)
        hits, misses = self.cache.hits, self.cache.misses
        wave, times = self.pipeline.clone(req, lambda: stub.is_cancelled(request))
        with stub.STUB_IPC_LOCK:
            self.metrics["hits"].increment(self.cache.hits - hits)
            self.metrics["misses"].increment(self.cache.misses - misses)
            stub.pb().Logger.log_info(
                "clone: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()
                                      if k != "prompt_cached")
                + f"; prompt cache {'hit' if times['prompt_cached'] else 'miss'} (hits "
                f"{self.cache.hits}, misses {self.cache.misses})")
        if not self.stream:
            return output_tensors(wave, times)
        step = max(1, int(self.settings.stream_chunk_seconds * DECODER.output_sample_rate))
        chunks = [wave[i:i + step] for i in range(0, len(wave), step)]
        for chunk in chunks[:-1]:
            self.responder.send_partial(sender, output_tensors(chunk, times))
        return output_tensors(chunks[-1], times)

    def execute(self, requests):
        self.responder.submit(requests, self._handle)
        return None

    def finalize(self):
        self.responder.shutdown()

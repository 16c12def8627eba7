"""Our models' own Prometheus metrics, on Triton's metrics port beside its `nv_*` ones.

Triton counts a request of a threaded or decoupled Python model (clone, clone_stream, llm,
llm_stream) as a success the moment `execute` returns, so its own counters and durations say
nothing true about those models. These say what each client got:

- `step_audio_requests_total{model, outcome}`: finished requests, outcome one of success,
  invalid_input, cancelled, unavailable, error (errors.outcome);
- `step_audio_requests_in_flight{model}`: accepted and not yet answered (serve.py drains on it);
- `step_audio_request_duration_seconds{model}`: histogram, accepted → answered;
- `step_audio_stage_duration_seconds{model, stage}`: histogram of each clone stage;
- `step_audio_llm_sequences{model, state}`: the LLM's running (`active`) and waiting
  (`pending`) sequences;
- `step_audio_llm_generated_ids_total{model}`: ids the LLM chose;
- `step_audio_decoder_streams{model}`: clone_stream's open decoder streams (each holds caches);
- `clone_prompt_cache_hits` / `clone_prompt_cache_misses{model}`: one per prompt lookup.

Every call into the stub holds stub.STUB_IPC_LOCK. Without the stub (`pb` None) nothing is
recorded.
"""
from __future__ import annotations

import threading

from . import stub

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
FAMILIES = {
    "step_audio_requests_total": (COUNTER, "requests answered, by what the client got"),
    "step_audio_requests_in_flight": (GAUGE, "requests accepted and not yet answered"),
    "step_audio_request_duration_seconds": (HISTOGRAM, "seconds from accepting a request to its answer"),
    "step_audio_stage_duration_seconds": (HISTOGRAM, "seconds of each stage of a clone"),
    "step_audio_llm_sequences": (GAUGE, "LLM sequences running (active) or waiting for a slot (pending)"),
    "step_audio_llm_generated_ids_total": (COUNTER, "ids the LLM generated"),
    "step_audio_decoder_streams": (GAUGE, "audio streams open in clone_stream's streaming decoder"),
    "clone_prompt_cache_hits": (COUNTER, "clone prompt lookups found in the prompt cache"),
    "clone_prompt_cache_misses": (COUNTER, "clone prompt lookups that ran the prompt encoder"),
}


class ModelMetrics:
    """One model's metrics (label `model`); `pb` None: none are recorded."""

    def __init__(self, model: str, pb=None):
        self.model = model
        self._pb = pb
        self._families: dict = {}
        self._metrics: dict = {}
        self._lock = threading.Lock()

    @classmethod
    def in_stub(cls, model: str) -> "ModelMetrics":
        return cls(model, stub.pb())

    def _metric(self, name: str, labels: dict):
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            kind, description = FAMILIES[name]
            family = self._families.get(name)
            if family is None:
                kinds = {COUNTER: self._pb.MetricFamily.COUNTER, GAUGE: self._pb.MetricFamily.GAUGE,
                         HISTOGRAM: self._pb.MetricFamily.HISTOGRAM}
                family = self._families[name] = self._pb.MetricFamily(
                    name=name, description=description, kind=kinds[kind])
            extra = {"buckets": list(DURATION_BUCKETS)} if kind == HISTOGRAM else {}
            metric = self._metrics[key] = family.Metric(labels={"model": self.model, **labels}, **extra)
        return metric

    def _apply(self, op: str, name: str, value: float, **labels: str) -> None:
        if self._pb is None:
            return
        with self._lock:
            metric = self._metric(name, labels)
            with stub.STUB_IPC_LOCK:
                getattr(metric, op)(value)

    def add(self, name: str, value: float = 1.0, **labels: str) -> None:
        if value:
            self._apply("increment", name, value, **labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._apply("set", name, value, **labels)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        self._apply("observe", name, seconds, **labels)

    # ---------------------------------------------------------------- what the models report

    def accepted(self) -> None:
        self.add("step_audio_requests_in_flight", 1)

    def answered(self, outcome: str, seconds: float) -> None:
        """Called just before the final response goes out, so that a client holding its answer
        reads counts that include it."""
        self.add("step_audio_requests_total", 1, outcome=outcome)
        self.observe("step_audio_request_duration_seconds", seconds)

    def delivered(self) -> None:
        """After the final send: no longer in flight (serve.py's drain waits for this)."""
        self.add("step_audio_requests_in_flight", -1)

"""What the project's Triton clients share: the connection (gRPC or HTTP), errors carrying the
server's message, and per-model timing from Triton's statistics."""
from __future__ import annotations

import numpy as np

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}


class TokenizerError(RuntimeError):
    """The server rejected or failed a request. `status` is the gRPC status or HTTP code."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ValueError(f"protocol must be 'grpc' or 'http', not '{protocol}'")
    return module


class TritonModelClient:
    """One model (`model`) and the models whose statistics `stage_times` reports (`stages`)."""

    stages: tuple[str, ...] = ()

    def __init__(self, url: str | None, protocol: str, model: str, timeout_s: float | None = None):
        self.protocol = protocol
        self._tc = _module(protocol)
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout_s = timeout_s
        if protocol == "grpc":
            self._client = self._tc.InferenceServerClient(self.url)
        else:
            timeout = timeout_s or 600.0
            self._client = self._tc.InferenceServerClient(self.url, connection_timeout=timeout,
                                                          network_timeout=timeout)
        self._last = self.statistics()

    def _stage_names(self) -> tuple[str, ...]:
        return self.stages if self.model in self.stages else (self.model,)

    # ----------------------------------------------------------------- statistics
    def statistics(self) -> dict:
        """Raw cumulative Triton statistics of the ensemble and its members, by model name."""
        out = {}
        for name in self._stage_names():
            try:
                raw = self._client.get_inference_statistics(name, **(
                    {"as_json": True} if self.protocol == "grpc" else {}))
            except Exception as exc:
                raise as_client_error(exc) from None
            for entry in raw.get("model_stats", []):
                out[name] = _sum_versions(out.get(name), entry)
        return out

    def stage_times(self, since: dict | None = None) -> dict:
        """Per model: requests, inferences, executions (batches), batch sizes and milliseconds
        spent queued / computing / in total, since the previous call (or since the client was
        made), or since `since`, a `statistics()` snapshot (then the previous-call mark stays).

        The statistics are the server's: they include every client's requests.
        """
        now = self.statistics()
        if since is None:
            since, self._last = self._last or {}, now
        return {name: _diff(stats, since.get(name)) for name, stats in now.items()}

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _triton_dtype(dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


def infer_inputs(module, arrays: dict) -> list:
    """`module.InferInput`s (tritonclient.grpc or .http) holding `arrays` as they are: for
    requests built by hand (tests, perf), not through a client class."""
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), _triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def as_client_error(exc: Exception) -> TokenizerError:
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    return TokenizerError(str(message), None if status is None else str(status))


def _count_ns(stats: dict, key: str) -> tuple[int, int]:
    entry = stats.get(key, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


_KEYS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_COMPUTE = ("compute_input", "compute_infer", "compute_output")


def _sum_versions(acc: dict | None, entry: dict) -> dict:
    """Flatten one model_stats entry (summing versions) into counts and nanoseconds."""
    acc = dict(acc or {"inference_count": 0, "execution_count": 0, "batches": {}})
    acc["inference_count"] += int(entry.get("inference_count", 0))
    acc["execution_count"] += int(entry.get("execution_count", 0))
    stats = entry.get("inference_stats", {})
    for key in _KEYS:
        count, ns = _count_ns(stats, key)
        acc[f"{key}_count"] = acc.get(f"{key}_count", 0) + count
        acc[f"{key}_ns"] = acc.get(f"{key}_ns", 0) + ns
    batches = dict(acc["batches"])  # batch size -> (executions, compute ns)
    for batch in entry.get("batch_stats", []):
        size = int(batch.get("batch_size", 0))
        count = _count_ns(batch, "compute_infer")[0]
        ns = sum(_count_ns(batch, key)[1] for key in _COMPUTE)
        old = batches.get(size, (0, 0))
        batches[size] = (old[0] + count, old[1] + ns)
    acc["batches"] = batches
    return acc


def _diff(now: dict, before: dict | None) -> dict:
    """Statistics between two snapshots. Per-request times are means; `busy_ms` is the model's
    total execution time (one count per batch, not per request)."""
    before = before or {}

    def delta(key):
        return now.get(key, 0) - before.get(key, 0)

    old = before.get("batches", {})
    batches = {size: (n - old.get(size, (0, 0))[0], ns - old.get(size, (0, 0))[1])
               for size, (n, ns) in sorted(now["batches"].items())}
    requests = delta("success_count")
    per_request = (lambda ns: ns / requests / 1e6) if requests else (lambda ns: 0.0)
    return {
        "requests": requests,
        "failed": delta("fail_count"),
        "inferences": delta("inference_count"),
        "executions": delta("execution_count"),
        "batch_sizes": {size: n for size, (n, _) in batches.items() if n},
        "queue_ms": per_request(delta("queue_ns")),
        "request_ms": per_request(delta("success_ns")),
        "busy_ms": sum(ns for _, ns in batches.values()) / 1e6,
    }


def format_stage_times(times: dict, stages: tuple[str, ...], entry: str) -> str:
    """A small text table of `stage_times()`; `entry` is the model called (an ensemble or BLS
    model: its time is end to end)."""
    rows = [f"{'model':<16}{'requests':>9}{'batches':>9}{'queue ms':>10}{'busy ms':>10}"
            f"{'request ms':>12}  batch sizes (size x count)",
            f"{'':<34}{'(mean)':>10}{'(total)':>10}{'(mean)':>12}"]
    for name in stages:
        if name not in times:
            continue
        t = times[name]
        if name == entry:
            rows.append(f"{name:<16}{t['requests']:>9}{'-':>9}{'-':>10}{'-':>10}"
                        f"{t['request_ms']:>12.1f}  (end to end)")
            continue
        sizes = ", ".join(f"{s}x{c}" for s, c in t["batch_sizes"].items()) or "-"
        rows.append(f"{name:<16}{t['requests']:>9}{t['executions']:>9}{t['queue_ms']:>10.1f}"
                    f"{t['busy_ms']:>10.1f}{t['request_ms']:>12.1f}  {sizes}")
    return "\n".join(rows)

"""Client of the `audio_tokenizer` ensemble over gRPC (default) or HTTP.

    client = AudioTokenizerClient("localhost:8001")
    tokens = client.tokenize(waveform, sample_rate)      # waveform: [N] or [N, channels]
    tokens["vq02_codes"], tokens["vq06_codes"], tokens["merged_ids"], tokens["token_str"]
    client.stage_times()    # per model: Triton statistics since the last call (or creation)

Bad input raises `TokenizerError`, whose text is the server's message, e.g.
"in ensemble 'audio_tokenizer', input 'sample_rate': got 4000 Hz; allowed: ...".
"""
from __future__ import annotations

import numpy as np

MODEL = "audio_tokenizer"
STAGES = ("preprocess", "vq02", "vq06", "token_merge", "audio_tokenizer")
OUTPUTS = ("vq02_codes", "vq06_codes", "merged_ids", "token_str")
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


def interleave(waveform, channels: int = 1) -> tuple[np.ndarray, int]:
    """[N] samples (with `channels` interleaved) or [N, C] frames → (float32 [N·C], C)."""
    audio = np.asarray(waveform)
    if audio.ndim == 2:
        channels = audio.shape[1]
        audio = audio.reshape(-1)
    if audio.dtype.kind == "f":
        audio = audio.astype(np.float32, copy=False)
    return np.ascontiguousarray(audio), int(channels)


def _count_ns(stats: dict, key: str) -> tuple[int, int]:
    entry = stats.get(key, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


class AudioTokenizerClient:
    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = MODEL,
                 timeout_s: float | None = None):
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

    # ----------------------------------------------------------------- inference
    def _inputs(self, waveform: np.ndarray, sample_rate: int, channels: int) -> list:
        tc = self._tc
        audio = tc.InferInput("waveform", [1, waveform.size], "FP32" if waveform.dtype == np.float32
                              else _triton_dtype(waveform.dtype))
        rate = tc.InferInput("sample_rate", [1, 1], "INT32")
        chans = tc.InferInput("channels", [1, 1], "INT32")
        # `channels` is always sent: Triton batches only requests carrying the same inputs
        values = ((audio, waveform.reshape(1, -1)), (rate, np.array([[sample_rate]], np.int32)),
                  (chans, np.array([[channels]], np.int32)))
        for tensor, array in values:
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
        return [audio, rate, chans]

    def tokenize(self, waveform, sample_rate: int, channels: int = 1) -> dict:
        """→ {"vq02_codes", "vq06_codes", "merged_ids": int32 arrays, "token_str": str}."""
        audio, channels = interleave(waveform, channels)
        inputs = self._inputs(audio, int(sample_rate), channels)
        if self.protocol == "http":
            outputs = [self._tc.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
        else:
            outputs = [self._tc.InferRequestedOutput(n) for n in OUTPUTS]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" and self.timeout_s else {}
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs, **kwargs)
        except Exception as exc:  # tritonclient's InferenceServerException
            raise _as_tokenizer_error(exc) from None
        text = result.as_numpy("token_str").reshape(-1)[0]
        return {
            "vq02_codes": result.as_numpy("vq02_codes").reshape(-1),
            "vq06_codes": result.as_numpy("vq06_codes").reshape(-1),
            "merged_ids": result.as_numpy("merged_ids").reshape(-1),
            "token_str": text.decode("utf-8") if isinstance(text, bytes) else str(text),
        }

    # ----------------------------------------------------------------- statistics
    def statistics(self) -> dict:
        """Raw cumulative Triton statistics of the ensemble and its members, by model name."""
        out = {}
        for name in STAGES if self.model == MODEL else (self.model,):
            try:
                raw = self._client.get_inference_statistics(name, **(
                    {"as_json": True} if self.protocol == "grpc" else {}))
            except Exception as exc:
                raise _as_tokenizer_error(exc) from None
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


def _as_tokenizer_error(exc: Exception) -> TokenizerError:
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    return TokenizerError(str(message), None if status is None else str(status))


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


def format_stage_times(times: dict) -> str:
    """A small text table of `stage_times()`."""
    rows = [f"{'model':<16}{'requests':>9}{'batches':>9}{'queue ms':>10}{'busy ms':>10}"
            f"{'request ms':>12}  batch sizes (size x count)",
            f"{'':<34}{'(mean)':>10}{'(total)':>10}{'(mean)':>12}"]
    for name in STAGES:
        if name not in times:
            continue
        t = times[name]
        if name == MODEL:
            rows.append(f"{name:<16}{t['requests']:>9}{'-':>9}{'-':>10}{'-':>10}"
                        f"{t['request_ms']:>12.1f}  (ensemble: end to end)")
            continue
        sizes = ", ".join(f"{s}x{c}" for s, c in t["batch_sizes"].items()) or "-"
        rows.append(f"{name:<16}{t['requests']:>9}{t['executions']:>9}{t['queue_ms']:>10.1f}"
                    f"{t['busy_ms']:>10.1f}{t['request_ms']:>12.1f}  {sizes}")
    return "\n".join(rows)

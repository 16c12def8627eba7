"""HTTP guard in front of Triton's HTTP port.

Why: tritonserver 2.51 allocates whatever an HTTP/JSON inference request *declares*: a 150-byte
body with shape [1, 8589934592] aborts the whole server (std::bad_alloc), and 2.51 has no option
to bound it (``--http-max-input-size`` came in later releases). This proxy forwards every byte
unchanged, except that it reads an inference request's JSON header first and answers 400 itself
when a declared input is too large or disagrees with the data it carries. Stdlib only.

    python -m build_scripts.http_guard --listen 0.0.0.0:8000 --upstream 127.0.0.1:18000 \\
        --max-input-bytes N --max-body-bytes N
"""
from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import math
import re
import signal
import threading
from urllib.parse import unquote

log = logging.getLogger(__name__)

DTYPE_SIZE = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2,
              "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8, "BYTES": 0}
HEAD_LIMIT = 64 * 1024  # longest request/response head (and chunk-size line) accepted
MAX_RANK = 64           # keeps the shape product cheap; real models use a handful of dims
CHUNKED = -1
# a superset of Triton's infer route (any version, absolute-form, %-escapes): better over-check
_INFER = re.compile(r"/v2/models/.+/infer/*$")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class _Reject(Exception):
    """A request the guard answers itself; ``unread`` body bytes are left (None: unknown)."""

    def __init__(self, status: int, msg: str, unread: int | None):
        super().__init__(msg)
        self.status, self.msg, self.unread = status, msg, unread


class _UpstreamGone(Exception):
    """Triton closed the connection before answering."""


def _no_dupes(pairs):
    """Refuse duplicate keys: Triton's parser takes the first, Python's json the last."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key in {keys}")
    return dict(pairs)


def _count(data) -> int:
    """Number of leaves in (nested lists of) JSON data, without recursion."""
    n, stack = 0, [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        else:
            n += 1
    return n


def check_infer_header(header: bytes, max_input_bytes: int) -> str | None:
    """The reason to refuse an inference request's JSON header, or None when it may go on."""
    try:
        doc = json.loads(header, object_pairs_hook=_no_dupes)
    except (ValueError, RecursionError) as e:
        return f"malformed inference request header: {e}"
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        return "malformed inference request header: 'inputs' must be a list"
    for inp in doc["inputs"]:
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            return "malformed inference request header: every input needs a string 'name'"
        name, dt, shape = inp["name"], inp.get("datatype"), inp.get("shape")
        if not isinstance(dt, str) or dt not in DTYPE_SIZE:
            return f"input '{name}': unknown datatype {json.dumps(dt)}"
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(type(d) is int and d >= 0 for d in shape)):
            return (f"input '{name}': shape must be a list of at most {MAX_RANK} "
                    "non-negative integers")
        count, size = math.prod(shape), DTYPE_SIZE[dt]
        nbytes = count * size
        if (nbytes if size else count) > max_input_bytes:
            what = f"{nbytes} bytes of {dt}" if size else f"{count} elements of BYTES"
            return (f"input '{name}': declares shape {shape} ({what}); "
                    f"allowed: at most {max_input_bytes} bytes per input")
        if "data" in inp and (n := _count(inp["data"])) != count:
            return (f"input '{name}': declares shape {shape} ({count} elements) "
                    f"but its data has {n} elements")
        params = inp.get("parameters")
        if size and isinstance(params, dict) and "binary_data_size" in params \
                and params["binary_data_size"] != nbytes:
            return (f"input '{name}': declares shape {shape} ({nbytes} bytes of {dt}) "
                    f"but binary_data_size is {json.dumps(params['binary_data_size'])}")
    return None


def _parse_head(head: bytes) -> tuple[list[str], dict[str, list[str]]]:
    """Start line parts and lower-cased headers; strict, so framing can't be read two ways."""
    if not head.count(b"\n") == head.count(b"\r") == head.count(b"\r\n"):
        raise ValueError("bare CR or LF in the head")
    lines = head[:-4].split(b"\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ValueError(f"bad header line {line[:80]!r}")
        headers.setdefault(name.decode().lower(), []).append(value.strip().decode("latin-1"))
    return lines[0].decode("latin-1").split(" ", 2), headers


def _length(headers: dict[str, list[str]], request: bool) -> int | None:
    """Body framing: a byte count, CHUNKED, or None (a response that runs until close)."""
    te, cl = headers.get("transfer-encoding"), headers.get("content-length")
    if te:
        if request and (cl or len(te) != 1 or te[0].lower() != "chunked"):
            raise ValueError("unsupported Transfer-Encoding / Content-Length combination")
        return CHUNKED
    if cl:
        if len(set(cl)) != 1 or not re.fullmatch(r"[0-9]+", cl[0]):
            raise ValueError(f"invalid Content-Length {cl}")
        return int(cl[0])
    return 0 if request else None


def _tokens(headers, name) -> set[str]:
    return {t.strip().lower() for t in ",".join(headers.get(name, [])).split(",")}


def _sender(writer):
    async def emit(data: bytes):
        writer.write(data)
        await writer.drain()
    return emit


def _collect(into: list, emit=None):
    async def keep(data: bytes):
        into.append(data)
        if emit:
            await emit(data)
    return keep


async def _discard(data: bytes):
    pass


async def _copy_n(reader, emit, n: int):
    while n:
        data = await reader.read(min(n, 1 << 16))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        await emit(data)


async def _copy_chunked(reader, emit, body: list | None = None, limit: int | None = None):
    """Copy one chunked body raw; collect the payload into ``body`` when given."""
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = line.split(b";")[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
            raise ValueError(f"bad chunk size line {line[:40]!r}")
        size = int(size, 16)
        total += size
        if limit is not None and total > limit:
            raise _Reject(413, f"chunked request body exceeds the limit of {limit} bytes", None)
        await emit(line)
        if size == 0:
            break
        await _copy_n(reader, emit if body is None else _collect(body, emit), size)
        if (crlf := await reader.readexactly(2)) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        await emit(crlf)
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
        await emit(line)
    await emit(line)


async def _pump(reader, writer, left: int):
    """Stream the rest of a request body to the upstream."""
    emit = _sender(writer)
    await (_copy_chunked(reader, emit) if left == CHUNKED else _copy_n(reader, emit, left))
    await writer.drain()


async def _relay(reader, writer, method: str) -> bool:
    """Stream one response (after any 1xx) to the client; True if the connection may be reused."""
    emit = _sender(writer)
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise _UpstreamGone() from e
        (version, code, *_), headers = _parse_head(head)
        await emit(head)
        if not code.startswith("1") or code == "101":
            break
    conn = _tokens(headers, "connection")
    keep = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
    if method == "HEAD" or code in ("204", "304", "101"):
        return keep and code != "101"
    length = _length(headers, request=False)
    if length is None:  # delimited by close
        while data := await reader.read(1 << 16):
            await emit(data)
        return False
    await (_copy_chunked(reader, emit) if length == CHUNKED else _copy_n(reader, emit, length))
    return keep


async def _reply(writer, reader, status: int, msg: str, close: bool):
    """Answer in Triton's error form; on close, linger briefly so the client reads the answer."""
    body = json.dumps({"error": msg}).encode()
    extra = "Connection: close\r\n" if close else ""
    writer.write(f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
    await writer.drain()
    if close:
        writer.write_eof()
        try:  # discard what the client still sends, so closing doesn't reset the connection
            async with asyncio.timeout(1.0):
                while await reader.read(1 << 16):
                    pass
        except (TimeoutError, ConnectionError):
            pass


class Guard:
    """Reverse proxy: one upstream connection per client connection, requests relayed in order."""

    def __init__(self, listen_host: str, listen_port: int, upstream_port: int,
                 max_input_bytes: int, max_body_bytes: int, upstream_host: str = "127.0.0.1"):
        self.listen_host, self.port = listen_host, listen_port
        self.upstream = (upstream_host, upstream_port)
        self.max_input_bytes, self.max_body_bytes = max_input_bytes, max_body_bytes
        self._server, self._tasks, self._closing = None, set(), False

    async def start(self):
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.port,
                                                  limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self):
        self._closing = True
        self._server.close()
        await asyncio.sleep(0.05)  # connections accepted just before close reach _handle and end
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _inspect(self, reader, writer, headers, length: int) -> tuple[bytes, int]:
        """Read and check the JSON header; returns the bytes read and the body bytes left."""
        if _tokens(headers, "content-encoding") - {"", "identity"}:
            raise _Reject(400, "compressed inference requests are not accepted by the guard",
                          None if length == CHUNKED else length)
        if length > self.max_body_bytes:
            raise _Reject(413, f"request body of {length} bytes exceeds the limit of "
                               f"{self.max_body_bytes} bytes", length)
        hlen = headers.get("inference-header-content-length")
        if hlen is not None and (len(hlen) != 1 or not re.fullmatch(r"[0-9]+", hlen[0])):
            raise _Reject(400, f"invalid Inference-Header-Content-Length {hlen}", None)
        hlen = None if hlen is None else int(hlen[0])
        if "100-continue" in _tokens(headers, "expect"):  # we need the body before Triton does
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length == CHUNKED:
            raw, body = [], []
            await _copy_chunked(reader, _collect(raw), body, self.max_body_bytes)
            prefix, payload, left = b"".join(raw), b"".join(body), 0
        else:
            if hlen is not None and hlen > length:
                raise _Reject(400, f"Inference-Header-Content-Length {hlen} exceeds the body "
                                   f"length {length}", length)
            prefix = payload = await reader.readexactly(length if hlen is None else hlen)
            left = length - len(prefix)
        if hlen is not None and hlen > len(payload):
            raise _Reject(400, f"Inference-Header-Content-Length {hlen} exceeds the body "
                               f"length {len(payload)}", left)
        err = check_infer_header(payload if hlen is None else payload[:hlen], self.max_input_bytes)
        if err:
            raise _Reject(400, err, left)
        return prefix, left

    async def _handle(self, creader, cwriter):
        me = asyncio.current_task()
        self._tasks.add(me)
        ureader = uwriter = None
        try:
            while not self._closing:
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    return await _reply(cwriter, creader, 431, "request head too large", True)
                try:
                    (method, target, version), headers = _parse_head(head)
                    if version not in ("HTTP/1.0", "HTTP/1.1"):
                        raise ValueError(f"unsupported version {version[:20]!r}")
                    length = _length(headers, request=True)
                except ValueError as e:
                    return await _reply(cwriter, creader, 400, f"bad HTTP request: {e}", True)
                conn = _tokens(headers, "connection")
                close = "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)
                prefix, left = b"", length
                if method.upper() == "POST" and _INFER.search(unquote(re.split("[?#]", target)[0])):
                    try:
                        prefix, left = await self._inspect(creader, cwriter, headers, length)
                    except _Reject as r:
                        log.info("refused %s %s: %s", method, target, r.msg)
                        keep = (not close and r.unread is not None
                                and r.unread <= self.max_body_bytes)
                        if keep:
                            await _copy_n(creader, _discard, r.unread)  # drain, stay usable
                        await _reply(cwriter, creader, r.status, r.msg, not keep)
                        if not keep:
                            return
                        continue
                if uwriter is None or ureader.at_eof():
                    if uwriter is not None:
                        uwriter.close()
                    try:
                        ureader, uwriter = await asyncio.open_connection(*self.upstream,
                                                                         limit=HEAD_LIMIT)
                    except OSError as e:
                        log.warning("upstream %s:%s unavailable: %s", *self.upstream, e)
                        return await _reply(cwriter, creader, 502, "upstream %s:%s unavailable"
                                            % self.upstream, True)
                uwriter.write(head + prefix)
                pump = asyncio.ensure_future(_pump(creader, uwriter, left))
                relay = asyncio.ensure_future(_relay(ureader, cwriter, method.upper()))
                try:
                    done, pending = await asyncio.wait({pump, relay},
                                                       return_when=asyncio.FIRST_EXCEPTION)
                finally:
                    for task in (pump, relay):
                        task.cancel()
                errors = [t.exception() for t in done]
                if relay in done and isinstance(relay.exception(), _UpstreamGone):
                    return await _reply(cwriter, creader, 502, "upstream closed the connection",
                                        True)
                if pending or any(errors) or not relay.result() or close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            log.debug("connection ended: %r", e)
        except asyncio.CancelledError:  # stop(); end quietly (asyncio's callback would complain)
            pass
        finally:
            self._tasks.discard(me)
            for w in (cwriter, uwriter):
                if w is not None:
                    w.close()


class GuardThread:
    """Runs a Guard on its own event loop in a daemon thread (for tests and sync callers)."""

    def __init__(self, listen_host: str, listen_port: int, upstream_port: int,
                 max_input_bytes: int, max_body_bytes: int, upstream_host: str = "127.0.0.1"):
        self.guard = Guard(listen_host, listen_port, upstream_port, max_input_bytes,
                           max_body_bytes, upstream_host)
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="http-guard", daemon=True)
        self._ready, self._error = threading.Event(), None

    def _run(self):
        try:
            self._loop.run_until_complete(self.guard.start())
        except BaseException as e:  # re-raised by start()
            self._error = e
            return self._ready.set()
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.guard.stop())
        self._loop.close()

    def start(self) -> "GuardThread":
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        self.port = self.guard.port
        return self

    def stop(self):
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description="Refuse lying Triton HTTP inference requests.")
    p.add_argument("--listen", default="0.0.0.0:8000", help="public HOST:PORT")
    p.add_argument("--upstream", default="127.0.0.1:18000", help="Triton's HTTP HOST:PORT")
    p.add_argument("--max-input-bytes", type=int, default=1 << 26, help="per declared input")
    p.add_argument("--max-body-bytes", type=int, default=1 << 28, help="per request body")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    (lhost, lport), (uhost, uport) = _hostport(args.listen), _hostport(args.upstream)

    async def serve():
        guard = Guard(lhost, lport, uport, args.max_input_bytes, args.max_body_bytes, uhost)
        await guard.start()
        done = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, done.set)
        await done.wait()
        await guard.stop()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""build_scripts/http_guard.py in front of a fake upstream (stdlib http.server that echoes the
exact bytes it received), so no Triton is needed: good requests must arrive byte-identical,
lying ones must be answered 400 by the guard and never reach the upstream."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from tritonclient.http import InferInput
from tritonclient.http._utils import _get_inference_request

from build_scripts.http_guard import GuardThread, check_infer_header

ROOT = Path(__file__).resolve().parents[1]
MAX_INPUT = 1 << 20
MAX_BODY = 4 << 20
LIE = (b'{"inputs":[{"name":"waveform","datatype":"FP32","shape":[1,8589934592],"data":[0.1]},'
       b'{"name":"text","datatype":"BYTES","shape":[1],"data":["hello"]}]}')


class _Tee:
    """Wraps the handler's rfile and keeps every byte read, so the upstream sees raw bytes."""

    def __init__(self, f):
        self.f, self.buf = f, bytearray()

    def readline(self, *a):
        line = self.f.readline(*a)
        self.buf += line
        return line

    def read(self, *a):
        data = self.f.read(*a)
        self.buf += data
        return data

    def close(self):
        self.f.close()

    def take(self) -> bytes:
        data, self.buf = bytes(self.buf), bytearray()
        return data


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.rfile = _Tee(self.rfile)

    def log_message(self, *args):
        pass

    def _serve(self):
        if self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().split(b";")[0], 16)):
                self.rfile.read(size + 2)
            while self.rfile.readline() != b"\r\n":
                pass
        else:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
        raw = self.rfile.take()
        self.server.received.append((self.client_address, raw))
        self.send_response_only(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(chunked(raw[:7], raw[7:]))
        else:
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    do_GET = do_POST = do_HEAD = _serve


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def echoed(raw: bytes) -> bytes:
    """The exact response the fake upstream gives to a request whose bytes were `raw`."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(raw) + raw)


def error(status: bytes, msg: str, close: bool = False) -> bytes:
    body = json.dumps({"error": msg}).encode()
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(body) + (b"Connection: close\r\n" if close else b"")
            + b"\r\n" + body)


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: guard", *extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: guard\r\n\r\n".encode()


class Conn:
    """One client connection; `send` returns the raw bytes of exactly one response."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.response()

    def response(self) -> bytes:
        lines = [self.f.readline()]
        while lines[-1] not in (b"\r\n", b""):
            lines.append(self.f.readline())
        head = b"".join(lines)
        fields = dict(line.decode().split(": ", 1)
                      for line in head.split(b"\r\n")[1:] if b": " in line)
        if fields.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                line = self.f.readline()
                body += line
                if line == b"0\r\n":
                    return head + body + self.f.readline()
                body += self.f.read(int(line, 16) + 2)
        return head + self.f.read(int(fields.get("Content-Length", 0)))

    def close(self):
        self.f.close()
        self.sock.close()


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def guard(upstream):
    with GuardThread("127.0.0.1", 0, upstream.server_address[1], MAX_INPUT, MAX_BODY) as g:
        yield g


@pytest.fixture
def conn(guard, upstream):
    upstream.received.clear()
    c = Conn(guard.port)
    yield c
    c.close()


def received(upstream) -> list[bytes]:
    return [raw for _, raw in upstream.received]


def json_infer(values) -> bytes:
    body = json.dumps({"inputs": [{"name": "waveform", "datatype": "FP32",
                                   "shape": [1, len(values)], "data": values}]}).encode()
    return post("/v2/models/clone/infer", body, "Content-Type: application/json")


def binary_infer(shape=(1, 4)) -> tuple[bytes, int]:
    inp = InferInput("waveform", list(shape), "FP32")
    inp.set_data_from_numpy(np.arange(np.prod(shape), dtype=np.float32).reshape(shape),
                            binary_data=True)
    body, json_size = _get_inference_request([inp], "", None, 0, False, False, 0, None, None)
    return body, json_size


# ------------------------------------------------------------------ pass-through

def test_json_infer_arrives_byte_identical(conn, upstream):
    request = json_infer([0.1, 0.2, 0.3, 0.4])
    assert conn.send(request) == echoed(request)
    assert received(upstream) == [request]


def test_binary_extension_infer_arrives_byte_identical(conn, upstream):
    body, json_size = binary_infer()
    assert body[json_size:] == np.arange(4, dtype=np.float32).tobytes()
    request = post("/v2/models/clone/versions/1/infer", body,
                   f"Inference-Header-Content-Length: {json_size}",
                   "Content-Type: application/octet-stream")
    assert conn.send(request) == echoed(request)
    assert received(upstream) == [request]


def test_input_at_the_limit_streams_through_and_one_element_more_is_refused(conn, upstream):
    body, json_size = binary_infer((1, MAX_INPUT // 4))
    request = post("/v2/models/clone/infer", body, f"Inference-Header-Content-Length: {json_size}")
    assert conn.send(request) == echoed(request)
    body, json_size = binary_infer((1, MAX_INPUT // 4 + 1))
    assert conn.send(post("/v2/models/clone/infer", body,
                          f"Inference-Header-Content-Length: {json_size}")) == error(
        b"400 Bad Request", "input 'waveform': declares shape [1, 262145] (1048580 bytes of FP32); "
        "allowed: at most 1048576 bytes per input")
    assert received(upstream) == [request]


def test_chunked_request_and_chunked_response_pass(conn, upstream):
    body = json.dumps({"inputs": [{"name": "w", "datatype": "INT64", "shape": [2],
                                   "data": [1, 2]}]}).encode()
    request = (b"POST /v2/models/clone/infer HTTP/1.1\r\nHost: guard\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body[:10], body[10:]))
    assert conn.send(request) == echoed(request)
    request2 = get("/chunked")
    assert conn.send(request2) == (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n"
                                   + chunked(request2[:7], request2[7:]))
    assert received(upstream) == [request, request2]


def test_non_infer_get_passes(conn, upstream):
    for path in ("/v2/health/ready", "/v2/models/clone/config", "/v2/models/stats"):
        assert conn.send(get(path)) == echoed(get(path))
    assert received(upstream) == [get("/v2/health/ready"), get("/v2/models/clone/config"),
                                  get("/v2/models/stats")]


def test_keep_alive_two_requests_one_connection(conn, upstream):
    first, second = json_infer([1.0]), get("/v2/models/clone")
    assert conn.send(first) == echoed(first)
    assert conn.send(second) == echoed(second)
    assert received(upstream) == [first, second]
    assert len({addr for addr, _ in upstream.received}) == 1  # one upstream connection


def test_twenty_concurrent_requests(guard, upstream):
    upstream.received.clear()

    def one(i: int) -> tuple[bytes, bytes]:
        c = Conn(guard.port)
        try:
            request = json_infer([float(i)] * (i + 1))
            return request, c.send(request)
        finally:
            c.close()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert [resp for _, resp in results] == [echoed(req) for req, _ in results]
    assert sorted(received(upstream)) == sorted(req for req, _ in results)


# ------------------------------------------------------------------ refused

def test_lying_150_byte_request_is_refused_and_connection_stays_usable(conn, upstream):
    assert len(LIE) == 150
    assert conn.send(post("/v2/models/clone/infer", LIE)) == error(
        b"400 Bad Request", "input 'waveform': declares shape [1, 8589934592] (34359738368 bytes "
        "of FP32); allowed: at most 1048576 bytes per input")
    assert conn.send(get("/v2/health/live")) == echoed(get("/v2/health/live"))
    assert received(upstream) == [get("/v2/health/live")]


@pytest.mark.parametrize("path", ["/v2/models/clone/versions/2/infer", "/v2/models/clone/inf%65r",
                                  "http://guard/v2/models/clone/infer?x=1", "//v2/models/c/infer/"])
def test_every_spelling_of_the_infer_route_is_checked(conn, upstream, path):
    assert conn.send(post(path, LIE)) == error(
        b"400 Bad Request", "input 'waveform': declares shape [1, 8589934592] (34359738368 bytes "
        "of FP32); allowed: at most 1048576 bytes per input")
    assert received(upstream) == []


def test_data_count_mismatch_is_refused(conn, upstream):
    body = b'{"inputs":[{"name":"waveform","datatype":"FP32","shape":[1,4],"data":[0.1]}]}'
    assert conn.send(post("/v2/models/clone/infer", body)) == error(
        b"400 Bad Request", "input 'waveform': declares shape [1, 4] (4 elements) but its data "
        "has 1 elements")
    assert received(upstream) == []


def test_binary_data_size_mismatch_is_refused_and_rest_of_body_drained(conn, upstream):
    header = (b'{"inputs":[{"name":"waveform","datatype":"FP32","shape":[1,4],'
              b'"parameters":{"binary_data_size":8}}]}')
    request = post("/v2/models/clone/infer", header + b"\0" * 8,
                   f"Inference-Header-Content-Length: {len(header)}")
    assert conn.send(request) == error(
        b"400 Bad Request", "input 'waveform': declares shape [1, 4] (16 bytes of FP32) but "
        "binary_data_size is 8")
    assert conn.send(get("/v2")) == echoed(get("/v2"))
    assert received(upstream) == [get("/v2")]


def test_binary_extension_lying_shape_is_refused(conn, upstream):
    body, json_size = binary_infer()
    header = body[:json_size].replace(b'"shape":[1,4]', b'"shape":[1,1000000000]')
    assert header != body[:json_size]
    request = post("/v2/models/clone/infer", header + body[json_size:],
                   f"Inference-Header-Content-Length: {len(header)}")
    assert conn.send(request) == error(
        b"400 Bad Request", "input 'waveform': declares shape [1, 1000000000] (4000000000 bytes "
        "of FP32); allowed: at most 1048576 bytes per input")
    assert received(upstream) == []


def test_over_long_body_is_refused_without_reading_it(conn, upstream):
    conn.sock.sendall(b"POST /v2/models/clone/infer HTTP/1.1\r\nHost: guard\r\n"
                      b"Content-Length: 1000000000\r\n\r\n" + b'{"inputs":' + b" " * 4096)
    assert conn.response() == error(
        b"413 Request Entity Too Large", "request body of 1000000000 bytes exceeds the limit of "
        "4194304 bytes", close=True)
    assert conn.f.read() == b""  # closed cleanly, long before a gigabyte could have been sent
    assert received(upstream) == []


def test_over_long_chunked_body_is_refused(conn, upstream):
    conn.sock.sendall(b"POST /v2/models/clone/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"400001\r\n" + b" " * 4096)
    assert conn.response() == error(
        b"413 Request Entity Too Large", "chunked request body exceeds the limit of 4194304 bytes",
        close=True)
    assert conn.f.read() == b""
    assert received(upstream) == []


def test_expect_100_continue_infer(conn, upstream):
    body = b'{"inputs":[{"name":"w","datatype":"BOOL","shape":[1],"data":[true]}]}'
    request = post("/v2/models/clone/infer", body, "Expect: 100-continue")
    conn.sock.sendall(request[:-len(body)])
    assert conn.f.readline() + conn.f.readline() == b"HTTP/1.1 100 Continue\r\n\r\n"  # guard's
    conn.sock.sendall(body)
    assert conn.response() == b"HTTP/1.1 100 Continue\r\n\r\n"  # http.server's own
    assert conn.response() == echoed(request)
    assert received(upstream) == [request]


def test_malformed_json_header_is_refused(conn, upstream):
    assert conn.send(post("/v2/models/clone/infer", b'{"inputs": [')) == error(
        b"400 Bad Request", "malformed inference request header: Expecting value: line 1 "
        "column 13 (char 12)")
    assert conn.send(post("/v2/models/clone/infer", b'{"outputs": []}')) == error(
        b"400 Bad Request", "malformed inference request header: 'inputs' must be a list")
    assert received(upstream) == []


def test_ambiguous_framing_is_refused(conn, upstream):
    request = (b"POST /v2/health HTTP/1.1\r\nContent-Length: 5\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert conn.send(request) == error(
        b"400 Bad Request", "bad HTTP request: unsupported Transfer-Encoding / Content-Length "
        "combination", close=True)
    assert received(upstream) == []


@pytest.mark.parametrize("inp, message", [
    ({"name": "t", "datatype": "BYTES", "shape": [1048577]},
     "input 't': declares shape [1048577] (1048577 elements of BYTES); allowed: at most "
     "1048576 bytes per input"),
    ({"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}, None),
    ({"name": "x", "datatype": "FP64", "shape": [131072],
      "parameters": {"binary_data_size": 1048576}}, None),
    ({"name": "x", "datatype": "FP32", "shape": [1, -4]},
     "input 'x': shape must be a list of at most 64 non-negative integers"),
    ({"name": "x", "datatype": "FP32", "shape": [True]},
     "input 'x': shape must be a list of at most 64 non-negative integers"),
    ({"name": "x", "datatype": "FP128", "shape": [1]}, "input 'x': unknown datatype \"FP128\""),
    ({"name": "x", "datatype": "INT8", "shape": [2, 2], "data": [[1, 2], [3, 4]]}, None),
])
def test_check_infer_header(inp, message):
    assert check_infer_header(json.dumps({"inputs": [inp]}).encode(), MAX_INPUT) == message


def test_duplicate_keys_are_refused():
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,8589934592],"shape":[1]}]}'
    assert check_infer_header(header, MAX_INPUT) == (
        "malformed inference request header: duplicate key in ['name', 'datatype', 'shape', "
        "'shape']")


def test_cli_serves_and_stops_on_sigterm(upstream):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "build_scripts.http_guard", "--listen",
                             f"127.0.0.1:{port}", "--upstream",
                             f"127.0.0.1:{upstream.server_address[1]}", "--max-input-bytes",
                             "1024", "--max-body-bytes", "4096"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(100):
            try:
                c = Conn(port)
                break
            except OSError:
                time.sleep(0.05)
        assert c.send(post("/v2/models/m/infer", LIE)) == error(
            b"400 Bad Request", "input 'waveform': declares shape [1, 8589934592] (34359738368 "
            "bytes of FP32); allowed: at most 1024 bytes per input")
        assert c.send(get("/v2/health/ready")) == echoed(get("/v2/health/ready"))
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_upstream_down_gives_502_and_stop_closes_open_connections(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    g = GuardThread("127.0.0.1", 0, dead, MAX_INPUT, MAX_BODY).start()
    try:
        c = Conn(g.port)
        assert c.send(get("/v2/health/ready")) == error(
            b"502 Bad Gateway", f"upstream 127.0.0.1:{dead} unavailable", close=True)
        assert c.f.read() == b""
        idle = Conn(g.port)
    finally:
        g.stop()
    assert idle.f.read() == b""  # stop() ends open connections
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []

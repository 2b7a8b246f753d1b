"""Metric math (vLLM's definitions) against hand-computed values, goodput and SLO parsing."""

import math

import numpy as np
import pytest

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.results.metrics import parse_slo, summarise
from llcuda_mpi.results.reader import read_results
from llcuda_mpi.results.writer import ResultsWriter

T = 1000.0
MS = dict(abs=1e-6, rel=1e-9)   # ms values: atol + rtol*|ref|


def _write(path, close=True):
    w = ResultsWriter(path, {"ranks": 3, "backend": "synthetic"}, {})
    rows = [
        # id, status, t_submit, t_first, t_end, token_times, rank, warmup
        (0, "ok", 0.0, 0.1, 0.5, [0.1, 0.2, 0.3, 0.4, 0.5], 1, False),  # TTFT 100, TPOT 100, E2E 500
        (1, "ok", 0.2, 0.4, 0.6, [0.4, 0.5, 0.6], 2, False),            # TTFT 200, TPOT 100, E2E 400
        (2, "ok", 0.5, 0.8, 0.8, [0.8], 1, False),                      # TTFT 300, no TPOT, E2E 300
        (3, "error", 0.6, 0.0, 0.7, [], 2, False),
        (4, "timeout", 0.7, 0.9, 1.7, [0.9, 1.0], 1, False),
        (5, "ok", -1.0, -0.9, -0.5, [-0.9, -0.5], 2, True),            # warmup: excluded
    ]
    for rid, status, ts, tf, te, times, rank, warmup in rows:
        c = Completion(rid, status, error="x" if status != "ok" else "", t_submit=T + ts,
                       t_first=T + tf if tf else 0.0, t_end=T + te, n_prompt=10, n_output=len(times),
                       token_times=[T + t for t in times])
        w.add(Request(rid, warmup=warmup), c, rank, "cpu")
    w.set_rank_summaries([{"rank": 1, "host": "h1", "busy_s": 1.0}, {"rank": 2, "host": "h2", "busy_s": 0.5}])
    if close:
        return w.close(T, T + 2.0)
    w.abort()
    return w.tmp_path


def test_hand_computed(tmp_path):
    s = summarise(read_results(_write(tmp_path / "m.h5")))
    assert s["counts"] == {"total": 5, "ok": 3, "error": 1, "timeout": 1, "warmup": 1}
    assert s["window"] == {"t_start": T, "t_end": T + 2.0, "duration_s": 2.0, "estimated": False}
    assert s["workers"] == 2 and s["backend"] == "synthetic"
    tp = s["throughput"]
    assert tp["requests_per_s"] == pytest.approx(1.5)
    assert tp["output_tokens_per_s"] == pytest.approx(9 / 2)
    assert tp["total_tokens_per_s"] == pytest.approx((9 + 30) / 2)
    m = s["metrics_ms"]
    assert m["ttft"]["n"] == 3
    assert m["ttft"]["mean"] == pytest.approx(200, **MS)
    assert m["ttft"]["p50"] == pytest.approx(200, **MS)
    assert m["ttft"]["p90"] == pytest.approx(280, **MS)      # linear interpolation, as numpy/vLLM
    assert m["ttft"]["p99"] == pytest.approx(298, **MS)
    assert m["tpot"]["n"] == 2 and m["tpot"]["mean"] == pytest.approx(100, **MS)
    assert m["itl"]["n"] == 4 + 2                             # gaps within requests only
    assert m["itl"]["p99"] == pytest.approx(100, **MS)
    assert m["e2e"]["mean"] == pytest.approx(400, **MS)
    assert s["goodput"] is None
    r1, r2 = s["per_rank"]
    assert (r1["rank"], r1["ok"], r1["timeout"], r1["output_tokens"], r1["host"]) == (1, 2, 1, 6, "h1")
    assert (r2["rank"], r2["ok"], r2["error"], r2["output_tokens"], r2["busy_s"]) == (2, 1, 1, 3, 0.5)
    assert r1["output_tokens_per_s"] == pytest.approx(3.0)


@pytest.mark.parametrize("spec, n_good", [
    ("ttft:250", 2),
    ("ttft:250,tpot:50", 0),
    ("tpot:50", 1),            # the one-token answer has no TPOT and cannot violate it
    ("tpot:100.001", 3),
    ("e2e:450", 2),
    ("itl:99", 1),
    ("ttft:1000 , tpot:1000", 3),
])
def test_goodput(tmp_path, spec, n_good):
    s = summarise(read_results(_write(tmp_path / "g.h5")), parse_slo(spec))
    g = s["goodput"]
    assert g["n_good"] == n_good
    assert g["requests_per_s"] == pytest.approx(n_good / 2.0)
    assert g["fraction"] == pytest.approx(n_good / 3)


@pytest.mark.parametrize("spec", ["", "ttft", "ttft:abc", "foo:10", "ttft:-1", "ttft:nan", ","])
def test_bad_slo(spec):
    with pytest.raises(ValueError, match="SLO"):
        parse_slo(spec)


def test_unclosed_window_is_estimated(tmp_path):
    s = summarise(read_results(_write(tmp_path / "u.h5", close=False)))
    w = s["window"]
    assert w["estimated"] and not s["complete"]
    assert w["t_start"] == pytest.approx(T) and w["t_end"] == pytest.approx(T + 1.7)
    assert s["throughput"]["requests_per_s"] == pytest.approx(3 / 1.7)


def test_no_ok_requests_is_nan_free(tmp_path):
    w = ResultsWriter(tmp_path / "e.h5", {}, {})
    for i in range(3):
        w.add(Request(i), Completion(i, "error", error="down", t_submit=T + i, t_end=T + i + 0.1), 1, "cpu")
    s = summarise(read_results(w.close(T, T + 3)), parse_slo("ttft:10"))
    assert s["counts"]["error"] == 3 and s["counts"]["ok"] == 0
    assert s["metrics_ms"]["ttft"] == {"n": 0, "mean": None, "p50": None, "p90": None, "p95": None, "p99": None}
    assert s["throughput"]["requests_per_s"] == 0.0
    assert s["goodput"]["fraction"] is None

    def walk(x):
        if isinstance(x, dict):
            return all(walk(v) for v in x.values())
        if isinstance(x, list):
            return all(walk(v) for v in x)
        return not (isinstance(x, float) and not math.isfinite(x))
    assert walk(s)


def test_empty_file(tmp_path):
    w = ResultsWriter(tmp_path / "z.h5", {}, {})
    s = summarise(read_results(w.close(T, T)))
    assert s["counts"]["total"] == 0 and s["window"]["duration_s"] is None
    assert s["throughput"]["requests_per_s"] is None and s["per_rank"] == []
    assert np.isfinite(s["counts"]["total"])


def test_rank_summaries_with_gaps_stay_json_safe(tmp_path):
    import json
    w = ResultsWriter(tmp_path / "r.h5", {}, {})
    w.add(Request(0), Completion(0, "ok", t_submit=T, t_first=T + 0.1, t_end=T + 0.2, n_output=1,
                                 token_times=[T + 0.1]), 1, "cpu")
    w.set_rank_summaries([{"rank": 1, "busy_s": 1.0, "extra": [float("nan")]}, {"rank": 2, "gpu": "x"}])
    s = summarise(read_results(w.close(T, T + 1)))
    r1, r2 = s["per_rank"]
    assert r2["busy_s"] is None and r1["extra"] == [None] and r2["ok"] == 0
    json.dumps(s, allow_nan=False)

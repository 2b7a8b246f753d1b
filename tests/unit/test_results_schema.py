"""HDF5 results schema v1: round trip, bad inputs, and kill -9 crash safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.results import schema
from llcuda_mpi.results.example import PROVENANCE, example_completion, write_example
from llcuda_mpi.results.reader import ResultsError, read_results
from llcuda_mpi.results.writer import ResultsWriter


def _check_row(res, k, i, n_tokens=8, warmup_every=10):
    """Row k of `res` is example_completion(i), field by field."""
    req, comp, rank, device = example_completion(i, n_tokens, warmup_every)
    row = res.requests[k]
    assert row["request_id"] == i
    assert row["rank"] == rank
    assert row["device"].decode() == device
    assert bool(row["warmup"]) == req.warmup
    assert res.status[k] == comp.status
    assert (row["n_prompt"], row["n_output"]) == (comp.n_prompt, comp.n_output)
    assert row["t_submit"] == comp.t_submit and row["t_end"] == comp.t_end
    if comp.t_first:
        assert row["t_first"] == comp.t_first
        assert row["ttft"] == pytest.approx(comp.t_first - comp.t_submit, abs=1e-9)
    else:
        assert np.isnan(row["t_first"]) and np.isnan(row["ttft"])
    assert row["e2e"] == pytest.approx(comp.t_end - comp.t_submit, abs=1e-9)
    if comp.n_output > 1:
        expect = (comp.t_end - comp.t_first) / (comp.n_output - 1)
        assert row["tpot"] == pytest.approx(expect, abs=1e-9)
    else:
        assert np.isnan(row["tpot"])
    assert row["finish_reason"].decode() == comp.finish_reason
    np.testing.assert_array_equal(res.token_times_of(k), comp.token_times)
    assert res.error_of(k) == comp.error
    assert res.server_timings_of(k) == comp.server_timings


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "run.h5"            # parent created by the writer
    out = write_example(path, n=40, flush_rows=16)
    assert out == str(path) and path.exists() and not os.path.exists(f"{path}.tmp")
    res = read_results(path)
    assert res.version == schema.VERSION and res.complete and res.n_dropped == 0
    assert len(res) == 40
    for k in range(40):
        _check_row(res, k, k)
    assert set(res.status) == {"ok", "error", "timeout"}
    assert res.requests["warmup"].sum() == 4
    assert res.provenance == PROVENANCE           # nested values come back from JSON
    assert res.config == {"n": 40, "max_tokens": 8}
    assert res.t_start == pytest.approx(1_700_000_000.0) and res.t_end > res.t_start
    assert res.attrs["n_requests"] == 40
    assert [r["rank"] for r in res.ranks] == [1, 2]
    assert res.ranks[1] == {"rank": 2, "host": "node0", "device": "cpu:1", "backend": "synthetic", "busy_s": 0.5}
    offsets = res.offsets
    assert offsets[-1] == len(res.token_times) == res.requests["tok_count"].sum()
    cols = res.as_columns()
    assert cols["error"][3].startswith("HTTP 500") and cols["device"][0] == "cpu:0"


def test_rank_summaries_mixed_types(tmp_path):
    w = ResultsWriter(tmp_path / "r.h5", {"ranks": 2}, {})
    w.set_rank_summaries([
        {"rank": 1, "n_ok": 3, "busy_s": 1.5, "host": "a", "extra": {"k": [1, 2]}, "flag": True},
        {"rank": 2, "n_ok": 4, "busy_s": 2, "gpu": "H100"},
    ])
    res = read_results(w.close(0.0, 1.0))
    assert len(res) == 0
    a, b = res.ranks
    assert a["n_ok"] == 3 and b["n_ok"] == 4 and b["busy_s"] == 2.0
    assert a["host"] == "a" and b["host"] == "" and a["gpu"] == "" and b["gpu"] == "H100"
    assert a["extra"] == {"k": [1, 2]} and b["extra"] is None
    assert a["flag"] is True or a["flag"] == "true"


def test_unknown_status_and_empty_fields(tmp_path):
    w = ResultsWriter(tmp_path / "s.h5", {}, {})
    w.add(Request(7), Completion(7, "weird", t_submit=5.0, t_end=6.0), rank=1, device="d" * 100)
    res = read_results(w.close(5.0, 6.0))
    assert res.status.tolist() == ["error"]
    assert len(res.requests["device"][0]) == schema.DEVICE_LEN
    assert res.token_times_of(0).size == 0 and res.server_timings_of(0) == {}


def test_writer_context_manager_leaves_tmp_on_error(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError):
        with ResultsWriter(path, {}, {}) as w:
            w.add(*example_completion(0))
            raise RuntimeError("job failed")
    res = read_results(f"{path}.tmp")
    assert not res.complete and len(res) == 1 and res.t_end is None


# ---- bad inputs: one-line ResultsError naming the file -------------------------

def _h5(path, **attrs):
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such file"),
    (lambda p: (p.write_text("hello\n"), p)[1], "not an HDF5 file"),
    (lambda p: (p.mkdir(), p)[1], "is a directory"),
    (lambda p: _h5(p), "not an llcuda-mpi results file (format attribute none)"),
    (lambda p: _h5(p, format="something-else", version=1), "format attribute 'something-else'"),
    (lambda p: _h5(p, format=schema.FORMAT, version=2), "newer than this llcuda-mpi reads"),
    (lambda p: _h5(p, format=schema.FORMAT, version=1), "damaged results file"),
])
def test_bad_inputs(tmp_path, make, message):
    path = make(tmp_path / "bad.h5")
    with pytest.raises(ResultsError) as info:
        read_results(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


# ---- kill -9 ------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from llcuda_mpi.results.example import example_completion
    from llcuda_mpi.results.example import PROVENANCE
    from llcuda_mpi.results.writer import ResultsWriter
    w = ResultsWriter(sys.argv[1], PROVENANCE, {}, flush_rows=int(sys.argv[2]), flush_interval=0.002)
    i, flushed = 0, 0
    while True:
        w.add(*example_completion(i))
        i += 1
        if w.flushed_rows != flushed:
            flushed = w.flushed_rows
            print(flushed, flush=True)
""")


def test_kill_9_leaves_readable_file(tmp_path):
    """SIGKILL a writer mid-stream several times: every flushed row reads back, exactly."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = np.random.default_rng(0)
    for trial in range(4):
        path = tmp_path / f"k{trial}.h5"
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(int(rng.integers(5, 200)))],
                                stdout=subprocess.PIPE, text=True)
        with proc:
            try:
                lines = [proc.stdout.readline() for _ in range(int(rng.integers(3, 40)))]
                assert lines[-1], "writer child died"
                if trial == 0:   # a live SWMR file reads too (report on a running job)
                    live = read_results(f"{path}.tmp")
                    assert not live.complete and len(live) >= int(lines[-1])
                time.sleep(float(rng.uniform(0, 0.05)))
            finally:
                proc.send_signal(signal.SIGKILL)
                lines += proc.stdout.read().split()
                proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        flushed = int(lines[-1])
        res = read_results(f"{path}.tmp")
        assert not res.complete and res.t_end is None
        assert len(res) >= flushed > 0
        ids = res.requests["request_id"]
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
        for k in {0, len(res) // 2, len(res) - 1}:
            _check_row(res, k, int(ids[k]), warmup_every=0)
        assert json.loads(json.dumps(res.provenance)) == PROVENANCE

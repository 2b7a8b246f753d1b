"""`llcuda-mpi report`: tables, --json, --slo, --compare, --plots, bad inputs."""

import io
import json
import subprocess
import sys

import h5py
import pytest

from llcuda_mpi.cli import main
from llcuda_mpi.results.example import T0, write_example
from llcuda_mpi.results.report import print_summary
from llcuda_mpi.results.writer import ResultsWriter

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    return {"a": write_example(d / "a.h5", n=40), "b": write_example(d / "b.h5", n=80),
            "tmp": write_example(d / "c.h5", n=30, close=False)}


def _run(capsys, *argv):
    rc = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_summary_table(capsys, files):
    rc, out, err = _run(capsys, files["a"], "--slo", "ttft:22,tpot:10")
    assert rc == 0 and err == ""
    assert "(schema v1, complete)" in out
    assert "requests: 28 ok, 5 error, 3 timeout (+4 warmup, excluded)" in out
    assert "goodput (ttft<=22 ms, tpot<=10 ms):" in out
    for name in ("TTFT", "TPOT", "ITL", "E2E", "p50", "p99", "req/s", "tok/s", "busy s", "node0"):
        assert name in out
    assert "nan" not in out.lower()


def test_print_summary_matches_json(capsys, files):
    buf = io.StringIO()
    s = print_summary(files["a"], file=buf)
    assert "TTFT" in buf.getvalue()
    rc, out, _ = _run(capsys, files["a"], "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["files"][0]["metrics_ms"] == s["metrics_ms"]
    assert doc["files"][0]["throughput"] == s["throughput"]


def test_json_fields(capsys, files):
    rc, out, _ = _run(capsys, files["a"], files["b"], "--json", "--slo", "ttft:30")
    doc = json.loads(out)
    assert rc == 0 and len(doc["files"]) == 2 and "compare" not in doc
    f = doc["files"][0]
    assert set(f["metrics_ms"]) == {"ttft", "tpot", "itl", "e2e"}
    assert set(f["metrics_ms"]["ttft"]) == {"n", "mean", "p50", "p90", "p95", "p99"}
    assert f["goodput"]["slo_ms"] == {"ttft": 30.0}
    assert [r["rank"] for r in f["per_rank"]] == [1, 2]


def test_incomplete_file_says_so(capsys, files):
    rc, out, _ = _run(capsys, files["tmp"])
    assert rc == 0 and files["tmp"].endswith(".tmp")
    assert "INCOMPLETE" in out and "estimated" in out


def test_compare_and_plots(capsys, files, tmp_path):
    rc, out, _ = _run(capsys, files["a"], files["tmp"], "--compare", "--plots", tmp_path / "p")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["file", "ranks", "workers", "backend"]
    assert "speed-up" in lines[0] and len([l for l in lines if ".h5" in l]) == 2
    assert "1.00" in lines[1] and "(incomplete)" in out
    pngs = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert "scaling.png" in pngs and len(pngs) == 2 * 4 + 1
    assert {"00_a_latency_cdf.png", "01_c_ttft_hist.png", "01_c_timeline.png", "00_a_rank_throughput.png"} <= set(pngs)
    for name in pngs:
        data = (tmp_path / "p" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000


def test_compare_json(capsys, files):
    rc, out, _ = _run(capsys, files["a"], files["b"], "--compare", "--json")
    rows = json.loads(out)["compare"]
    assert rc == 0 and rows[0]["speedup"] == 1.0 and rows[0]["efficiency"] == 1.0
    assert rows[1]["workers"] == 2 and rows[1]["speedup"] > 0


def test_zero_ok_requests_reports_and_plots(capsys, tmp_path):
    w = ResultsWriter(tmp_path / "z.h5", {"backend": "openai"}, {})
    path = w.close(T0, T0 + 1)
    rc, out, _ = _run(capsys, path, "--plots", tmp_path / "zp", "--slo", "ttft:1")
    assert rc == 0 and "0 ok" in out and "nan" not in out.lower()
    rc, out, _ = _run(capsys, path, "--json")
    assert rc == 0 and "NaN" not in out and json.loads(out)["files"][0]["counts"]["total"] == 0
    assert len(list((tmp_path / "zp").iterdir())) == 4


@pytest.mark.parametrize("setup, argv_tail, message", [
    (lambda d: d / "nope.h5", [], "no such file"),
    (lambda d: (d / "t.txt").write_text("x") and d / "t.txt", [], "not an HDF5 file"),
    (lambda d: h5py.File(d / "o.h5", "w").close() or d / "o.h5", [], "not an llcuda-mpi results file"),
    (lambda d: write_example(d / "ok.h5", n=3), ["--slo", "ttft=5"], "bad SLO"),
])
def test_user_errors_are_one_line(capsys, tmp_path, setup, argv_tail, message):
    path = setup(tmp_path)
    rc, out, err = _run(capsys, path, *argv_tail)
    assert rc == 2 and out == ""
    assert err.startswith("llcuda-mpi report: error:") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_newer_version_and_plots_dir_errors(capsys, tmp_path, files):
    newer = tmp_path / "v2.h5"
    with h5py.File(newer, "w") as f:
        f.attrs["format"], f.attrs["version"] = "llcuda-mpi-results", 2
    rc, _, err = _run(capsys, newer)
    assert rc == 2 and "version 2 is newer" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = _run(capsys, files["a"], "--plots", blocker / "sub")
    assert rc == 2 and "cannot write plots" in err and err.count("\n") == 1


def test_console_script_entry(files):
    """The real command line, once: exit code and output through the dispatcher."""
    proc = subprocess.run([sys.executable, "-m", "llcuda_mpi.cli", "report", files["a"], "--no-ranks"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "TTFT" in proc.stdout and "busy s" not in proc.stdout

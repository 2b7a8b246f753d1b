"""Deterministic example results: tests, the writer benchmark and docs.

`example_completion(i)` is a pure function of `i`, so a test can check any
row read back (for instance from the `.tmp` file of a killed writer) against
what was written. Run `python -m llcuda_mpi.results.example OUT.h5 [N]` to
write a file, or `--bench N TOKENS` to time the writer.
"""

import sys
import time

from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.results.writer import ResultsWriter

T0 = 1_700_000_000.0
PROVENANCE = {"command": "python -m llcuda_mpi.results.example", "ranks": 3, "workers": 2,
              "backend": "synthetic", "hosts": ["node0"], "devices": ["cpu", "cpu"],
              "model": {"path": "none", "sha256": "", "arch": "", "quant": ""}}


def example_completion(i, n_tokens=8, warmup_every=0):
    """(Request, Completion, rank, device) number i: every 7th an error, every 11th a timeout."""
    t = T0 + 0.01 * i
    status = "error" if i % 7 == 3 else "timeout" if i % 11 == 5 else "ok"
    n_out = n_tokens if status == "ok" else (0 if status == "error" else n_tokens // 2)
    ttft = 0.02 + 0.001 * (i % 5)
    times = [t + ttft + 0.005 * k for k in range(n_out)]
    comp = Completion(
        request_id=i, status=status, error={"error": f"HTTP 500 on request {i}: ünïcode",
                                            "timeout": "timed out after 1.0 s"}.get(status, ""),
        t_submit=t, t_first=times[0] if times else 0.0, t_end=(times[-1] if times else t) + 0.001,
        n_prompt=10 + i % 3, n_output=n_out, token_times=times,
        finish_reason="length" if status == "ok" else "",
        server_timings={"predicted_n": n_out, "prompt_ms": 1.5} if status == "ok" else {})
    req = Request(id=i, max_tokens=n_tokens, warmup=bool(warmup_every) and i % warmup_every == 0)
    return req, comp, 1 + i % 2, f"cpu:{i % 2}"


def write_example(path, n=50, n_tokens=8, warmup_every=10, rank_summaries=True, close=True, **kw):
    w = ResultsWriter(path, PROVENANCE, {"n": n, "max_tokens": n_tokens}, **kw)
    for i in range(n):
        w.add(*example_completion(i, n_tokens, warmup_every))
    if rank_summaries:
        w.set_rank_summaries([{"rank": r, "host": "node0", "device": f"cpu:{r - 1}", "backend": "synthetic",
                               "busy_s": 0.25 * r} for r in (1, 2)])
    if not close:
        w.abort()
        return w.tmp_path
    return w.close(T0, T0 + 0.01 * n + 0.1)


def bench(n, n_tokens, path="/tmp/llcuda-mpi-writer-bench.h5"):
    """Rows/s the writer sustains: prebuilt completions, so only add/flush/close is timed.

    Wall and CPU time (the dev box is shared: CPU time is the steadier number),
    and the longest single `add` (a flush: how long the master can stall).
    """
    items = [example_completion(i, n_tokens) for i in range(n)]
    w = ResultsWriter(path, PROVENANCE, {})
    longest = 0.0
    t, cpu = time.perf_counter(), time.process_time()
    for item in items:
        t_add = time.perf_counter()
        w.add(*item)
        longest = max(longest, time.perf_counter() - t_add)
    w.close(T0, T0 + 1)
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"rows": n, "tokens_per_row": n_tokens, "wall_s": round(total, 3), "cpu_s": round(cpu, 3),
            "rows_per_s_wall": round(n / total), "rows_per_s_cpu": round(n / cpu),
            "us_per_row_cpu": round(1e6 * cpu / n, 1), "longest_add_ms": round(1e3 * longest, 2)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bench"]:
        print(bench(int(sys.argv[2]), int(sys.argv[3])))
    else:
        print(write_example(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50))

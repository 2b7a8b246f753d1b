"""`llcuda-mpi report FILE...`: summary tables, per-rank tables, JSON, plots, comparisons.

Reads finished files and `.tmp` files left by killed jobs alike (their window
ends at the last completion, and the report says so).
"""

import json
import math
import os
import sys

from llcuda_mpi.results.metrics import PERCENTILES, parse_slo, summarise
from llcuda_mpi.results.reader import ResultsError, read_results


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="HDF5 results files written by `bench` (a killed job's FILE.tmp works too)")
    parser.add_argument("--slo", metavar="METRIC:MS,...",
                        help="goodput SLOs in milliseconds, e.g. ttft:500,tpot:50 (metrics: ttft, tpot, itl, e2e)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable JSON (same numbers) instead of tables")
    parser.add_argument("--plots", metavar="DIR",
                        help="write PNG plots (latency CDFs, TTFT histogram, per-rank throughput, timeline) to DIR")
    parser.add_argument("--compare", action="store_true",
                        help="one row per file with speed-up vs the first file (scaling studies)")
    parser.add_argument("--no-ranks", action="store_true", help="leave out the per-rank tables")


def _fmt(x, digits=2):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(header, rows):
    """Right-aligned text table (first column left-aligned)."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_summary(s, ranks=True) -> str:
    c, w, tp = s["counts"], s["window"], s["throughput"]
    state = "complete" if s["complete"] else "INCOMPLETE (not closed: a killed or running job)"
    out = [f"{s['path']}  (schema v{s['schema_version']}, {state})"]
    ranks_txt = f"ranks {_fmt(s['ranks'])} ({_fmt(s['workers'])} workers)"
    out.append(f"backend {_fmt(s['backend'])} | {ranks_txt}" + (f" | model {s['model']}" if s["model"] else ""))
    out.append(f"requests: {c['ok']} ok, {c['error']} error, {c['timeout']} timeout"
               f" (+{c['warmup']} warmup, excluded)")
    win = f"{_fmt(w['duration_s'], 3)} s"
    if w["estimated"]:
        win += " (estimated: no recorded window, first submit to last completion)"
    out.append(f"window: {win}")
    if s["rows_dropped"]:
        out.append(f"note: {s['rows_dropped']} rows were being written when the job stopped and are left out")
    out.append(f"throughput: {_fmt(tp['requests_per_s'])} req/s, {_fmt(tp['output_tokens_per_s'], 1)} output tok/s,"
               f" {_fmt(tp['total_tokens_per_s'], 1)} total tok/s ({s['output_tokens']} output tokens)")
    g = s.get("goodput")
    if g:
        slo = ", ".join(f"{k}<={v:g} ms" for k, v in g["slo_ms"].items())
        frac = f"{100 * g['fraction']:.1f}% of ok" if g["fraction"] is not None else "no ok requests"
        out.append(f"goodput ({slo}): {_fmt(g['requests_per_s'])} req/s, {g['n_good']} requests ({frac})")
    out.append("")
    header = ["metric (ms)", "mean"] + [f"p{p}" for p in PERCENTILES] + ["n"]
    rows = [[name.upper(), m["mean"]] + [m[f"p{p}"] for p in PERCENTILES] + [m["n"]]
            for name, m in s["metrics_ms"].items()]
    out.append(_table(header, rows))
    if ranks and s["per_rank"]:
        out.append("")
        out.append(format_ranks(s["per_rank"]))
    return "\n".join(out)


RANK_COLUMNS = [("rank", "rank"), ("host", "host"), ("device", "device"), ("backend", "backend"),
                ("ok", "ok"), ("error", "error"), ("timeout", "timeout"), ("output_tokens", "out tok"),
                ("requests_per_s", "req/s"), ("output_tokens_per_s", "tok/s"),
                ("ttft_p50_ms", "TTFT p50"), ("tpot_p50_ms", "TPOT p50"), ("busy_s", "busy s")]


def format_ranks(per_rank) -> str:
    cols = [(k, h) for k, h in RANK_COLUMNS if any(k in r for r in per_rank)]
    return _table([h for _, h in cols], [[r.get(k) for k, _ in cols] for r in per_rank])


def compare_rows(summaries) -> list:
    """One dict per file; speed-up of output-token throughput vs the first file."""
    def rate(s):
        tp = s["throughput"]
        return tp["output_tokens_per_s"] or tp["requests_per_s"]
    base = rate(summaries[0]) if summaries else None
    base_workers = summaries[0]["workers"] if summaries else None
    rows = []
    for s in summaries:
        m = s["metrics_ms"]
        r = rate(s)
        speedup = r / base if r and base else None
        eff = None
        if speedup and base_workers and s["workers"]:
            eff = speedup / (s["workers"] / base_workers)
        rows.append({"path": s["path"], "ranks": s["ranks"], "workers": s["workers"], "backend": s["backend"],
                     "ok": s["counts"]["ok"], "requests_per_s": s["throughput"]["requests_per_s"],
                     "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
                     "ttft_p50_ms": m["ttft"]["p50"], "ttft_p99_ms": m["ttft"]["p99"],
                     "tpot_p50_ms": m["tpot"]["p50"], "tpot_p99_ms": m["tpot"]["p99"],
                     "speedup": speedup, "efficiency": eff, "complete": s["complete"]})
    return rows


def format_compare(rows) -> str:
    header = ["file", "ranks", "workers", "backend", "ok", "req/s", "tok/s", "TTFT p50", "TTFT p99",
              "TPOT p50", "TPOT p99", "speed-up", "efficiency"]
    body = [[r["path"] + ("" if r["complete"] else " (incomplete)"), r["ranks"], r["workers"], r["backend"],
             r["ok"], r["requests_per_s"], r["output_tokens_per_s"], r["ttft_p50_ms"], r["ttft_p99_ms"],
             r["tpot_p50_ms"], r["tpot_p99_ms"], r["speedup"], r["efficiency"]] for r in rows]
    return _table(header, body) + "\n(latencies in ms; speed-up of output tok/s vs the first file)"


def print_summary(path, file=sys.stdout, slo=None) -> dict:
    """Print the summary of one results file (what `bench` prints at its end); returns the numbers."""
    s = summarise(read_results(path), slo)
    print(format_summary(s), file=file)
    return s


def _fail(message) -> int:
    print(f"llcuda-mpi report: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    try:
        slo = parse_slo(args.slo) if args.slo else None
    except ValueError as e:
        return _fail(str(e))
    results, summaries = [], []
    for path in args.files:
        try:
            res = read_results(path)
        except ResultsError as e:
            return _fail(str(e))
        summaries.append(summarise(res, slo))
        if args.plots:
            results.append(res)   # token times can be 100s of MB: keep them only to plot
    comparison = compare_rows(summaries) if args.compare else None
    written = None
    if args.plots:
        from llcuda_mpi.results import plots  # matplotlib only when asked
        try:
            written = plots.write_all(args.plots, results, summaries, comparison)
        except OSError as e:
            return _fail(f"cannot write plots to {args.plots}: {e.strerror or e}")
    try:
        _print_results(args, summaries, comparison, written)
    except BrokenPipeError:
        # `report ... | head`: the reader left; not an error of ours or the user's.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _print_results(args, summaries, comparison, written):
    if args.json:
        doc = {"files": summaries}
        if comparison is not None:
            doc["compare"] = comparison
        if args.plots:
            doc["plots"] = written
        print(json.dumps(doc, indent=2, allow_nan=False))
        return
    if comparison is not None:
        print(format_compare(comparison))
    else:
        for i, s in enumerate(summaries):
            if i:
                print()
            print(format_summary(s, ranks=not args.no_ranks))
    if args.plots:
        print(f"\nplots: {len(written)} PNG files in {os.path.abspath(args.plots)}")

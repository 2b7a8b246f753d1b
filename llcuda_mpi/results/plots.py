"""PNG plots for `report --plots DIR` (matplotlib's Agg canvas; no pyplot, no display)."""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from llcuda_mpi.results import schema
from llcuda_mpi.results.metrics import itl_values

CDF_POINTS = 2000        # quantiles drawn per CDF
TIMELINE_MAX = 20000     # requests drawn in the timeline (evenly strided beyond)
STATUS_COLOURS = {schema.STATUS_CODES["ok"]: "tab:blue", schema.STATUS_CODES["error"]: "tab:red",
                  schema.STATUS_CODES["timeout"]: "tab:orange"}


def _save(fig, path):
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _empty(ax, text="no ok requests"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _ok_mask(res):
    return (res.requests["warmup"] == 0) & (res.requests["status"] == schema.STATUS_CODES["ok"])


def latency_cdfs(res, path):
    ok = _ok_mask(res)
    series = {"TTFT": res.requests["ttft"][ok], "TPOT": res.requests["tpot"][ok],
              "ITL": itl_values(res, ok), "E2E": res.requests["e2e"][ok]}
    fig = Figure(figsize=(10, 7), layout="constrained")
    for ax, (name, values) in zip(fig.subplots(2, 2).flat, series.items()):
        v = np.asarray(values)[np.isfinite(values)] * 1e3
        ax.set_title(f"{name} CDF")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests" if name != "ITL" else "fraction of gaps")
        ax.grid(alpha=0.3)
        if v.size:
            # At most CDF_POINTS quantiles: millions of ITL gaps would cost GBs to draw.
            q = np.linspace(0, 1, min(v.size, CDF_POINTS))
            ax.step(np.quantile(v, q), q, where="post")
            ax.set_ylim(0, 1.02)
        else:
            _empty(ax)
    fig.suptitle(os.path.basename(res.path))
    return _save(fig, path)


def ttft_histogram(res, path):
    v = res.requests["ttft"][_ok_mask(res)]
    v = v[np.isfinite(v)] * 1e3
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"TTFT histogram: {os.path.basename(res.path)}")
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("requests")
    if v.size:
        ax.hist(v, bins=min(50, max(5, int(np.sqrt(v.size)))))
    else:
        _empty(ax)
    return _save(fig, path)


def rank_throughput(summary, path):
    rows = summary["per_rank"]
    fig = Figure(figsize=(max(5, 0.5 * len(rows) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"output tokens/s per rank: {os.path.basename(summary['path'])}")
    ax.set_xlabel("rank")
    ax.set_ylabel("output tokens/s")
    if rows:
        ax.bar([str(r["rank"]) for r in rows], [r["output_tokens_per_s"] or 0.0 for r in rows])
    else:
        _empty(ax, "no ranks")
    return _save(fig, path)


def timeline(res, path):
    """One horizontal segment per request, submit -> end, coloured by status; warmup grey."""
    rows = res.requests
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"request timeline: {os.path.basename(res.path)}")
    ax.set_xlabel("time since first submit (s)")
    ax.set_ylabel("request (submit order)")
    good = np.isfinite(rows["t_submit"]) & np.isfinite(rows["t_end"])
    rows = rows[good]
    stride = max(1, -(-len(rows) // TIMELINE_MAX))
    if stride > 1:
        ax.set_title(f"request timeline: {os.path.basename(res.path)} (every {stride}th request)")
    if len(rows):
        rows = rows[np.argsort(rows["t_submit"], kind="stable")][::stride]
        t0 = rows["t_submit"][0]
        y = np.arange(len(rows))
        segs = np.stack([np.column_stack([rows["t_submit"] - t0, y]),
                         np.column_stack([rows["t_end"] - t0, y])], axis=1)
        colours = [("0.6" if w else STATUS_COLOURS.get(int(s), "k")) for s, w in zip(rows["status"], rows["warmup"])]
        ax.add_collection(LineCollection(segs, colors=colours, linewidths=1))
        first = rows["t_first"] - t0
        has_first = np.isfinite(first)
        ax.plot(first[has_first], y[has_first], ",", color="k")
        ax.set_xlim(0, max(float(np.nanmax(rows["t_end"] - t0)), 1e-6))
        ax.set_ylim(-1, len(rows))
    else:
        _empty(ax, "no requests")
    if res.t_start is not None and len(rows):
        for t in (res.t_start, res.t_end):
            ax.axvline(t - t0, color="0.3", linestyle="--", linewidth=0.8)
    return _save(fig, path)


def scaling(comparison, path):
    """Output tok/s and speed-up against workers, with ideal linear scaling from the first file."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_tp, ax_su = fig.subplots(1, 2)
    pts = [(r["workers"], r["output_tokens_per_s"] or 0.0, r["speedup"]) for r in comparison
           if isinstance(r["workers"], (int, float))]
    ax_tp.set_title("throughput")
    ax_tp.set_xlabel("workers")
    ax_tp.set_ylabel("output tokens/s")
    ax_su.set_title("speed-up vs the first file")
    ax_su.set_xlabel("workers")
    ax_su.set_ylabel("speed-up")
    if pts:
        w = np.array([p[0] for p in pts], dtype=float)
        ax_tp.plot(w, [p[1] for p in pts], "o-", label="measured")
        su = np.array([np.nan if p[2] is None else p[2] for p in pts])
        ax_su.plot(w, su, "o-", label="measured")
        if w[0] > 0:
            order = np.sort(w)
            ax_su.plot(order, order / w[0], "--", color="0.5", label="ideal")
            ax_tp.plot(order, pts[0][1] * order / w[0], "--", color="0.5", label="ideal")
        ax_tp.legend()
        ax_su.legend()
    else:
        _empty(ax_tp, "no worker counts")
        _empty(ax_su, "no worker counts")
    return _save(fig, path)


def _stem(path, i, n):
    base = os.path.basename(path)
    for ext in (".tmp", ".h5", ".hdf5"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return f"{i:02d}_{base}" if n > 1 else base


def write_all(out_dir, results, summaries, comparison=None) -> list:
    """Write every plot; returns the PNG paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, (res, s) in enumerate(zip(results, summaries)):
        stem = os.path.join(out_dir, _stem(res.path, i, len(results)))
        written.append(latency_cdfs(res, f"{stem}_latency_cdf.png"))
        written.append(ttft_histogram(res, f"{stem}_ttft_hist.png"))
        written.append(rank_throughput(s, f"{stem}_rank_throughput.png"))
        written.append(timeline(res, f"{stem}_timeline.png"))
    if comparison:
        written.append(scaling(comparison, os.path.join(out_dir, "scaling.png")))
    return written

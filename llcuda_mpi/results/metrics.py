"""Benchmark metrics from a `Results`, as vLLM's benchmark defines them.

TTFT = t_first - t_submit; TPOT = (E2E - TTFT) / (n_output - 1); ITL = gaps
between consecutive streamed tokens (chunks); E2E = t_end - t_submit.
Statistics cover ok, non-warmup requests. Throughput = ok requests (tokens)
/ duration of the measured window. Goodput = ok requests meeting every SLO /
window duration. Everything returned is plain Python (JSON-ready) with None,
never NaN, for what is undefined.
"""

import math
from dataclasses import dataclass

import numpy as np

from llcuda_mpi.results import schema

PERCENTILES = (50, 90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2e")
SLO_METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass
class SLO:
    """Service-level objectives in milliseconds; None = not set."""
    ttft: float | None = None
    tpot: float | None = None
    itl: float | None = None
    e2e: float | None = None

    def any(self):
        return any(getattr(self, m) is not None for m in SLO_METRICS)


def parse_slo(text: str) -> SLO:
    """`ttft:500,tpot:50` (milliseconds) -> SLO; ValueError with a one-line message."""
    slo = SLO()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition(":")
        name = name.strip().lower()
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"bad SLO {part!r}: expected METRIC:MS with METRIC one of {', '.join(SLO_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"bad SLO {part!r}: {value!r} is not a number of milliseconds") from None
        if not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"bad SLO {part!r}: milliseconds must be a positive number")
        setattr(slo, name, ms)
    if not slo.any():
        raise ValueError(f"bad SLO {text!r}: expected e.g. ttft:500,tpot:50")
    return slo


def _num(x):
    """float or None (for NaN/inf): JSON- and table-safe."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_safe(x):
    """x with every non-finite float (at any depth) replaced by None."""
    if isinstance(x, float):
        return _num(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def stats_ms(values_s) -> dict:
    """mean / p50 / p90 / p95 / p99 / n of seconds, reported in milliseconds."""
    v = np.asarray(values_s, dtype=np.float64)
    v = v[np.isfinite(v)] * 1e3
    out = {"n": int(v.size), "mean": _num(v.mean()) if v.size else None}
    for p in PERCENTILES:
        out[f"p{p}"] = _num(np.percentile(v, p)) if v.size else None
    return out


def _gaps(res, rows):
    """(gaps, counts): token-time gaps (s) of rows with >= 2 tokens, concatenated; counts = gaps per row."""
    n_tok = rows["tok_count"].astype(np.int64)
    keep = n_tok > 1
    starts, n_tok = rows["tok_start"][keep], n_tok[keep]
    if n_tok.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64), keep
    offs = np.cumsum(n_tok) - n_tok
    idx = np.arange(int(n_tok.sum())) + np.repeat(starts - offs, n_tok)
    gaps = np.diff(res.token_times[idx])
    # Drop the gaps that straddle two requests.
    gaps = np.delete(gaps, np.cumsum(n_tok)[:-1] - 1)
    return gaps, n_tok - 1, keep


def itl_values(res, mask) -> np.ndarray:
    """Gaps (s) between consecutive token times of the selected rows, concatenated."""
    return _gaps(res, res.requests[mask])[0]


def per_request_itl_max(res, mask) -> np.ndarray:
    """Largest inter-token gap (s) per selected row; NaN for rows with < 2 tokens."""
    rows = res.requests[mask]
    gaps, n_gaps, keep = _gaps(res, rows)
    out = np.full(len(rows), np.nan)
    if n_gaps.size:
        out[keep] = np.maximum.reduceat(gaps, np.cumsum(n_gaps) - n_gaps)
    return out


def window(res) -> dict:
    """The measured window; estimated from the rows when the job did not close."""
    measured = res.requests["warmup"] == 0
    t_start, t_end, estimated = res.t_start, res.t_end, False
    rows = res.requests[measured]
    if t_start is None:
        t_start = float(np.nanmin(rows["t_submit"])) if len(rows) and np.isfinite(rows["t_submit"]).any() else None
        estimated = True
    if t_end is None:
        t_end = float(np.nanmax(rows["t_end"])) if len(rows) and np.isfinite(rows["t_end"]).any() else None
        estimated = True
    duration = t_end - t_start if t_start is not None and t_end is not None else None
    return {"t_start": _num(t_start), "t_end": _num(t_end),
            "duration_s": _num(duration) if duration and duration > 0 else None, "estimated": estimated}


def counts(rows) -> dict:
    st = rows["status"]
    return {"total": int(len(rows)),
            **{name: int((st == code).sum()) for name, code in schema.STATUS_CODES.items()}}


def _rate(n, duration):
    return _num(n / duration) if duration else None


def goodput(res, ok_mask, slo: SLO, duration) -> dict:
    rows = res.requests[ok_mask]
    good = np.ones(len(rows), dtype=bool)
    # A request with no value for a metric (TPOT of a one-token answer) cannot
    # violate that metric's SLO; a missing TTFT or E2E on an ok request can.
    if slo.ttft is not None:
        good &= rows["ttft"] * 1e3 <= slo.ttft
    if slo.tpot is not None:
        tpot = rows["tpot"] * 1e3
        good &= np.isnan(tpot) | (tpot <= slo.tpot)
    if slo.itl is not None:
        itl = per_request_itl_max(res, ok_mask) * 1e3
        good &= np.isnan(itl) | (itl <= slo.itl)
    if slo.e2e is not None:
        good &= rows["e2e"] * 1e3 <= slo.e2e
    n_good = int(good.sum())
    return {"slo_ms": {m: getattr(slo, m) for m in SLO_METRICS if getattr(slo, m) is not None},
            "n_good": n_good, "fraction": _num(n_good / len(rows)) if len(rows) else None,
            "requests_per_s": _rate(n_good, duration)}


def per_rank(res, ok_mask, duration) -> list:
    """One dict per rank: counts and throughput from the rows, plus the job's own summary keys."""
    measured = res.requests["warmup"] == 0
    summaries = {int(r["rank"]): r for r in res.ranks
                 if isinstance(r.get("rank"), (int, float)) and math.isfinite(r["rank"])}
    ranks = sorted(set(res.requests["rank"].tolist()) | set(summaries))
    out = []
    for rank in ranks:
        sel = measured & (res.requests["rank"] == rank)
        rows = res.requests[sel]
        ok_rows = res.requests[sel & ok_mask]
        out_tokens = int(ok_rows["n_output"].sum())
        devices = np.unique(rows["device"]) if len(rows) else []
        row = {"rank": rank,
               "device": ",".join(d.decode("utf-8", "replace") for d in devices),
               **{k: v for k, v in counts(rows).items()},
               "output_tokens": out_tokens,
               "requests_per_s": _rate(len(ok_rows), duration),
               "output_tokens_per_s": _rate(out_tokens, duration),
               "ttft_p50_ms": stats_ms(ok_rows["ttft"])["p50"],
               "tpot_p50_ms": stats_ms(ok_rows["tpot"])["p50"]}
        for key, value in summaries.get(rank, {}).items():
            if key not in row and key != "rank":
                row[key] = json_safe(value)
        out.append(row)
    return out


def _model_name(prov):
    model = prov.get("model")
    if isinstance(model, dict):
        model = model.get("path") or model.get("name")
    return model if isinstance(model, str) and model else prov.get("model_path")


def summarise(res, slo: SLO | None = None) -> dict:
    """Everything `report` prints for one file, JSON-ready."""
    measured = res.requests["warmup"] == 0
    ok_mask = measured & (res.requests["status"] == schema.STATUS_CODES["ok"])
    ok_rows = res.requests[ok_mask]
    win = window(res)
    duration = win["duration_s"]
    n_out = int(ok_rows["n_output"].sum())
    n_in = int(ok_rows["n_prompt"].sum())
    prov = res.provenance
    ranks = prov.get("ranks")
    workers = prov.get("workers")
    if workers is None and isinstance(ranks, int):
        workers = ranks - 1
    if workers is None:
        workers = len(np.unique(res.requests["rank"]))
    summary = {
        "path": res.path, "schema_version": res.version, "complete": res.complete,
        "rows_dropped": res.n_dropped,
        "backend": prov.get("backend"), "ranks": ranks, "workers": workers,
        "model": _model_name(prov),
        "counts": {**counts(res.requests[measured]), "warmup": int((~measured).sum())},
        "window": win,
        "input_tokens": n_in, "output_tokens": n_out,
        "throughput": {"requests_per_s": _rate(len(ok_rows), duration),
                       "output_tokens_per_s": _rate(n_out, duration),
                       "total_tokens_per_s": _rate(n_in + n_out, duration)},
        "metrics_ms": {"ttft": stats_ms(ok_rows["ttft"]), "tpot": stats_ms(ok_rows["tpot"]),
                       "itl": stats_ms(itl_values(res, ok_mask)), "e2e": stats_ms(ok_rows["e2e"])},
        "goodput": goodput(res, ok_mask, slo, duration) if slo is not None and slo.any() else None,
        "per_rank": per_rank(res, ok_mask, duration),
    }
    return summary

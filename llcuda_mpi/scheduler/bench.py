"""The bench job, SPMD: rank 0 dispatches prompts and writes results; ranks 1.. generate.

Phases, each ending in a collective that every rank reaches (no collective
inside a rank-conditional branch):
  1. config + requests (rank 0 reads the prompts)       allgather of errors
  2. device + backend (workers)                         allgather of errors, gather of descriptions
  3. results file opened (rank 0)                       allgather of errors
  4. run: master loop / worker loop
  5. per-rank summaries                                 gather
A user mistake in any phase (bad option, bad prompts file, no GPU, missing
model) ends every rank with exit code 2 and one error line per failing rank.
"""

import datetime
import os
import shlex
import sys

from llcuda_mpi import __version__, log, mpi
from llcuda_mpi.backends import backend_class
from llcuda_mpi.backends.base import Request
from llcuda_mpi.scheduler.config import (  # noqa: F401 - add_arguments is re-exported for jobs/bench.py
    NUM_PROMPTS_SYNTHETIC, BenchConfig, add_arguments, config_from_args)
from llcuda_mpi.scheduler.master import run_master
from llcuda_mpi.scheduler.policy import Dispatcher, arrival_times
from llcuda_mpi.scheduler.progress import Progress
from llcuda_mpi.scheduler.prompts import PromptsError, load_prompts, synthetic_prompts
from llcuda_mpi.scheduler.worker import run_worker

# Errors a user can cause when building a backend (bad path, no GPU, bad URL,
# missing optional dependency); anything else is a bug and aborts with a traceback.
USER_ERRORS = (ValueError, OSError, ImportError, RuntimeError)


def build_requests(cfg: BenchConfig) -> tuple[list[Request], list[float]]:
    """Warmup requests (ids 0..warmup-1) then measured ones, and the measured arrival offsets."""
    if cfg.prompts:
        prompts = load_prompts(cfg.prompts)
        n_measured = cfg.num_prompts or len(prompts)
    else:
        n_measured = cfg.num_prompts or NUM_PROMPTS_SYNTHETIC
        prompts = synthetic_prompts(cfg.warmup + n_measured, cfg.input_len, cfg.input_len_dist,
                                    cfg.input_len_spread, cfg.seed)
    n_total = cfg.warmup + n_measured
    requests = []
    for i in range(n_total):
        warm = i < cfg.warmup
        # measured request k uses prompt k; warmups use the prompts after the measured ones
        p = prompts[((i - cfg.warmup) if not warm else (n_measured + i)) % len(prompts)]
        requests.append(Request(
            id=i, prompt=p.text, max_tokens=p.max_tokens or cfg.max_tokens, ignore_eos=cfg.ignore_eos,
            temperature=cfg.temperature, seed=cfg.seed + i, timeout=cfg.timeout, warmup=warm))
    return requests, arrival_times(n_measured, cfg.request_rate, cfg.burstiness, cfg.seed).tolist()


def default_output() -> str:
    return os.path.join("results", f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.h5")


def run(args) -> int:
    ctx = mpi.init()
    log.setup(ctx.rank)
    problem = mpi.launch_mismatch_message(ctx.size, os.environ) or mpi.need_workers_message("bench", ctx.size)
    if problem:                          # every rank sees the same size
        if ctx.is_master:
            print(problem, file=sys.stderr)
        return 2

    # 1. config and requests
    cfg = requests = arrivals = None
    error = None
    try:
        cfg = config_from_args(args)
        if ctx.is_master:
            requests, arrivals = build_requests(cfg)
    except (ValueError, PromptsError) as exc:
        error = str(exc)
    if mpi.agree(ctx, error, "bench"):
        return 2

    # 2. device and backend on the workers
    backend, device, error = None, mpi.Device("cpu"), None
    if not ctx.is_master:
        try:
            cls = backend_class(cfg.backend)
            device = mpi.pick_device(ctx, cfg.device, probe=getattr(cls, "uses_device", True))
            mpi.activate(device)
            backend = cls.from_args(args, ctx.rank - 1, device)
        except USER_ERRORS as exc:
            error = f"{ctx.host}: {type(exc).__name__}: {exc}" if isinstance(exc, RuntimeError) \
                else f"{ctx.host}: {exc}"
    failed = mpi.agree(ctx, error, "bench")
    info = {"rank": ctx.rank, "host": ctx.host, "device": str(device), **device.describe(),
            "describe": backend.describe() if backend is not None else {}}
    infos = ctx.world.gather(info, root=0)
    if failed:
        if backend is not None:
            backend.close()
        return 2

    # 3. the results file (rank 0)
    writer, error = None, None
    if ctx.is_master:
        path = cfg.output or default_output()
        try:
            writer = _open_writer(ctx, cfg, args, infos, path)
        except OSError as exc:           # the OS's reason: h5py's message adds HDF5 flags and o_flags
            error = f"cannot write results to {path}: {os.strerror(exc.errno) if exc.errno else exc}"
        except ImportError as exc:
            error = f"cannot write results: {exc}"
    if mpi.agree(ctx, error, "bench"):
        if backend is not None:
            backend.close()
        return 2

    # 4. run
    stats = None
    if ctx.is_master:
        per_rank, t_start, t_end, first_error = _master(ctx, cfg, requests, arrivals, writer, infos)
    else:
        try:
            stats = run_worker(ctx.world, backend, cfg.inflight)
        finally:
            backend.close()

    # 5. summaries
    rows = ctx.world.gather(None if stats is None else vars(stats), root=0)
    if ctx.is_master:
        summaries = [_rank_row(infos[r], per_rank.get(r, {}), rows[r], t_start, t_end)
                     for r in range(1, ctx.size)]
        writer.set_rank_summaries(summaries)
        path = writer.close(t_start, t_end)
        from llcuda_mpi.results.report import print_summary
        print_summary(path, file=sys.stdout)
        print(f"results: {path}", file=sys.stdout)
        n_requests = sum(r.get("n_requests", 0) for r in per_rank.values())
        if n_requests and not sum(r.get("n_ok", 0) for r in per_rank.values()):
            # e.g. a server that is not there: the file says so row by row, the exit status says it once
            print(f"llcuda-mpi bench: error: none of the {n_requests} requests succeeded; first: {first_error}",
                  file=sys.stderr)
            return 1
    return 0


def _open_writer(ctx, cfg, args, infos, path):
    from llcuda_mpi.results.writer import ResultsWriter
    provenance = {
        "command": shlex.join(sys.argv), "package_version": __version__, "mpi_vendor": mpi.vendor(),
        "ranks": ctx.size, "nodes": ctx.n_nodes, "hosts": [i["host"] for i in infos],
        "devices": [i["device"] for i in infos], "physical_gpus": [i["physical_gpu"] for i in infos],
        "backend": cfg.backend,
        "backends": [i["describe"] for i in infos[1:]],
        "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "python": sys.version.split()[0],
    }
    config = {k: v for k, v in sorted(vars(args).items()) if not callable(v)}
    config.update(cfg.to_dict())
    return ResultsWriter(path, provenance, config)


def _master(ctx, cfg, requests, arrivals, writer, infos):
    devices = [i["device"] for i in infos]
    progress = Progress(len(requests), enabled=cfg.progress)
    per_rank: dict[int, dict] = {}
    first_error = {}                     # the first failed measured request: {"text": ...}

    def on_result(request, completion, rank):
        writer.add(request, completion, rank, devices[rank])
        progress.update(completion.status == "ok")
        if completion.status != "ok" and not request.warmup and not first_error:
            first_error["text"] = f"{completion.status} on rank {rank}: {completion.error or '(no message)'}"
        row = per_rank.setdefault(rank, {"n_requests": 0, "n_warmup": 0, "n_ok": 0, "n_error": 0,
                                         "n_timeout": 0, "output_tokens": 0})
        if request.warmup:
            row["n_warmup"] += 1
            return
        row["n_requests"] += 1
        row[f"n_{completion.status}"] += 1
        row["output_tokens"] += completion.n_output

    def on_tick():
        writer.poll()
        progress.tick()

    dispatcher = Dispatcher(requests, arrivals, cfg.concurrency)
    log.info("bench: %d requests (%d warmup) to %d workers, backend %s", len(requests), cfg.warmup,
             ctx.size - 1, cfg.backend)
    t_start, t_end = run_master(ctx.world, dispatcher, on_result, on_tick=on_tick)
    progress.close()
    return per_rank, t_start, t_end, first_error.get("text", "")


def _rank_row(info, counts, worker_stats, t_start, t_end) -> dict:
    """One per-rank summary: the master's accounting of results + the worker's own view."""
    row = {"rank": info["rank"], "host": info["host"], "device": info["device"],
           "backend": info["describe"].get("backend", ""),
           "n_requests": 0, "n_warmup": 0, "n_ok": 0, "n_error": 0, "n_timeout": 0, "output_tokens": 0}
    row.update(counts)
    ws = worker_stats or {}
    row["busy_s"] = float(ws.get("busy_s", 0.0))
    row["utilization"] = row["busy_s"] / (t_end - t_start) if t_end > t_start else 0.0
    row["messages_in"] = int(ws.get("n_messages_in", 0))
    row["messages_out"] = int(ws.get("n_messages_out", 0))
    return row


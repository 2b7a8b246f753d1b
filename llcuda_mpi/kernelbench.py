"""The `kernels` job: per-rank kernel microbenchmarks gathered into one HDF5 file.

Every worker measures, on its own device (CUDA or CPU), the block-format
matvec for each tensor type at a few shapes and batch sizes (GB/s = weight
bytes / time per call) and the cost of an empty launch; rank 0 gathers the
rows, prints a table and writes `results/kernels-<time>.h5` (attributes
`format="llcuda-mpi-kernels"`, `version=1`; one dataset per column).
"""

import datetime
import json
import os
import sys
import time

import numpy as np

from llcuda_mpi import __version__, log, mpi

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")


def add_arguments(parser):
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="workers' device; auto = cuda if a GPU is visible (default %(default)s)")
    parser.add_argument("--types", default=",".join(TYPES), help="tensor types (default all)")
    parser.add_argument("--shapes", default="2048x2048,5632x2048",
                        help="ROWSxCOLS list; cols a multiple of 256 (default %(default)s)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default %(default)s)")
    parser.add_argument("--reps", type=int, default=0, help="calls per measurement; 0 = auto")
    parser.add_argument("--output", default="", help="HDF5 file (default results/kernels-<time>.h5)")


def _parse(args):
    types = [t for t in args.types.split(",") if t]
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise ValueError(f"--types: unknown {', '.join(bad)} (choose from {', '.join(TYPES)})")
    shapes = []
    for s in args.shapes.split(","):
        try:
            rows, cols = (int(v) for v in s.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: {s!r} is not ROWSxCOLS") from None
        if rows < 1 or cols < 256 or cols % 256:
            raise ValueError(f"--shapes: {s!r}: need rows >= 1 and cols a multiple of 256")
        shapes.append((rows, cols))
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise ValueError(f"--batches: {args.batches!r} is not a list of integers") from None
    if any(b < 1 for b in batches) or args.reps < 0:
        raise ValueError("--batches must be >= 1 and --reps >= 0")
    return types, shapes, batches


def _timer(device):
    """f(call, reps) -> seconds per call on `device` (CUDA events, or perf_counter)."""
    if device.kind != "cuda":
        def cpu(call, reps):
            call()
            t0 = time.perf_counter()
            for _ in range(reps):
                call()
            return (time.perf_counter() - t0) / reps
        return cpu
    from numba import cuda

    def gpu(call, reps):
        call()
        cuda.synchronize()
        start, stop = cuda.event(), cuda.event()
        start.record()
        for _ in range(reps):
            call()
        stop.record()
        stop.synchronize()
        return cuda.event_elapsed_time(start, stop) / 1e3 / reps
    return gpu


def measure(device, types, shapes, batches, reps):
    """Rows of {kernel, type, rows, cols, batch, us, GB_s} on this rank's device."""
    from llcuda_mpi.kernels import matvec as mv
    from llcuda_mpi.kernels.quant_reference import random_raw
    on_gpu = device.kind == "cuda"
    if on_gpu:
        from numba import cuda
        put = cuda.to_device
    else:
        def put(a):
            return a
    call_mv = mv.matvec_cuda if on_gpu else mv.matvec_cpu
    timer, rng, out = _timer(device), np.random.default_rng(0), []
    for qtype in types:
        for rows, cols in shapes:
            raw = put(random_raw(qtype, rows, cols, rng))
            for b in batches:
                x = put(rng.standard_normal((b, cols)).astype(np.float32))
                y = put(np.zeros((b, rows), np.float32))
                n = reps or (50 if on_gpu else 3)
                dt = timer(lambda: call_mv(raw, qtype, x, y), n)
                out.append({"kernel": "matvec", "type": qtype, "rows": rows, "cols": cols, "batch": b,
                            "us": dt * 1e6, "GB_s": raw.nbytes / dt / 1e9})
    if on_gpu:
        out.append({"kernel": "empty_launch", "type": "", "rows": 0, "cols": 0, "batch": 0,
                    "us": _empty_launch(timer) * 1e6, "GB_s": 0.0})
    return out


def _empty_launch(timer):
    from numba import cuda

    @cuda.jit
    def empty():
        pass
    return timer(lambda: empty[1, 1](), 200)


def _write(path, rows, provenance):
    import h5py
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.attrs["format"], f.attrs["version"] = "llcuda-mpi-kernels", 1
        f.attrs["provenance"] = json.dumps(provenance)
        for key in ("rank", "device", "kernel", "type"):
            f[key] = np.array([str(r[key]) for r in rows], dtype=h5py.string_dtype())
        for key in ("rows", "cols", "batch"):
            f[key] = np.array([r[key] for r in rows], np.int64)
        for key in ("us", "GB_s"):
            f[key] = np.array([r[key] for r in rows], np.float64)
    os.replace(tmp, path)


def run(args):
    ctx = mpi.init()
    log.setup(ctx.rank)
    problem = mpi.need_workers_message("kernels", ctx.size)
    if problem:
        if ctx.is_master:
            print(problem, file=sys.stderr)
        return 2
    rows, error = [], None
    path = args.output or os.path.join("results", f"kernels-{datetime.datetime.now():%Y%m%d-%H%M%S}.h5")
    try:
        types, shapes, batches = _parse(args)
        if ctx.is_master:
            from llcuda_mpi.results.writer import check_writable
            check_writable(path)                 # before the measurements, not after them
    except ValueError as exc:
        error = str(exc)
    except OSError as exc:
        error = f"cannot write {path}: {os.strerror(exc.errno) if exc.errno else exc}"
    if mpi.agree(ctx, error, "kernels"):
        return 2
    try:
        if not ctx.is_master:
            device = mpi.pick_device(ctx, args.device)
            mpi.activate(device)
            rows = [dict(r, rank=ctx.rank, device=str(device)) for r in measure(device, types, shapes, batches, args.reps)]
    except (ValueError, mpi.DeviceError) as exc:
        error = str(exc)
    failed = mpi.agree(ctx, error, "kernels")
    gathered = ctx.world.gather(rows, root=0)
    if failed:
        return 2
    if ctx.is_master:
        rows = [r for part in gathered for r in part]
        _write(path, rows, {"command": " ".join(sys.argv), "version": __version__, "ranks": ctx.size,
                            "mpi": mpi.vendor()})
        print(f"{'rank':>4} {'device':<8} {'kernel':<12} {'type':<6} {'shape':>11} {'B':>3} {'us':>10} {'GB/s':>8}")
        for r in rows:
            shape = f"{r['rows']}x{r['cols']}" if r["rows"] else ""
            print(f"{r['rank']:>4} {r['device']:<8} {r['kernel']:<12} {r['type']:<6} {shape:>11} "
                  f"{r['batch'] or '':>3} {r['us']:>10.1f} {r['GB_s']:>8.2f}")
        print(f"wrote {path}")
    return 0

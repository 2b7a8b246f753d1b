"""Master dispatch overhead: requests/s through rank 0 with the synthetic backend at zero latency.

    timeout 300 mpiexec -n 3 python benchmarks/dispatch.py [--requests 20000] [--inflight 16]
    timeout 300 mpiexec -n 8 python benchmarks/dispatch.py --idle spin     # "before": no backoff

Every rank runs the real master/worker loops (llcuda_mpi.scheduler), with no
results file (--writer adds the HDF5 writer to the master's path). Prints one
line per run on rank 0: requests/s, us per request, CPU seconds per rank.

--scenario idle measures the other half of the busy-poll question: ranks
waiting on slow requests (TTFT --idle-ttft-ms) and how much CPU they burn
while waiting; with --idle spin every wait is a tight Iprobe loop, which is
what a blocking MPICH recv does inside the library.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from mpi4py import MPI

from llcuda_mpi.backends.base import Request
from llcuda_mpi.backends.synthetic import SyntheticBackend, SyntheticConfig
from llcuda_mpi.scheduler.master import run_master
from llcuda_mpi.scheduler.messages import Backoff
from llcuda_mpi.scheduler.policy import Dispatcher
from llcuda_mpi.scheduler.worker import run_worker


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--inflight", type=int, default=16, help="slots per worker")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--idle", choices=("backoff", "spin"), default="backoff",
                   help="idle wait: sleep with backoff (ours) or spin on Iprobe")
    p.add_argument("--scenario", choices=("throughput", "idle"), default="throughput")
    p.add_argument("--idle-ttft-ms", type=float, default=2000.0)
    p.add_argument("--writer", action="store_true", help="also write an HDF5 results file (rank 0)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def one_run(comm, args):
    rank = comm.Get_rank()
    backoff = Backoff(0.0, 0.0, spins=0) if args.idle == "spin" else Backoff()
    if args.scenario == "idle":
        n, synth = 1, SyntheticConfig(ttft_ms=args.idle_ttft_ms, tpot_ms=0)  # one busy worker, the rest idle
    else:
        n, synth = args.requests, SyntheticConfig(ttft_ms=0, tpot_ms=0)
    comm.Barrier()
    cpu0, t0 = time.process_time(), time.perf_counter()
    if rank == 0:
        requests = [Request(i, prompt="a b c d e f g h", max_tokens=args.max_tokens) for i in range(n)]
        writer = None
        if args.writer:
            from llcuda_mpi.results.writer import ResultsWriter
            path = os.path.join(tempfile.mkdtemp(prefix="dispatch-"), "bench.h5")
            writer = ResultsWriter(path, {"benchmark": "dispatch"}, vars(args))
        count = [0]

        def on_result(request, completion, src):
            count[0] += 1
            if writer is not None:
                writer.add(request, completion, src, "cpu")

        run_master(comm, Dispatcher(requests), on_result, backoff=backoff)
        assert count[0] == n
        if writer is not None:
            writer.close(0.0, 1.0)
    else:
        run_worker(comm, SyntheticBackend(synth), args.inflight, backoff=backoff)
    wall = time.perf_counter() - t0
    cpu = comm.gather(time.process_time() - cpu0, root=0)
    wall = comm.reduce(wall, op=MPI.MAX, root=0)
    return n, wall, cpu


def main(argv=None) -> int:
    args = parse(argv)
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        print("error: run under mpiexec with at least 2 ranks, e.g. "
              "`timeout 300 mpiexec -n 3 python benchmarks/dispatch.py`", file=sys.stderr)
        return 2
    for _ in range(args.repeat):
        n, wall, cpu = one_run(comm, args)
        if comm.Get_rank() == 0:
            row = {"ranks": comm.Get_size(), "scenario": args.scenario, "idle": args.idle,
                   "inflight": args.inflight, "max_tokens": args.max_tokens, "writer": args.writer,
                   "requests": n, "wall_s": round(wall, 4), "requests_per_s": round(n / wall, 1),
                   "us_per_request": round(wall / n * 1e6, 2),
                   "cpu_s_per_rank": [round(c, 3) for c in cpu]}
            print(json.dumps(row) if args.json else
                  f"-n {row['ranks']} {args.scenario:10s} idle={args.idle:7s} inflight={args.inflight:3d} "
                  f"writer={int(args.writer)}: {n} requests in {wall:.3f} s = {row['requests_per_s']:.0f} req/s, "
                  f"{row['us_per_request']:.1f} us/request; CPU s per rank {row['cpu_s_per_rank']}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Gateway throughput and overhead, on loopback, against a real `serve` job (mpiexec -n 2).

    python benchmarks/gateway.py synthetic [--concurrency 1 64 512] [--seconds 4]
    python benchmarks/gateway.py engine [--requests 6] [--max-tokens 32]

synthetic: the serve job runs the synthetic backend; C clients (one connection
each) send back-to-back requests for --seconds, over the binary protocol and
over HTTP /completion (SSE). Two loads per C:
  - "requests": max_tokens 16 at zero latency (one chunk): requests/s;
  - "stream": max_tokens 256 at tpot 1 ms: streamed tokens/s and chunks/s.
engine: the default model on the CPU engine; the median E2E of one request at
a time, (a) calling EngineBackend in this process, (b) through the gateway
(binary and HTTP), interleaved so that the box's drifting load hits all three
alike. Overhead = (gateway - direct) / gateway.

The load generator shares the machine with the job (rank 0 + 1 worker): on a
small box it competes for the same cores, so numbers are a lower bound.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llcuda_mpi.transport.client import Chunk, Client  # noqa: E402


class ServeJob:
    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="gwbench-")
        ready = os.path.join(self.dir, "ready.json")
        self.log = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen(
            ["timeout", "1800", "mpiexec", "-n", "2", sys.executable, "-m", "llcuda_mpi.jobs.serve", "--port", "0",
             "--port-base", "0", "--ready-file", ready, "--max-connections", "8192", *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() - t0 > 600:
                raise SystemExit(f"serve did not start; see {self.log.name}")
            time.sleep(0.2)
        with open(ready) as f:
            self.url = json.load(f)["url"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(120)
        self.log.close()
        if rc != 0:
            print(f"warning: serve exited {rc}; see {self.log.name}", file=sys.stderr)


# ---------------------------------------------------------------- clients

async def binary_client(url, deadline, params, out):
    async with await Client.connect(url) as c:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async for item in c.generate("a b c d e f g h", **params):
                if isinstance(item, Chunk):
                    out["chunks"] += 1
                else:
                    out["tokens"] += item["n_output"]
            out["requests"] += 1
            out["lat"].append(time.perf_counter() - t0)


async def http_client(host, port, deadline, params, out):
    """A minimal keep-alive HTTP/1.1 client (httpx's per-request CPU would dominate at 512 clients)."""
    body = json.dumps({"prompt": "a b c d e f g h", "n_predict": params["max_tokens"], "stream": True,
                       "temperature": 0}).encode()
    head = (f"POST /completion HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(head + body)
            await reader.readuntil(b"\r\n\r\n")                       # response head (chunked)
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                for line in data.split(b"\n\n"):
                    if line.startswith(b"data: "):
                        obj = json.loads(line[6:])
                        out["chunks"] += 1
                        if obj.get("stop"):
                            out["tokens"] += obj["tokens_predicted"]
            out["requests"] += 1
            out["lat"].append(time.perf_counter() - t0)
    finally:
        writer.close()


async def load(url, proto, clients, seconds, params):
    out = {"requests": 0, "tokens": 0, "chunks": 0, "lat": []}
    host, port = url.split("//")[1].split(":")
    t0 = time.perf_counter()
    deadline = t0 + seconds
    if proto == "binary":
        tasks = [binary_client(url.replace("http", "tcp"), deadline, params, out) for _ in range(clients)]
    else:
        tasks = [http_client(host, int(port), deadline, params, out) for _ in range(clients)]
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    lat = sorted(out["lat"]) or [0.0]
    return {"proto": proto, "clients": clients, "wall_s": wall, "requests_per_s": out["requests"] / wall,
            "tokens_per_s": out["tokens"] / wall, "chunks_per_s": out["chunks"] / wall,
            "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "requests": out["requests"]}


def synthetic(args):
    from llcuda_mpi.transport.server import raise_fd_limit
    raise_fd_limit(8192)
    rows = []
    for name, synth, params in (("requests", ["--synthetic-ttft-ms", "0", "--synthetic-tpot-ms", "0"],
                                 {"max_tokens": 16}),
                                ("stream", ["--synthetic-ttft-ms", "0", "--synthetic-tpot-ms", "1"],
                                 {"max_tokens": 256})):
        job = ServeJob("--backend", "synthetic", "--inflight", "100000", *synth)
        try:
            for c in args.concurrency:
                for proto in ("binary", "http"):
                    r = asyncio.run(load(job.url, proto, c, args.seconds, params))
                    r["load"] = name
                    rows.append(r)
                    print(f"{name:8s} {proto:6s} clients {c:4d}: {r['requests_per_s']:8.0f} req/s "
                          f"{r['tokens_per_s']:9.0f} tok/s {r['chunks_per_s']:8.0f} chunks/s "
                          f"p50 {r['p50_ms']:7.1f} ms p99 {r['p99_ms']:7.1f} ms ({r['requests']} requests)",
                          flush=True)
        finally:
            job.stop()
    return rows


# ---------------------------------------------------------------- engine overhead

def engine_direct_backend():
    from llcuda_mpi.backends.engine import EngineBackend, build_engine, open_model
    return EngineBackend(build_engine(open_model(""), "cpu", 8, 0, 128), "cpu")


def engine_direct_one(backend, i, args):
    from llcuda_mpi.backends.base import Completion, Request
    t0 = time.perf_counter()
    backend.submit(Request(i, prompt=args.prompt, max_tokens=args.max_tokens, ignore_eos=True))
    done = None
    while done is None:
        done = next((e for e in backend.poll(0.001) if isinstance(e, Completion)), None)
    assert done.status == "ok" and done.n_output == args.max_tokens, done
    return time.perf_counter() - t0


async def engine_interleaved(url, backend, args):
    """direct, binary, HTTP one after the other, --requests times (the box's load drifts: interleave)."""
    import httpx
    times = {"direct": [], "binary": [], "http": []}
    async with await Client.connect(url.replace("http", "tcp")) as c, httpx.AsyncClient(timeout=600) as h:
        for i in range(args.requests + 1):                  # round 0 compiles / warms up
            t_direct = engine_direct_one(backend, i, args)
            t0 = time.perf_counter()
            final = await c.complete(args.prompt, max_tokens=args.max_tokens, ignore_eos=True)
            t_binary = time.perf_counter() - t0
            assert final["n_output"] == args.max_tokens
            t0 = time.perf_counter()
            r = await h.post(url + "/completion", json={"prompt": args.prompt, "n_predict": args.max_tokens,
                                                        "ignore_eos": True, "temperature": 0, "stream": True})
            t_http = time.perf_counter() - t0
            assert r.status_code == 200
            if i:
                times["direct"].append(t_direct)
                times["binary"].append(t_binary)
                times["http"].append(t_http)
    return times


def engine(args):
    backend = engine_direct_backend()
    job = ServeJob("--backend", "engine", "--device", "cpu")
    try:
        times = asyncio.run(engine_interleaved(job.url, backend, args))
    finally:
        job.stop()
        backend.close()
    d = statistics.median(times["direct"])
    rows = []
    for path, ts in times.items():
        g = statistics.median(ts)
        rows.append({"path": path, "e2e_ms": g * 1e3, "overhead_pct": (g - d) / g * 100,
                     "all_ms": [round(t * 1e3, 1) for t in ts]})
    for r in rows:
        print(f"engine {r['path']:6s}: median E2E {r['e2e_ms']:8.1f} ms  overhead {r['overhead_pct']:5.1f} % "
              f"({args.requests} requests x {args.max_tokens} tokens; all: {r['all_ms']})", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("synthetic", "engine"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 512])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog. " * 4)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = synthetic(args) if args.what == "synthetic" else engine(args)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""The serve job end to end under mpiexec (a plain-pytest driver, like test_launch.py):
start it at -n 2 and -n 3 with the synthetic backend, talk HTTP and the binary
protocol, let our own bench job benchmark it through the llama-server backend,
then SIGTERM it: every rank exits 0. Every mpiexec is wrapped in `timeout`.
"""

import asyncio
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from llcuda_mpi.transport import protocol as p
from llcuda_mpi.transport.client import Chunk, Client, ServerError

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None,
                                reason="mpiexec not found (install the extra: pip install '.[mpich]')")


class Job:
    """A serve job in the background; `url` once its ready file appeared."""

    def __init__(self, tmp_path, n, *args, limit=240):
        self.ready = tmp_path / f"ready-{n}.json"
        self.out, self.err = tmp_path / f"serve-{n}.out", tmp_path / f"serve-{n}.err"
        cmd = ["timeout", str(limit), "mpiexec", "-n", str(n), sys.executable, "-m", "llcuda_mpi.jobs.serve",
               "--backend", "synthetic", "--port", "0", "--port-base", "0", "--ready-file", str(self.ready), *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        t0 = time.time()
        while not self.ready.exists():
            if self.proc.poll() is not None or time.time() - t0 > 120:
                self.kill()
                raise AssertionError(f"serve did not start:\n{self.text()}")
            time.sleep(0.1)
        self.info = json.loads(self.ready.read_text())
        self.url = self.info["url"]

    def text(self):
        return f"--- stdout\n{self.out.read_text()[-4000:]}\n--- stderr\n{self.err.read_text()[-6000:]}"

    def terminate(self, timeout=60) -> int:
        """SIGTERM to `timeout`, which passes it to mpiexec, which passes it to every rank."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"serve did not stop within {timeout} s after SIGTERM\n{self.text()}") from None

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.mark.parametrize("n", [2, 3])
def test_serve_http_binary_and_sigterm(tmp_path, n):
    job = Job(tmp_path, n, "--synthetic-ttft-ms", "2", "--synthetic-tpot-ms", "1")
    try:
        assert len(job.info["ranks"]) == n - 1
        with httpx.Client(base_url=job.url, timeout=30) as c:
            assert c.get("/health").json() == {"status": "ok"}
            r = c.post("/completion", json={"prompt": "a b c", "n_predict": 5})
            assert r.status_code == 200 and r.json()["tokens_predicted"] == 5 and r.json()["timings"]["predicted_n"] == 5
            with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": True}) as s:
                lines = [line for line in s.iter_lines() if line]
            assert lines[-1] == "data: [DONE]" and len(lines) >= 3
        for rank in job.info["ranks"]:                          # rank-local services
            h = httpx.get(rank["url"] + "/health", timeout=10).json()
            assert h["status"] == "ok" and h["rank"] == rank["rank"]
            assert "llcuda_rank_requests_submitted_total" in httpx.get(rank["url"] + "/metrics", timeout=10).text

        async def binary():
            async with await Client.connect(job.url.replace("http", "tcp")) as c:
                finals = await asyncio.gather(*[c.complete("one two", max_tokens=6) for _ in range(12)])
                assert all(f["n_output"] == 6 for f in finals)
                assert {f["rank"] for f in finals} == set(range(1, n))      # every worker served
                items = [it async for it in c.generate("x", max_tokens=3)]
                assert isinstance(items[0], Chunk) and items[-1]["finish_reason"] == "length"
        asyncio.run(binary())
        text = httpx.get(job.url + "/metrics", timeout=10).text
        assert 'llcuda_requests_total{api="binary",outcome="ok"} 13' in text

        async def drop_mid_stream():                  # ~4 s of tokens, dropped after the first chunk
            c = await Client.connect(job.url.replace("http", "tcp"))
            gen = c.generate("x", max_tokens=4000)
            assert isinstance(await gen.__anext__(), Chunk)
            c.writer.transport.abort()
            await c.close()
        t0 = time.time()
        asyncio.run(drop_mid_stream())
        cancelled = False                             # the worker's own count says it stopped early
        while not cancelled and time.time() - t0 < 3.0:
            cancelled = any('status="error"} 1' in httpx.get(r["url"] + "/metrics", timeout=10).text
                            for r in job.info["ranks"])
            time.sleep(0.05)
        assert cancelled, "the worker did not cancel the dropped stream"
        assert all(f'llcuda_worker_slots{{rank="{r}"}} 8' in text for r in range(1, n))
    finally:
        rc = job.terminate()
    assert rc == 0, job.text()
    assert "SIGTERM received; shutting down gracefully" in job.text() and "Traceback" not in job.text()


def test_sigterm_finishes_in_flight_work_then_cancels_what_outlives_the_grace(tmp_path):
    job = Job(tmp_path, 2, "--synthetic-ttft-ms", "1", "--synthetic-tpot-ms", "10", "--shutdown-grace", "1.5")

    async def main():
        async with await Client.connect(job.url.replace("http", "tcp")) as c:
            short = asyncio.ensure_future(c.complete("x", max_tokens=50))       # ~0.5 s: finishes
            long = asyncio.ensure_future(c.complete("x", max_tokens=2000))      # ~20 s: cancelled
            await asyncio.sleep(0.2)
            job.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            refused = None
            try:
                await c.complete("y", max_tokens=2)
            except ServerError as e:
                refused = e.code
            return await short, await asyncio.gather(long, return_exceptions=True), refused
    t0 = time.time()
    short, (long,), refused = asyncio.run(main())
    rc = job.proc.wait(60)
    assert rc == 0, job.text()
    assert short["n_output"] == 50
    assert isinstance(long, ServerError) and long.code == p.E_CANCELLED, long
    assert refused == p.E_SHUTTING_DOWN
    assert time.time() - t0 < 15, job.text()
    assert "cancelling 1 requests still in flight" in job.text()


def test_our_bench_job_benchmarks_a_serve_job(tmp_path):
    """One llcuda-mpi job benchmarks another through the llama-server backend."""
    from llcuda_mpi.results.reader import read_results
    job = Job(tmp_path, 2, "--synthetic-ttft-ms", "1", "--synthetic-tpot-ms", "1")
    out = tmp_path / "bench.h5"
    try:
        bench = subprocess.run(
            ["timeout", "180", "mpiexec", "-n", "2", sys.executable, "-m", "llcuda_mpi.jobs.bench",
             "--backend", "llama-server", "--url", job.url, "--num-prompts", "20", "--max-tokens", "8",
             "--input-len", "8", "--no-progress", "--output", str(out)],
            cwd=ROOT, capture_output=True, text=True)
    finally:
        rc = job.terminate()
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    assert rc == 0, job.text()
    r = read_results(out)
    assert len(r) == 20 and set(r.status.tolist()) == {"ok"}
    assert r.provenance["backend"] == "llama-server"


def test_user_errors_exit_2_without_a_traceback(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        p_ = subprocess.run(["timeout", "120", "mpiexec", "-n", "2", sys.executable, "-m", "llcuda_mpi.jobs.serve",
                             "--backend", "synthetic", "--port", str(busy), "--port-base", "0"],
                            cwd=ROOT, capture_output=True, text=True)
    assert p_.returncode == 2 and "Traceback" not in p_.stderr, p_.stderr
    assert f"error: 127.0.0.1:{busy}:" in p_.stderr
    p_ = subprocess.run(["timeout", "60", "mpiexec", "-n", "1", sys.executable, "-m", "llcuda_mpi.jobs.serve"],
                        cwd=ROOT, capture_output=True, text=True)
    assert p_.returncode == 2 and "needs at least two MPI ranks" in p_.stderr

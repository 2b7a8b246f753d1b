"""Launch MPI jobs from a plain `pytest` (no --with-mpi needed): the pytest-mpi
suite at -n 2 and -n 3, the abort hook, the one-rank error, and the bench job
end to end. Every mpiexec is wrapped in `timeout`.
"""

import time

import pytest

from launching import explain, mpiexec, needs_mpiexec  # tests/mpi/launching.py

pytestmark = needs_mpiexec


@pytest.mark.parametrize("n", [2, 3])
def test_pytest_mpi_suite(n):
    p = mpiexec(n, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi", "tests/mpi/test_dispatch.py"],
                limit=300)
    assert p.returncode == 0, explain(p)
    assert p.stdout.count(" passed") == n and " skipped" not in p.stdout, explain(p)


ABORT_SCRIPT = """
from llcuda_mpi import mpi
ctx = mpi.init()
if ctx.rank == 1:
    raise ValueError("boom from rank 1")
ctx.world.barrier()        # the other ranks would wait here forever without the abort
"""


def test_uncaught_exception_aborts_the_whole_job_within_seconds():
    t0 = time.time()
    p = mpiexec(3, ["-c", ABORT_SCRIPT], limit=60)
    elapsed = time.time() - t0
    assert p.returncode not in (0, 124), explain(p)       # 124: `timeout` had to kill it
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert "[rank 1] Traceback (most recent call last):" in p.stderr, explain(p)
    assert "[rank 1] ValueError: boom from rank 1" in p.stderr, explain(p)


QUIET_SCRIPT = """
import time
from llcuda_mpi import mpi
ctx = mpi.init()
for name, wait in (("quiet", lambda: mpi.quiet_barrier(ctx.world)), ("agree", lambda: mpi.agree(ctx, None, "t"))):
    if ctx.rank == 1:
        time.sleep(1.5)                       # rank 1 is busy (a model load, a compile)
    wall, cpu = time.perf_counter(), time.process_time()
    wait()
    if ctx.rank == 0:
        print(name, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2), flush=True)
"""


def test_waiting_at_a_collective_does_not_spin():
    # MPICH's blocking collectives busy-poll (a plain Barrier here: ~1.5 s of CPU for 1.5 s of waiting)
    p = mpiexec(2, ["-c", QUIET_SCRIPT], limit=60)
    assert p.returncode == 0, explain(p)
    lines = dict((line.split()[0], line.split()[1:]) for line in p.stdout.splitlines() if line.split())
    for name in ("quiet", "agree"):
        wall, cpu = map(float, lines[name])
        assert wall > 1.2, explain(p)                 # it did wait for rank 1
        assert cpu < 0.3, f"{name}: {cpu} s of CPU while waiting {wall} s\n{explain(p)}"


@pytest.mark.parametrize("entry", [["-m", "llcuda_mpi.jobs.bench"], ["jobs/bench.py"], ["-m", "llcuda_mpi", "bench"]])
def test_one_rank_job_says_it_needs_two(entry):
    p = mpiexec(1, entry, limit=60)
    assert p.returncode == 2, explain(p)
    assert "needs at least two MPI ranks" in p.stderr and "mpiexec -n 3" in p.stderr, explain(p)
    assert "Traceback" not in p.stderr


def test_bench_end_to_end_writes_a_results_file(tmp_path):
    from llcuda_mpi.results.reader import read_results
    out = tmp_path / "run.h5"
    p = mpiexec(3, ["-m", "llcuda_mpi.jobs.bench", "--backend", "synthetic",
                    "--num-prompts", "40", "--warmup", "3", "--max-tokens", "5", "--synthetic-ttft-ms", "2", "--synthetic-tpot-ms", "1", "--synthetic-error-every", "9",
                    "--synthetic-stall-every", "13", "--timeout", "0.5", "--request-rate", "400",
                    "--output", str(out)])
    assert p.returncode == 0, explain(p)
    assert out.exists() and not (tmp_path / "run.h5.tmp").exists()
    assert f"results: {out}" in p.stdout and "TTFT" in p.stdout, explain(p)
    r = read_results(out)
    assert r.complete and len(r) == 43 and r.t_end > r.t_start
    assert sorted(r.requests["request_id"].tolist()) == list(range(43))
    assert int(r.requests["warmup"].sum()) == 3
    status = dict(zip(r.requests["request_id"].tolist(), r.status.tolist()))
    errors = dict(zip(r.requests["request_id"].tolist(), r.errors))
    for i in range(43):
        if i % 13 == 12:                                   # stalled: the master's timeout
            assert status[i] == "timeout" and errors[i].startswith("master: no completion"), (i, errors[i])
        elif i % 9 == 8:
            assert status[i] == "error" and "injected" in errors[i]
        else:
            assert status[i] == "ok", (i, errors[i])
    assert r.provenance["ranks"] == 3 and r.provenance["backend"] == "synthetic"
    assert [row["rank"] for row in r.ranks] == [1, 2]
    assert sum(row["n_requests"] for row in r.ranks) == 40


def test_bench_runs_the_engine_on_the_default_model_by_default(tmp_path):
    # no --backend, no --model: the engine on the built-in model, made on first use in the cache
    from llcuda_mpi.results.reader import read_results
    out = tmp_path / "engine.h5"
    p = mpiexec(3, ["-m", "llcuda_mpi.jobs.bench", "--num-prompts", "6", "--max-tokens", "4", "--ignore-eos",
                    "--output", str(out)], limit=400, env={"LLCUDA_MPI_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 0, explain(p)
    r = read_results(out)
    assert r.provenance["backend"] == "engine"
    assert list(r.status) == ["ok"] * 6
    assert r.requests["n_output"].tolist() == [4] * 6
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").glob("default-*.gguf"))


def test_bench_user_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    p = mpiexec(2, ["-m", "llcuda_mpi.jobs.bench", "--prompts", str(bad), "-o", str(tmp_path / "x.h5")], limit=60)
    assert p.returncode == 2, explain(p)
    assert f"error: {bad}:2: \"prompt\" must be a non-empty string" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x.h5").exists()
    # --device cuda on a machine without a GPU (the simulator switched off)
    p = mpiexec(3, ["-m", "llcuda_mpi.jobs.bench", "--device", "cuda", "-o", str(tmp_path / "y.h5")], limit=120,
                env={"NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 2, explain(p)
    assert "rank 1: " in p.stderr and "rank 2: " in p.stderr and "--device cuda: no CUDA GPU visible" in p.stderr
    assert "Traceback" not in p.stderr, explain(p)


def test_bench_where_nothing_succeeds_exits_1_with_the_first_error(tmp_path):
    # a server that is not there: every request is recorded as an error, and the job says so once
    out = tmp_path / "down.h5"
    p = mpiexec(2, ["-m", "llcuda_mpi.jobs.bench", "--backend", "llama-server", "--url", "http://127.0.0.1:1",
                    "--num-prompts", "4", "-o", str(out)], limit=60)
    assert p.returncode == 1, explain(p)
    assert "llcuda-mpi bench: error: none of the 4 requests succeeded; first: error on rank 1: cannot connect" \
        in p.stderr, explain(p)
    assert "Traceback" not in p.stderr and out.exists()            # the results are kept

"""Dispatch flows under MPI (pytest-mpi): run with
    timeout 300 mpiexec -n 3 python -m pytest --with-mpi tests/mpi/test_dispatch.py
(test_launch.py does, at -n 2 and -n 3, from a plain `pytest`). Every rank
runs every test; rank 0 is the master, the others run synthetic workers.
"""

import time

import pytest

from llcuda_mpi import mpi
from llcuda_mpi.backends.base import Request
from llcuda_mpi.backends.synthetic import SyntheticBackend, SyntheticConfig
from llcuda_mpi.scheduler.master import run_master
from llcuda_mpi.scheduler.policy import Dispatcher, arrival_times
from llcuda_mpi.scheduler.worker import run_worker

MPI = pytest.importorskip("mpi4py.MPI")


@pytest.fixture
def comm():
    c = MPI.COMM_WORLD.Dup()      # a fresh message space per test
    yield c
    c.Barrier()
    c.Free()


def reqs(n, warmup=0, max_tokens=4, timeout=30.0):
    return [Request(i, prompt="a b c", max_tokens=max_tokens, timeout=timeout, warmup=i < warmup)
            for i in range(n)]


def run_job(comm, requests, synth=None, *, inflight=4, arrivals=None, concurrency=0, forward=False,
            grace=0.2):
    """Master: ({id: (Completion, rank)}, [(rank, TokenEvent)], (t_start, t_end)); worker: its stats."""
    if comm.Get_rank() == 0:
        results, tokens = {}, []

        def on_result(request, completion, rank):
            assert request.id not in results, f"request {request.id} reported twice"
            assert completion.request_id == request.id
            results[request.id] = (completion, rank)

        window = run_master(comm, Dispatcher(requests, arrivals, concurrency, grace), on_result,
                            on_tokens=lambda rank, evs: tokens.extend((rank, e) for e in evs))
        return results, tokens, window
    config = synth(comm.Get_rank()) if synth else SyntheticConfig(ttft_ms=0, tpot_ms=0)
    return run_worker(comm, SyntheticBackend(config), inflight, forward_tokens=forward)


@pytest.mark.mpi(min_size=2)
def test_context(comm):
    ctx = mpi.init(abort_on_exception=False, comm=comm)
    assert ctx.is_master == (ctx.rank == 0) and ctx.n_workers == ctx.size - 1
    assert (ctx.workers == MPI.COMM_NULL) == ctx.is_master
    if not ctx.is_master:
        assert ctx.workers.Get_size() == ctx.size - 1
    indices = ctx.node.allgather(ctx.local_worker_index)
    workers_here = [i for i in indices if i is not None]
    assert sorted(workers_here) == list(range(len(workers_here)))
    assert ctx.is_node_leader == (ctx.node_rank == 0) and 0 <= ctx.node_index < ctx.n_nodes
    assert ctx.master_on_node == (0 in ctx.node.allgather(ctx.rank))
    assert mpi.pick_device(ctx, "cpu") == mpi.Device("cpu")


@pytest.mark.mpi(min_size=2)
def test_closed_loop_every_request_ok(comm):
    out = run_job(comm, reqs(60), inflight=3)
    if comm.Get_rank() == 0:
        results, tokens, (t0, t1) = out
        assert sorted(results) == list(range(60)) and tokens == []
        assert {c.status for c, _ in results.values()} == {"ok"}
        assert {rank for _, rank in results.values()} == set(range(1, comm.Get_size()))
        assert t1 >= t0
    n_ok = 0 if comm.Get_rank() == 0 else out.n_ok
    assert comm.allreduce(n_ok) == 60                 # the workers' own counts agree


@pytest.mark.mpi(min_size=2)
def test_concurrency_cap_holds(comm):
    synth = lambda rank: SyntheticConfig(ttft_ms=2, tpot_ms=0)   # noqa: E731
    out = run_job(comm, reqs(24), synth, inflight=8, concurrency=2)
    if comm.Get_rank() == 0:
        results, _, _ = out
        spans = sorted((c.t_submit, 1) for c, _ in results.values()) + \
            sorted((c.t_end, -1) for c, _ in results.values())
        level = peak = 0
        for _, step in sorted(spans, key=lambda s: (s[0], s[1])):
            level += step
            peak = max(peak, level)
        assert peak <= 2


@pytest.mark.mpi(min_size=2)
def test_faults_are_recorded_not_lost(comm):
    # ids % 5 == 4 fail in the backend; ids % 7 == 6 stall until the master's timeout
    synth = lambda rank: SyntheticConfig(ttft_ms=1, tpot_ms=1, error_every=5, stall_every=7)  # noqa: E731
    out = run_job(comm, reqs(30, timeout=0.3), synth, inflight=4, grace=0.1)
    if comm.Get_rank() == 0:
        results, _, _ = out
        assert sorted(results) == list(range(30))
        for i, (c, _) in results.items():
            if i % 7 == 6:
                assert c.status == "timeout" and c.error.startswith("master: no completion"), (i, c)
            elif i % 5 == 4:
                assert c.status == "error" and "injected" in c.error, (i, c)
            else:
                assert c.status == "ok", (i, c)


@pytest.mark.mpi(min_size=2)
def test_a_failing_backend_retires_its_worker(comm):
    # rank 1's backend dies after 3 completions; the others (if any) carry on
    synth = lambda rank: SyntheticConfig(ttft_ms=1, tpot_ms=0, crash_after=3 if rank == 1 else 0)  # noqa: E731
    out = run_job(comm, reqs(40), synth, inflight=2)
    if comm.Get_rank() == 0:
        results, _, _ = out
        assert sorted(results) == list(range(40))
        errors = [c.error for c, _ in results.values() if c.status == "error"]
        assert any("backend failed: RuntimeError: synthetic backend crashed" in e for e in errors)
        if comm.Get_size() == 2:
            assert any(e == "no live worker left" for e in errors)
        else:
            assert sum(c.status == "ok" for c, _ in results.values()) >= 40 - 3 - 2 - 2
    elif comm.Get_rank() == 1:
        assert out.n_error >= 1


@pytest.mark.mpi(min_size=2)
def test_token_events_are_forwarded_in_order(comm):
    synth = lambda rank: SyntheticConfig(ttft_ms=1, tpot_ms=1)  # noqa: E731
    out = run_job(comm, reqs(10, max_tokens=6), synth, forward=True)
    if comm.Get_rank() == 0:
        results, tokens, _ = out
        per_request = {}
        for rank, ev in tokens:
            assert results[ev.request_id][1] == rank
            per_request.setdefault(ev.request_id, []).append(ev)
        for rid, (c, _) in results.items():
            evs = per_request[rid]
            assert sum(e.n_tokens for e in evs) == c.n_output == 6
            assert "".join(e.text for e in evs) == c.text
            assert [e.t for e in evs] == sorted(e.t for e in evs)


@pytest.mark.mpi(min_size=2)
def test_open_loop_follows_arrivals_after_warmup(comm):
    arrivals = arrival_times(12, 100.0, 1.0, seed=4)
    synth = lambda rank: SyntheticConfig(ttft_ms=1, tpot_ms=1)  # noqa: E731
    out = run_job(comm, reqs(14, warmup=2), synth, inflight=16, arrivals=arrivals)
    if comm.Get_rank() == 0:
        results, _, (t_start, t_end) = out
        warm_end = max(results[i][0].t_end for i in (0, 1))
        measured = [results[i][0] for i in range(2, 14)]
        assert min(c.t_submit for c in measured) >= warm_end
        assert t_start >= warm_end - 0.01
        for c, offset in zip(measured, arrivals):
            assert c.t_submit >= t_start + offset - 1e-3        # never early
            assert c.t_submit <= t_start + offset + 2.0          # and not badly late (loaded CI box)
        assert t_end - t_start >= arrivals[-1]


@pytest.mark.mpi(min_size=2)
def test_idle_worker_does_not_spin(comm):
    """A worker waiting for slow requests uses little CPU (no busy-poll in MPI)."""
    synth = lambda rank: SyntheticConfig(ttft_ms=400, tpot_ms=0)  # noqa: E731
    cpu0 = time.process_time()
    out = run_job(comm, reqs(comm.Get_size() - 1), synth, inflight=1)
    cpu = time.process_time() - cpu0
    if comm.Get_rank() != 0:
        assert out.n_ok == 1
    assert cpu < 0.25, f"rank {comm.Get_rank()} used {cpu:.2f} s of CPU in a 0.4 s idle wait"


@pytest.mark.mpi(min_size=2)
def test_master_step_with_requests_added_on_the_fly(comm):
    """The serve pattern: the master steps in its own loop and adds requests as they come."""
    from llcuda_mpi.scheduler.master import Master
    if comm.Get_rank() == 0:
        results = {}
        d = Dispatcher([])
        master = Master(comm, d, lambda r, c, rank: results.setdefault(r.id, c))
        for wave in range(3):
            for i in range(5):
                d.add(Request(100 * wave + i, prompt="x", max_tokens=2))
            t_stop = time.time() + 30
            while not d.done() and time.time() < t_stop:
                if not master.step():
                    time.sleep(1e-4)
            assert d.done()
        master.shutdown()
        assert sorted(results) == [100 * w + i for w in range(3) for i in range(5)]
        assert {c.status for c in results.values()} == {"ok"}
    else:
        run_worker(comm, SyntheticBackend(SyntheticConfig(ttft_ms=1, tpot_ms=1)), 2)

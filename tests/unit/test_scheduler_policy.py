"""Dispatch policy without MPI: arrivals, credits, caps, warmup, timeouts, failures."""

import math

import numpy as np
import pytest

from llcuda_mpi.backends.base import Request
from llcuda_mpi.scheduler.policy import Dispatcher, arrival_times


def reqs(n, warmup=0, timeout=10.0):
    return [Request(i, prompt="p", timeout=timeout, warmup=i < warmup) for i in range(n)]


def ids(assignment):
    return {w: [r.id for r in rs] for w, rs in assignment.items()}


# ---------------------------------------------------------------- arrivals

def test_closed_loop_arrivals_are_zero():
    assert arrival_times(5, math.inf).tolist() == [0.0] * 5


def test_arrivals_are_seeded_and_have_the_requested_rate():
    a = arrival_times(20000, 100.0, 1.0, seed=1)
    assert np.array_equal(a, arrival_times(20000, 100.0, 1.0, seed=1))
    assert not np.array_equal(a, arrival_times(20000, 100.0, 1.0, seed=2))
    assert a[0] == 0 and np.all(np.diff(a) >= 0)
    gaps = np.diff(a)
    assert abs(gaps.mean() - 0.01) <= 0.03 * 0.01
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05          # Poisson: CV = 1


@pytest.mark.parametrize("k", [0.25, 4.0])
def test_burstiness_is_the_gamma_shape(k):
    gaps = np.diff(arrival_times(40000, 50.0, k, seed=3))
    assert abs(gaps.mean() - 0.02) <= 0.05 * 0.02
    assert abs((gaps.std() / gaps.mean()) ** 2 - 1 / k) <= 0.1 / k   # CV^2 = 1/shape


@pytest.mark.parametrize("rate, k", [(0, 1), (-1, 1), (10, 0)])
def test_bad_arrival_parameters(rate, k):
    with pytest.raises(ValueError):
        arrival_times(3, rate, k)


# ---------------------------------------------------------------- closed loop

def test_inflight_credits_cap_each_worker_and_round_robin():
    d = Dispatcher(reqs(10))
    d.on_worker(1, 2)
    d.on_worker(2, 2)
    assert ids(d.assign(0.0)) == {1: [0, 2], 2: [1, 3]}
    assert d.assign(0.0) == {}                     # no slots left
    assert d.on_done(2, 1).id == 1
    assert ids(d.assign(0.0)) == {2: [4]}          # the slot goes back to who freed it
    assert len(d.outstanding) == 4


def test_global_concurrency_cap():
    d = Dispatcher(reqs(6), concurrency=3)
    d.on_worker(1, 8)
    d.on_worker(2, 8)
    assert sum(len(v) for v in d.assign(0.0).values()) == 3
    d.on_done(1, 0)
    assert ids(d.assign(0.0)) == {2: [3]}


def test_every_request_ends_once_and_done():
    d = Dispatcher(reqs(7))
    d.on_worker(1, 3)
    finished = []
    while not d.done():
        for w, batch in d.assign(0.0).items():
            for r in batch:
                finished.append(d.on_done(w, r.id).id)
    assert sorted(finished) == list(range(7)) and d.n_finished == 7


# ---------------------------------------------------------------- open loop

def test_open_loop_releases_by_arrival_time():
    d = Dispatcher(reqs(3), arrivals=[0.0, 1.0, 2.5])
    d.on_worker(1, 8)
    assert ids(d.assign(100.0)) == {1: [0]}        # the window starts at the first assign
    assert d.t_start == 100.0 and d.next_wakeup() == 101.0
    assert d.assign(100.9) == {}
    assert ids(d.assign(101.0)) == {1: [1]}
    assert d.next_wakeup() == 102.5


def test_queued_arrivals_wait_for_slots():
    d = Dispatcher(reqs(3), arrivals=[0.0, 0.1, 0.2])
    d.on_worker(1, 1)
    assert ids(d.assign(0.0)) == {1: [0]}
    assert d.assign(5.0) == {}                     # arrived, but no slot
    d.on_done(1, 0)
    assert ids(d.assign(5.0)) == {1: [1]}


# ---------------------------------------------------------------- warmup

def test_warmup_runs_first_and_holds_the_measured_window():
    d = Dispatcher(reqs(5, warmup=2), arrivals=[0.0, 0.0, 0.0])
    d.on_worker(1, 8)
    assert ids(d.assign(1.0)) == {1: [0, 1]}       # only warmups, though slots are free
    assert d.t_start is None and d.warmup_left == 2
    d.on_done(1, 0)
    assert d.assign(2.0) == {}
    d.on_done(1, 1)
    assert d.warmup_left == 0
    assert ids(d.assign(3.0)) == {1: [2, 3, 4]}
    assert d.t_start == 3.0


def test_warmup_must_come_first():
    r = reqs(3)
    r[2].warmup = True
    with pytest.raises(ValueError, match="warmup requests must come before"):
        Dispatcher(r)


def test_arrivals_must_match_measured_requests():
    with pytest.raises(ValueError, match="2 arrival times for 3 measured"):
        Dispatcher(reqs(4, warmup=1), arrivals=[0, 1])


# ---------------------------------------------------------------- timeouts and failures

def test_master_timeout_frees_the_slot_and_drops_the_late_completion():
    d = Dispatcher(reqs(2, timeout=5.0), timeout_grace=1.0)
    d.on_worker(1, 1)
    assert ids(d.assign(10.0)) == {1: [0]}
    assert d.next_wakeup() == 16.0
    assert d.expire(15.9) == []
    (w, r), = d.expire(16.0)
    assert (w, r.id) == (1, 0)
    assert ids(d.assign(16.0)) == {1: [1]}         # slot given back at once
    assert d.on_done(1, 0) is None                 # the late completion of 0
    assert d.credits[1] == 0                       # ... returns no extra slot
    assert d.on_done(1, 1).id == 1 and d.done()


def test_worker_failure_returns_its_requests_and_others_continue():
    d = Dispatcher(reqs(6))
    d.on_worker(1, 2)
    d.on_worker(2, 2)
    d.assign(0.0)
    lost = d.on_worker_failed(1)
    assert sorted(r.id for r in lost) == [0, 2]
    assert d.live_workers() == [2]
    d.on_done(2, 1)
    assert ids(d.assign(0.0)) == {2: [4]}
    assert d.on_done(1, 0) is None                 # a straggler from the failed worker
    assert d.fail_pending() == []                  # a live worker remains


def test_no_live_worker_fails_the_pending_requests():
    d = Dispatcher(reqs(5, warmup=1))
    d.on_worker(1, 1)
    d.assign(0.0)
    assert [r.id for r in d.on_worker_failed(1)] == [0]
    assert [r.id for r in d.fail_pending()] == [1, 2, 3, 4]
    assert d.done() and d.warmup_left == 0


def test_duplicate_ids_and_bad_slots():
    with pytest.raises(ValueError, match="unique"):
        Dispatcher([Request(1), Request(1)])
    with pytest.raises(ValueError, match="announced 0 slots"):
        Dispatcher(reqs(1)).on_worker(1, 0)


def test_add_requests_while_running():
    d = Dispatcher([])
    assert d.done()
    d.on_worker(1, 2)
    d.add(Request(10, prompt="p"))
    d.add(Request(11, prompt="p"))
    assert not d.done() and ids(d.assign(5.0)) == {1: [10, 11]}
    with pytest.raises(ValueError, match="already queued or running"):
        d.add(Request(10))
    with pytest.raises(ValueError, match="measured requests only"):
        d.add(Request(12, warmup=True))
    d.on_done(1, 10)
    d.on_done(1, 11)
    assert d.done()

"""The scheduler's cancel path the serve gateway uses (pure policy, no MPI)."""

from llcuda_mpi.backends.base import Request
from llcuda_mpi.scheduler.policy import Dispatcher


def test_cancel_queued_running_and_unknown_requests():
    d = Dispatcher([], None)
    for i in range(4):
        d.add(Request(i, prompt="x"))
    d.on_worker(1, 2)
    sent = d.assign(0.0)
    assert [r.id for r in sent[1]] == [0, 1] and [r.id for r in d.queued()] == [2, 3]
    assert d.cancel(1) == ("running", 1)             # the worker is told; its completion still comes
    assert 1 in d.outstanding
    kind, request = d.cancel(3)
    assert kind == "queued" and request.id == 3 and [r.id for r in d.queued()] == [2]
    assert d.cancel(3) is None and d.cancel(99) is None
    assert d.on_done(1, 0).id == 0 and d.on_done(1, 1).id == 1
    assert [r.id for r in d.assign(0.0)[1]] == [2]
    assert d.on_done(1, 2).id == 2
    assert d.done() and d.n_finished == d.n_total == 4
    assert d.cancel(2) is None                        # already finished


def test_add_after_cancel_and_ids_reusable_only_when_gone():
    d = Dispatcher([], None)
    d.add(Request(5, prompt="x"))
    assert d.cancel(5)[0] == "queued"
    d.add(Request(5, prompt="x"))                     # the id is free again
    assert [r.id for r in d.queued()] == [5] and not d.done()

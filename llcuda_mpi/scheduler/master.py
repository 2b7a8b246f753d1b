"""The master loop: the thin MPI shell around `policy.Dispatcher`.

Every request submitted ends in exactly one `on_result(request, completion,
rank)` call: the worker's Completion, or one the master makes itself for a
request past its deadline ("timeout"), a worker that retired ("error") or
requests left with no live worker ("error"). Late completions of requests the
master already gave up on are dropped.

Shutdown: when every request has a result the master sends STOP to each
worker and keeps receiving (dropping late messages) until each has said BYE,
so that no message is left unmatched at MPI_Finalize.
"""

import time

from mpi4py import MPI

from llcuda_mpi import log
from llcuda_mpi.backends.base import Completion, Request
from llcuda_mpi.scheduler import messages as m
from llcuda_mpi.scheduler.policy import Dispatcher


def _master_completion(request: Request, status: str, error: str, t_sent: float) -> Completion:
    return Completion(request.id, status, error, t_submit=t_sent, t_end=time.time())


def run_master(comm, dispatcher: Dispatcher, on_result, *, on_tokens=None, on_tick=None,
               backoff: m.Backoff | None = None) -> tuple[float, float]:
    """Run every request of `dispatcher` through the workers of `comm` (ranks 1..).

    on_result(request, completion, rank) is called once per request;
    on_tokens(rank, [TokenEvent]) for forwarded token events; on_tick() once per
    loop turn (periodic flushes, progress redraws).
    Returns the measured window (t_start, t_end) in time.time() seconds.
    """
    backoff = backoff or m.Backoff()
    workers = list(range(1, comm.Get_size()))
    sent_at: dict[int, float] = {}         # request id -> time sent
    sends: list = []
    greeted: set[int] = set()              # workers that said READY
    t_end = None

    def finish(request, completion, rank):
        sent_at.pop(request.id, None)
        on_result(request, completion, rank)

    status = MPI.Status()
    while not dispatcher.done():
        got = False
        while comm.iprobe(source=MPI.ANY_SOURCE, tag=m.TAG, status=status):
            rank = status.Get_source()
            kind, payload = comm.recv(source=rank, tag=m.TAG)
            got = True
            _handle(rank, kind, payload, dispatcher, finish, on_tokens, greeted)
        now = time.time()
        for rank, request in dispatcher.expire(now):
            sends.append(comm.isend((m.CANCEL, [request.id]), dest=rank, tag=m.TAG))
            t_sent = sent_at.get(request.id, now)
            finish(request, _master_completion(
                request, "timeout", f"master: no completion from rank {rank} within "
                f"{request.timeout:g} s + {dispatcher.timeout_grace:g} s grace; cancelled", t_sent), rank)
        if len(greeted) == len(workers) and not dispatcher.live_workers():
            for request in dispatcher.fail_pending():
                finish(request, _master_completion(request, "error", "no live worker left", now), 0)
        for rank, batch in dispatcher.assign(now).items():
            for request in batch:
                sent_at[request.id] = now
            sends.append(comm.isend((m.RUN, batch), dest=rank, tag=m.TAG))
            got = True
        if on_tick is not None:
            on_tick()
        if dispatcher.done() and t_end is None:
            t_end = time.time()
        if got:
            backoff.reset()
            sends = m.prune_sends(sends)
        else:
            backoff.sleep(dispatcher.next_wakeup() - time.time())
    t_end = t_end or time.time()
    _shutdown(comm, workers, sends, backoff)
    t_start = dispatcher.t_start if dispatcher.t_start is not None else t_end
    return t_start, t_end


def _handle(rank, kind, payload, dispatcher, finish, on_tokens, greeted):
    if kind == m.DONE:
        for completion in payload:
            request = dispatcher.on_done(rank, completion.request_id)
            if request is not None:          # else: the master already timed it out
                finish(request, completion, rank)
    elif kind == m.TOKENS:
        if on_tokens is not None:
            on_tokens(rank, payload)
    elif kind == m.READY:
        greeted.add(rank)
        dispatcher.on_worker(rank, payload)
    elif kind == m.RETIRE:
        log.warning("rank %d retired: %s", rank, payload)
        for request in dispatcher.on_worker_failed(rank):
            finish(request, _master_completion(request, "error", f"rank {rank} retired: {payload}",
                                               time.time()), rank)
    else:
        raise RuntimeError(f"master: unexpected message {kind!r} from rank {rank}")


def _shutdown(comm, workers, sends, backoff):
    """STOP every worker, then drain until each said BYE (late results are dropped)."""
    sends += [comm.isend((m.STOP, None), dest=rank, tag=m.TAG) for rank in workers]
    waiting = set(workers)
    status = MPI.Status()
    while waiting:
        if comm.iprobe(source=MPI.ANY_SOURCE, tag=m.TAG, status=status):
            rank = status.Get_source()
            kind, _ = comm.recv(source=rank, tag=m.TAG)
            if kind == m.BYE:
                waiting.discard(rank)
            backoff.reset()
        else:
            backoff.sleep()
    m.wait_sends(sends, backoff)

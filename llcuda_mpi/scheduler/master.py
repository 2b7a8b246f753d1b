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


class Master:
    """The master's side of the protocol, one `step()` at a time.

    `run_master` drives it for bench; a serve job calls `step()` from its own
    loop, between network reads, after `dispatcher.add(request)`.
    """

    def __init__(self, comm, dispatcher: Dispatcher, on_result, *, on_tokens=None):
        self.comm, self.dispatcher = comm, dispatcher
        self.on_result, self.on_tokens = on_result, on_tokens
        self.workers = list(range(1, comm.Get_size()))
        self.greeted: set[int] = set()          # workers that said READY
        self.sent_at: dict[int, float] = {}     # request id -> time sent
        self.sends: list = []                   # isend requests not yet complete
        self._status = MPI.Status()

    def _finish(self, request, completion, rank):
        self.sent_at.pop(request.id, None)
        self.on_result(request, completion, rank)

    def step(self) -> bool:
        """Receive everything, expire overdue requests, send what may start; True if anything moved."""
        comm, d = self.comm, self.dispatcher
        moved = False
        while comm.iprobe(source=MPI.ANY_SOURCE, tag=m.TAG, status=self._status):
            rank = self._status.Get_source()
            kind, payload = comm.recv(source=rank, tag=m.TAG)
            moved = True
            self._handle(rank, kind, payload)
        now = time.time()
        for rank, request in d.expire(now):
            self.sends.append(comm.isend((m.CANCEL, [request.id]), dest=rank, tag=m.TAG))
            self._finish(request, _master_completion(
                request, "timeout", f"master: no completion from rank {rank} within {request.timeout:g} s"
                f" + {d.timeout_grace:g} s grace; cancelled", self.sent_at.get(request.id, now)), rank)
            moved = True
        if len(self.greeted) == len(self.workers) and not d.live_workers():
            for request in d.fail_pending():
                self._finish(request, _master_completion(request, "error", "no live worker left", now), 0)
        for rank, batch in d.assign(now).items():
            for request in batch:
                self.sent_at[request.id] = now
            self.sends.append(comm.isend((m.RUN, batch), dest=rank, tag=m.TAG))
            moved = True
        if moved:
            self.sends = m.prune_sends(self.sends)
        return moved

    def cancel(self, request_id: int) -> bool:
        """Cancel one request (serve: its client went away). A queued one ends here with
        status "error", error "cancelled"; a running one's worker is told, and its own
        completion ("cancelled", or the result if it was faster) comes back as usual."""
        where = self.dispatcher.cancel(request_id)
        if where is None:
            return False
        kind, what = where
        if kind == "queued":
            now = time.time()
            self._finish(what, Completion(what.id, "error", "cancelled", t_submit=now, t_end=now), 0)
        else:
            self.sends.append(self.comm.isend((m.CANCEL, [request_id]), dest=what, tag=m.TAG))
        return True

    def _handle(self, rank, kind, payload):
        d = self.dispatcher
        if kind == m.DONE:
            for completion in payload:
                request = d.on_done(rank, completion.request_id)
                if request is not None:          # else: the master already timed it out
                    self._finish(request, completion, rank)
        elif kind == m.TOKENS:
            if self.on_tokens is not None:
                self.on_tokens(rank, payload)
        elif kind == m.READY:
            self.greeted.add(rank)
            d.on_worker(rank, payload)
        elif kind == m.RETIRE:
            log.warning("rank %d retired: %s", rank, payload)
            for request in d.on_worker_failed(rank):
                self._finish(request, _master_completion(
                    request, "error", f"rank {rank} retired: {payload}",
                    self.sent_at.get(request.id, time.time())), rank)
        else:
            raise RuntimeError(f"master: unexpected message {kind!r} from rank {rank}")

    def shutdown(self, backoff: m.Backoff | None = None) -> None:
        """STOP every worker and wait for each one's BYE."""
        _shutdown(self.comm, self.workers, self.sends, backoff or m.Backoff())
        self.sends = []


def run_master(comm, dispatcher: Dispatcher, on_result, *, on_tokens=None, on_tick=None,
               backoff: m.Backoff | None = None) -> tuple[float, float]:
    """Run every request of `dispatcher` through the workers of `comm` (ranks 1..).

    on_result(request, completion, rank) is called once per request;
    on_tokens(rank, [TokenEvent]) for forwarded token events; on_tick() once per
    loop turn (periodic flushes, progress redraws).
    Returns the measured window (t_start, t_end) in time.time() seconds.
    """
    backoff = backoff or m.Backoff()
    master = Master(comm, dispatcher, on_result, on_tokens=on_tokens)
    while not dispatcher.done():
        moved = master.step()
        if on_tick is not None:
            on_tick()
        if moved:
            backoff.reset()
        elif not dispatcher.done():
            backoff.sleep(dispatcher.next_wakeup() - time.time())
    t_end = time.time()
    master.shutdown(backoff)
    t_start = dispatcher.t_start if dispatcher.t_start is not None else t_end
    return t_start, t_end


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

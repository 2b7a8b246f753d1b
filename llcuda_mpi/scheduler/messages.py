"""What master and workers say to each other, and how they wait without spinning.

Every message is a small pickled tuple `(kind, payload)` sent with lowercase
mpi4py calls on one tag, so that MPI's non-overtaking rule keeps them in order
(a cancel never passes the run it cancels). Payloads are batched: one message
per peer per loop turn.

master -> worker                      worker -> master
  RUN     [Request, ...]                READY   slots (free request slots)
  CANCEL  [request id, ...]             DONE    [Completion, ...]
  STOP    None                          TOKENS  [TokenEvent, ...]   (serve only)
                                        RETIRE  "error text" (backend failed)
                                        BYE     None (last message, after STOP)

Idle waiting: MPICH busy-polls inside blocking calls (recv, wait), which
starves other ranks when ranks outnumber cores. Nobody blocks in MPI: both
sides Iprobe, and when nothing came, sleep with exponential backoff
(`Backoff`), reset as soon as something happens.
"""

import time

TAG = 7

RUN, CANCEL, STOP = "run", "cancel", "stop"
READY, DONE, TOKENS, RETIRE, BYE = "ready", "done", "tokens", "retire", "bye"


class Backoff:
    """Sleep lengths for an idle loop: 0 for `spins` turns, then min_s doubling to max_s."""

    def __init__(self, min_s: float = 50e-6, max_s: float = 1e-3, spins: int = 2):
        self.min_s, self.max_s, self.spins = min_s, max_s, spins
        self.reset()

    def reset(self) -> None:
        self._idle = 0
        self._sleep = self.min_s

    def next(self) -> float:
        """The next sleep length (s); grows while nothing happens."""
        self._idle += 1
        if self._idle <= self.spins:
            return 0.0
        s = self._sleep
        self._sleep = min(self._sleep * 2, self.max_s)
        return s

    def sleep(self, limit: float = float("inf")) -> None:
        s = min(self.next(), max(limit, 0.0))
        if s > 0:
            time.sleep(s)


def prune_sends(pending: list) -> list:
    """Drop completed isend requests (mpi4py Request objects keep their buffers alive)."""
    return [r for r in pending if not r.Test()]


def wait_sends(pending: list, backoff: Backoff | None = None) -> None:
    """Wait for isends to complete without blocking inside MPI."""
    backoff = backoff or Backoff()
    while pending:
        pending = prune_sends(pending)
        if pending:
            backoff.sleep()

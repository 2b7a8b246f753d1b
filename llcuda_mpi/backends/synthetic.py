"""`synthetic`: a deterministic token-timing model with no model behind it.

Request r submitted at t0 with p prompt tokens emits max_tokens tokens at

    t_first = t0 + ttft + prefill_per_token * p
    t_i     = t_first + i * tpot          (i = 0 .. max_tokens-1)

and the Completion carries exactly those times, so tests can assert TTFT and
TPOT to the microsecond whatever the polling jitter. At zero latency a request
costs a few microseconds (one TokenEvent chunk, one Completion): that is what
the dispatch benchmark measures. Prompt tokens are counted as whitespace words
(or len(prompt_tokens)).

Fault injection for tests of the scheduler (all off by default), by request id:
  --synthetic-error-every N   requests with id % N == N-1 fail with an error
  --synthetic-stall-every N   ... never complete, ignoring their own timeout
                              (a stuck server; only cancel or the master's
                              timeout ends them)
  --synthetic-crash-after N   poll() raises after N completions (a backend that dies)
"""

import heapq
import time
from dataclasses import dataclass, field, fields

from llcuda_mpi.backends.base import Backend, Completion, Request, TokenEvent

WORDS = (" the", " of", " and", " to", " in", " a", " is", " that", " for", " it",
         " as", " was", " with", " be", " by", " on", " not", " he", " this", " are")


@dataclass
class SyntheticConfig:
    ttft_ms: float = 20.0
    tpot_ms: float = 5.0
    prefill_ms_per_token: float = 0.0
    error_every: int = 0
    stall_every: int = 0
    crash_after: int = 0

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"--synthetic-{f.name.replace('_', '-')} must be >= 0, "
                                 f"got {getattr(self, f.name)}")


@dataclass
class _Active:
    request: Request
    t_submit: float
    t_first: float
    deadline: float
    n_prompt: int
    emitted: int = 0
    times: list = field(default_factory=list)


def _words(request_id: int, start: int, stop: int) -> str:
    return "".join(WORDS[(request_id * 7 + i) % len(WORDS)] for i in range(start, stop))


class SyntheticBackend(Backend):
    name = "synthetic"
    uses_device = False  # the worker need not probe for a GPU

    def __init__(self, config: SyntheticConfig | None = None):
        self.config = config or SyntheticConfig()
        self._ttft = self.config.ttft_ms / 1e3
        self._tpot = self.config.tpot_ms / 1e3
        self._prefill = self.config.prefill_ms_per_token / 1e3
        self._active: dict[int, _Active] = {}
        self._stalled: dict[int, _Active] = {}
        self._heap: list[tuple[float, int]] = []   # (next due time, request id)
        self._ready: list = []                      # events due at the next poll
        self._n_completed = 0

    # ---------------------------------------------------------------- registry
    @classmethod
    def add_arguments(cls, group):
        d = SyntheticConfig()
        group.add_argument("--synthetic-ttft-ms", type=float, default=d.ttft_ms, metavar="MS",
                           help="time to first token (default %(default)s)")
        group.add_argument("--synthetic-tpot-ms", type=float, default=d.tpot_ms, metavar="MS",
                           help="time per output token after the first (default %(default)s)")
        group.add_argument("--synthetic-prefill-ms-per-token", type=float, default=d.prefill_ms_per_token,
                           metavar="MS", help="extra TTFT per prompt token (default %(default)s)")
        group.add_argument("--synthetic-error-every", type=int, default=0, metavar="N",
                           help="fault injection: request ids with id %% N == N-1 fail")
        group.add_argument("--synthetic-stall-every", type=int, default=0, metavar="N",
                           help="fault injection: request ids with id %% N == N-1 never complete")
        group.add_argument("--synthetic-crash-after", type=int, default=0, metavar="N",
                           help="fault injection: the backend raises after N completions")

    @classmethod
    def from_args(cls, args, worker_index, device):
        return cls(SyntheticConfig(
            ttft_ms=args.synthetic_ttft_ms, tpot_ms=args.synthetic_tpot_ms,
            prefill_ms_per_token=args.synthetic_prefill_ms_per_token,
            error_every=args.synthetic_error_every, stall_every=args.synthetic_stall_every,
            crash_after=args.synthetic_crash_after))

    # ---------------------------------------------------------------- interface
    def submit(self, request: Request) -> None:
        now = time.time()
        n_prompt = len(request.prompt_tokens) if request.prompt_tokens is not None else \
            len((request.prompt or "").split())
        st = _Active(request, now, now + self._ttft + self._prefill * n_prompt,
                     now + request.timeout, n_prompt)
        rid = request.id
        if self._injected(self.config.stall_every, rid):
            self._stalled[rid] = st
            return
        if self._injected(self.config.error_every, rid):
            self._ready.append(self._finish(st, "error", "synthetic: injected error", now))
            return
        self._active[rid] = st
        heapq.heappush(self._heap, (min(st.t_first, st.deadline), rid))

    def poll(self, timeout: float) -> list:
        if self.config.crash_after and self._n_completed >= self.config.crash_after:
            raise RuntimeError(f"synthetic backend crashed after {self._n_completed} completions "
                               f"(--synthetic-crash-after {self.config.crash_after})")
        events, self._ready = self._ready, []
        now = time.time()
        if not events:
            due = self._heap[0][0] if self._heap else now + timeout
            if due > now:
                time.sleep(max(0.0, min(due, now + timeout) - now))
                now = time.time()
        while self._heap and self._heap[0][0] <= now:
            _, rid = heapq.heappop(self._heap)
            st = self._active.get(rid)
            if st is not None:  # else cancelled
                self._advance(st, now, events)
        return events

    def cancel(self, request_id: int) -> None:
        st = self._active.pop(request_id, None) or self._stalled.pop(request_id, None)
        if st is not None:
            self._ready.append(self._finish(st, "error", "cancelled", time.time()))

    def busy(self) -> int:
        return len(self._active) + len(self._stalled) + sum(isinstance(e, Completion) for e in self._ready)

    def describe(self) -> dict:
        c = self.config
        return {"backend": self.name, "ttft_ms": c.ttft_ms, "tpot_ms": c.tpot_ms,
                "prefill_ms_per_token": c.prefill_ms_per_token}

    # ---------------------------------------------------------------- model
    @staticmethod
    def _injected(every: int, rid: int) -> bool:
        return every > 0 and rid % every == every - 1

    def _advance(self, st: _Active, now: float, events: list) -> None:
        """Emit the tokens due by `now` as one chunk; finish or reschedule."""
        rid, n_target = st.request.id, st.request.max_tokens
        horizon = min(now, st.deadline)
        if horizon < st.t_first:
            n_due = 0
        elif self._tpot > 0:
            # count i with t_first + i*tpot <= horizon, using the very expression that
            # scheduled the next token below (float rounding must not stall a request)
            n_due = min(n_target, int((horizon - st.t_first) / self._tpot) + 1)
            while n_due < n_target and st.t_first + n_due * self._tpot <= horizon:
                n_due += 1
        else:
            n_due = n_target
        if n_due > st.emitted:
            t0, tpot = st.t_first, self._tpot
            st.times.extend(t0 + i * tpot for i in range(st.emitted, n_due))
            events.append(TokenEvent(rid, st.times[-1], text=_words(rid, st.emitted, n_due),
                                     n_tokens=n_due - st.emitted))
            st.emitted = n_due
        if st.emitted >= n_target:
            events.append(self._finish(st, "ok", "", st.times[-1] if st.times else now, "length"))
        elif now >= st.deadline:
            events.append(self._finish(st, "timeout", f"synthetic: exceeded the {st.request.timeout:g} s "
                                       f"timeout after {st.emitted} of {n_target} tokens", st.deadline))
        else:
            nxt = st.t_first + st.emitted * self._tpot
            heapq.heappush(self._heap, (min(nxt, st.deadline), rid))

    def _finish(self, st: _Active, status: str, error: str, t_end: float, reason: str = "") -> Completion:
        rid = st.request.id
        self._active.pop(rid, None)
        self._stalled.pop(rid, None)
        self._n_completed += 1
        return Completion(
            request_id=rid, status=status, error=error, t_submit=st.t_submit,
            t_first=st.times[0] if st.times else 0.0, t_end=t_end, n_prompt=st.n_prompt,
            n_output=st.emitted, token_times=st.times, text=_words(rid, 0, st.emitted),
            finish_reason=reason)

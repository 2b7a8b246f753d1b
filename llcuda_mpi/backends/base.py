"""The one interface every backend implements.

A worker owns one backend. It submits requests, then calls `poll(timeout)`
in its loop; `poll` advances the backend (an engine step, a network read, a
timer) for at most `timeout` seconds and returns the events that happened:
`TokenEvent`s as tokens stream out and exactly one `Completion` per submitted
request, whatever happens to it (ok, error or timeout). A backend never raises
for a per-request failure: failures are data.

Times are `time.time()` seconds (wall clock, comparable across ranks on one
host and, with NTP, across nodes); durations are derived in the results layer.
"""

from dataclasses import dataclass, field


@dataclass
class Request:
    id: int                                 # unique within a job
    prompt: str | None = None               # text prompt, or
    prompt_tokens: list[int] | None = None  # token ids (no BOS added)
    max_tokens: int = 128
    ignore_eos: bool = False
    temperature: float = 0.0                # 0 = greedy
    top_k: int = 0                          # 0 = off
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    timeout: float = 600.0                  # seconds from submission
    warmup: bool = False                    # run, but excluded from statistics
    stream: bool = True


@dataclass
class TokenEvent:
    request_id: int
    t: float                                # when the chunk arrived
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    n_tokens: int = 1                       # tokens in this chunk (ids may be unknown)


@dataclass
class Completion:
    request_id: int
    status: str                             # "ok" | "error" | "timeout"
    error: str = ""
    t_submit: float = 0.0                   # handed to the backend
    t_first: float = 0.0                    # first token (0 if none)
    t_end: float = 0.0
    n_prompt: int = 0
    n_output: int = 0
    token_times: list[float] = field(default_factory=list)  # one per output token (or per chunk)
    text: str = ""
    token_ids: list[int] = field(default_factory=list)      # output ids, when the backend knows them
    finish_reason: str = ""                 # "eos" | "length" | "stop" | "" on failure
    server_timings: dict = field(default_factory=dict)      # e.g. llama-server `timings`


STATUSES = ("ok", "error", "timeout")


class Backend:
    """Base class; see the module docstring for the contract."""

    name = "base"

    def submit(self, request: Request) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list:
        """Advance for at most `timeout` s; return TokenEvents and Completions."""
        raise NotImplementedError

    def cancel(self, request_id: int) -> None:
        """Stop a request early; its Completion still comes (status "error", error "cancelled")."""
        raise NotImplementedError

    def busy(self) -> int:
        """Requests submitted and not yet completed."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Provenance for the results file (backend name, url, model, device...)."""
        return {"backend": self.name}

    def close(self) -> None:
        pass

"""Prometheus text exposition (format 0.0.4) for the gateway and the rank-local services.

Hand-written: the format is a few lines of text and the official client
(prometheus_client) would be a new dependency with process-global registries.
Everything here is updated and rendered on one asyncio thread; no locks.
"""

import bisect
import math
import time

# seconds; covers sub-millisecond synthetic requests to multi-minute generations
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
PREFIX = "llcuda_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, total = [], 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts):
            total += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {total}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {_num(self.sum)}", f"{name}_count{lab} {self.count}"]
        return out


def _num(x) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "+Inf" if x > 0 else ("-Inf" if x < 0 else "NaN")
    return f"{x:g}" if isinstance(x, float) else str(x)


def _labels(d: dict) -> str:
    def esc(v):
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return ",".join(f'{k}="{esc(v)}"' for k, v in d.items())


class Text:
    """Builds one exposition: `metric(name, kind, help, samples)` then `render()`."""

    def __init__(self):
        self._lines: list[str] = []

    def metric(self, name, kind, help_, samples) -> None:
        """samples: a value, or [(labels dict, value)]; for histograms [(labels, Histogram)]."""
        full = PREFIX + name
        self._lines += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
        if not isinstance(samples, list):
            samples = [({}, samples)]
        for labels, value in samples:
            if kind == "histogram":
                self._lines += value.lines(full, _labels(labels))
            else:
                lab = f"{{{_labels(labels)}}}" if labels else ""
                self._lines.append(f"{full}{lab} {_num(value)}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


class GatewayMetrics:
    """What the gateway counts: requests by API and outcome, tokens, latencies, connections."""

    def __init__(self):
        self.t_start = time.time()
        self.requests: dict[tuple[str, str], int] = {}     # (api, outcome) -> n
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.e2e = Histogram()
        self.ttft = Histogram()
        self.connections_open = 0
        self.connections_total = 0
        self.rejected: dict[str, int] = {}                 # reason -> n (bad input, limits, timeouts)
        self.by_rank: dict[int, int] = {}                  # worker rank -> completions

    def count_request(self, api: str, outcome: str) -> None:
        key = (api, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def observe(self, completion, rank: int) -> None:
        """One finished generation (any outcome), as the worker reported it."""
        self.prompt_tokens += completion.n_prompt
        self.output_tokens += completion.n_output
        self.by_rank[rank] = self.by_rank.get(rank, 0) + 1
        if completion.status == "ok" and completion.t_end >= completion.t_submit > 0:
            self.e2e.observe(completion.t_end - completion.t_submit)
            if completion.t_first:
                self.ttft.observe(completion.t_first - completion.t_submit)

    def render(self, snapshot: dict, in_flight: int) -> str:
        t = Text()
        t.metric("requests_total", "counter", "HTTP and binary-protocol generation requests by API and outcome",
                 [({"api": a, "outcome": o}, n) for (a, o), n in sorted(self.requests.items())])
        t.metric("rejected_total", "counter", "Connections or requests refused, by reason",
                 [({"reason": r}, n) for r, n in sorted(self.rejected.items())])
        t.metric("prompt_tokens_total", "counter", "Prompt tokens of finished generations", self.prompt_tokens)
        t.metric("tokens_predicted_total", "counter", "Output tokens of finished generations", self.output_tokens)
        t.metric("request_duration_seconds", "histogram", "Backend end-to-end time of successful generations",
                 [({}, self.e2e)])
        t.metric("time_to_first_token_seconds", "histogram", "Backend time to first token of successful "
                 "generations", [({}, self.ttft)])
        t.metric("requests_in_flight", "gauge", "Generations accepted by the gateway and not finished", in_flight)
        t.metric("queue_depth", "gauge", "Requests waiting at the master for a free worker slot",
                 snapshot.get("queue", 0))
        workers = snapshot.get("workers", {})
        t.metric("worker_busy_slots", "gauge", "Requests running on each worker rank",
                 [({"rank": r}, w["busy"]) for r, w in sorted(workers.items())])
        t.metric("worker_slots", "gauge", "Request slots of each live worker rank",
                 [({"rank": r}, w["slots"]) for r, w in sorted(workers.items())])
        t.metric("worker_completions_total", "counter", "Finished generations by worker rank",
                 [({"rank": r}, n) for r, n in sorted(self.by_rank.items())])
        t.metric("connections_open", "gauge", "Open client connections", self.connections_open)
        t.metric("connections_total", "counter", "Client connections accepted", self.connections_total)
        t.metric("uptime_seconds", "gauge", "Seconds since the gateway started", time.time() - self.t_start)
        return t.render()

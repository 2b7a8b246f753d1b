"""Shared machinery of the HTTP backends: an asyncio loop with one
httpx.AsyncClient in a background thread, a thread-safe event queue for
`poll`, per-request deadlines, cancellation, and failure -> Completion.

The worker's main thread only calls submit/poll/cancel: it never blocks on
the network, so it stays free for MPI. Each request is one asyncio task; its
events (TokenEvent..., then exactly one Completion) go through a queue.Queue.

An API (llama-server `/completion`, OpenAI `/v1/completions`) subclasses
HttpBackend and supplies `path`, `payload(request)`, `on_chunk(acc, obj, t)`
(one parsed SSE event) and `on_body(acc, obj, t)` (a non-streamed reply).
"""

import argparse
import asyncio
import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import httpx

from llcuda_mpi.backends.base import Backend, Completion, Request, TokenEvent
from llcuda_mpi.backends.sse import SSEParser

POLL_MAX_EVENTS = 65536  # events one poll hands back at most (the main thread must get back to MPI)
DRAIN_GRACE = 1.0        # seconds to read the rest of a body after the final event
EXCERPT = 200          # characters of a bad body / event quoted in an error
BODY_LIMIT = 65536     # bytes of an error body read before giving up on it


@dataclass
class HttpConfig:
    """Defaults of the HTTP backends (argparse reads them from here)."""
    url: str = "http://127.0.0.1:8080"   # comma-separated: worker k uses URL k mod n
    api_key: str = ""                     # sent as `Authorization: Bearer KEY`
    served_model: str = ""                # OpenAI "model"; "" = first id of GET /v1/models
    http_timeout: float = 0.0             # connect / per-read silence limit, s; 0 = per-request --timeout only
    http_max_connections: int = 0         # open connections per worker; 0 = unlimited


class ProtocolFailure(Exception):
    """The server answered, but not with what the API promises (recorded, not raised)."""


def excerpt(text, limit=EXCERPT):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def add_http_arguments(group):
    """Add the HTTP options once, whichever HTTP backend asks first."""
    d = HttpConfig()
    options = [
        ("--url", dict(default=d.url, metavar="URL[,URL...]",
                       help="server base URL; with several, worker k uses URL k mod n (default %(default)s)")),
        ("--api-key", dict(default=d.api_key, metavar="KEY", help="bearer token for the server")),
        ("--served-model", dict(default=d.served_model, metavar="NAME",
                                help="OpenAI 'model' field (default: first id of GET /v1/models)")),
        ("--http-timeout", dict(type=float, default=d.http_timeout, metavar="S",
                                help="connect and read-silence limit in seconds; 0 = only the per-request --timeout")),
        ("--http-max-connections", dict(type=int, default=d.http_max_connections, metavar="N",
                                        help="open connections per worker; 0 = unlimited (queueing in the client "
                                             "would inflate TTFT)")),
    ]
    for flag, kwargs in options:
        try:
            group.add_argument(flag, **kwargs)
        except argparse.ArgumentError:
            pass                        # the sibling HTTP backend added it already


def config_from_args(args, worker_index):
    urls = [u.strip().rstrip("/") for u in args.url.split(",") if u.strip()]
    if not urls:
        raise ValueError("--url: no URL given")
    return HttpConfig(url=urls[worker_index % len(urls)], api_key=args.api_key,
                      served_model=args.served_model, http_timeout=args.http_timeout,
                      http_max_connections=args.http_max_connections)


@dataclass
class Accumulator:
    """What one request has produced so far."""
    request: Request
    t_submit: float
    t_first: float = 0.0
    token_times: list = field(default_factory=list)
    text: list = field(default_factory=list)
    n_chunks: int = 0
    n_prompt: int = 0
    n_output: int = 0                   # from the server's counts, when it gives them
    finish_reason: str = ""
    server_timings: dict = field(default_factory=dict)
    done: bool = False                  # the final event arrived

    def token(self, t, text="", token_ids=(), n_tokens=1):
        if not self.t_first:
            self.t_first = t
        self.token_times.append(t)
        self.text.append(text)
        return TokenEvent(self.request.id, t, list(token_ids), text, n_tokens)

    def completion(self, status, error=""):
        return Completion(
            request_id=self.request.id, status=status, error=error, t_submit=self.t_submit,
            t_first=self.t_first, t_end=time.time(), n_prompt=self.n_prompt,
            n_output=self.n_output or len(self.token_times), token_times=list(self.token_times),
            text="".join(self.text), finish_reason=self.finish_reason if status == "ok" else "",
            server_timings=dict(self.server_timings))


class HttpBackend(Backend):
    name = "http"
    path = "/"

    def __init__(self, config: HttpConfig, device="cpu"):
        try:
            url = httpx.URL(config.url)
        except httpx.InvalidURL as e:
            raise ValueError(f"--url {config.url!r}: {e}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"--url {config.url!r}: expected http://HOST[:PORT] or https://...")
        self.config, self.device = config, str(device)
        self._events = queue.Queue()
        self._tasks = {}                        # request id -> concurrent Future (main thread only)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{self.name}-http", daemon=True)
        self._thread.start()
        self._client = self._call(self._make_client())
        self._probe = self._call(_spawn(self._probe_server()))   # an asyncio.Task of the loop

    # -- the Backend interface (main thread) ---------------------------------

    def submit(self, request: Request) -> None:
        if self._closed:
            raise RuntimeError("submit on a closed backend")
        if request.id in self._tasks:
            raise ValueError(f"request id {request.id} is already in flight")
        acc = Accumulator(request, time.time())
        self._tasks[request.id] = asyncio.run_coroutine_threadsafe(self._run(acc), self._loop)

    def poll(self, timeout: float) -> list:
        events = []
        try:
            events.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
            while len(events) < POLL_MAX_EVENTS:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            if isinstance(event, Completion):
                self._tasks.pop(event.request_id, None)
        return events

    def cancel(self, request_id: int) -> None:
        future = self._tasks.get(request_id)
        if future is not None:
            future.cancel()             # cancels the task: its stream closes, "cancelled" comes

    def busy(self) -> int:
        return len(self._tasks)

    def describe(self) -> dict:
        if self._closed:
            return {"backend": self.name, "url": self.config.url}
        waiting = asyncio.run_coroutine_threadsafe(self.probe(), self._loop)
        try:
            server = waiting.result(timeout=2.0)
        except TimeoutError:
            waiting.cancel()
            server = {"server_probe_error": "no answer within 2 s"}
        return {"backend": self.name, "url": self.config.url, "endpoint": self.path,
                "served_model": self.config.served_model, "device": self.device, **server}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown(), timeout=10.0)
        except TimeoutError:
            pass                        # a server that will not let go must not hang the job's exit
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
            if not self._thread.is_alive():
                self._loop.close()

    # -- the loop thread ------------------------------------------------------

    def _call(self, coro, timeout=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _make_client(self):
        c = self.config
        limit = c.http_timeout or None
        n = c.http_max_connections or None
        headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        # trust_env=False: a proxy from the environment must not sit between us and the server.
        return httpx.AsyncClient(base_url=c.url, headers=headers, trust_env=False,
                                 timeout=httpx.Timeout(connect=limit, read=limit, write=limit, pool=None),
                                 limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))

    async def _shutdown(self):
        """Cancel every request (each still puts its Completion) and the probe; close the client."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
        await asyncio.get_running_loop().shutdown_asyncgens()   # httpx's stream generators

    async def probe(self):
        """The server's provenance, fetched once (loop thread); cancelling a waiter spares it."""
        return await asyncio.shield(self._probe)

    async def _probe_server(self):
        """Provenance from the server (overridden per API); never raises."""
        return {}

    async def _get_json(self, path, attempts=3):
        """GET `path` as JSON; a GET is idempotent, so a dropped connection (a pooled one the
        server closed, a server still starting) is retried a few times before it counts."""
        for attempt in range(attempts):
            try:
                response = await self._client.get(path, timeout=10.0)
                break
            except httpx.TransportError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        response.raise_for_status()
        return response.json()

    async def _run(self, acc):
        """One request, start to end; always puts exactly one Completion."""
        status, error = "ok", ""
        timeout = acc.request.timeout
        try:
            left = acc.t_submit + timeout - time.time() if math.isfinite(timeout) and timeout > 0 else None
            async with asyncio.timeout(None if left is None else max(0.0, left)):
                await self._exchange(acc)
        except TimeoutError:
            status, error = "timeout", f"no completion within {timeout:g} s ({acc.n_chunks} chunks received)"
        except asyncio.CancelledError:
            status, error = "error", "cancelled"
        except httpx.TimeoutException as e:
            status, error = "timeout", (f"{type(e).__name__}: server silent for {self.config.http_timeout:g} s "
                                        f"(--http-timeout; {acc.n_chunks} chunks received)")
        except httpx.ConnectError as e:
            status, error = "error", f"cannot connect to {self.config.url}: {e}"
        except httpx.RemoteProtocolError as e:
            status, error = "error", f"connection broken after {acc.n_chunks} chunks: {e}"
        except httpx.HTTPError as e:
            status, error = "error", f"{type(e).__name__}: {e}"
        except ProtocolFailure as e:
            status, error = "error", str(e)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            status, error = "error", f"unexpected JSON shape after {acc.n_chunks} chunks: {type(e).__name__}: {e}"
        except Exception as e:  # a bug of ours must still end the request, never hang the job
            status, error = "error", f"internal error in the {self.name} backend: {type(e).__name__}: {e}"
        self._events.put(acc.completion(status, error))

    async def _exchange(self, acc):
        request = acc.request
        async with self._client.stream("POST", self.path, json=await self.payload(request)) as response:
            if response.status_code != 200:
                body = await _read_some(response)
                raise ProtocolFailure(f"HTTP {response.status_code} {response.reason_phrase} from POST "
                                      f"{self.config.url}{self.path}: {excerpt(_error_message(body))}")
            kind = response.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                body = await response.aread()
                self.on_body(acc, _parse_json(body.decode("utf-8", errors="replace"), "response body"), time.time())
                acc.done = True
                return
            parser = SSEParser()
            try:
                # After the final event, read the body to its end (briefly) so that the
                # connection stays alive for the next request instead of being torn down.
                async with asyncio.timeout(None) as tail:
                    async for chunk in response.aiter_bytes():
                        for event in parser.feed(chunk):
                            if not acc.done:
                                self._event(acc, event)
                                if acc.done:
                                    tail.reschedule(asyncio.get_running_loop().time() + DRAIN_GRACE)
            except TimeoutError:
                if not tail.expired():
                    raise
            if acc.done:
                return
            if parser.pending:
                raise ProtocolFailure(f"SSE stream cut mid-event after {acc.n_chunks} chunks: "
                                      f"{excerpt(parser.pending_text())!r}")
            self.on_end(acc)

    def _event(self, acc, event):
        t = time.time()
        if event.event == "error":
            raise ProtocolFailure(f"server error event: {excerpt(_error_message(event.data))}")
        if event.event not in ("", "message", "completion"):
            raise ProtocolFailure(f"unexpected SSE field {event.event!r} after {acc.n_chunks} chunks: "
                                  f"{excerpt(event.data)!r}")
        if self.on_sentinel(acc, event.data):
            return
        obj = _parse_json(event.data, f"SSE event {acc.n_chunks + 1}")
        if "error" in obj:
            raise ProtocolFailure(f"server error event: {excerpt(_error_message(event.data))}")
        token = self.on_chunk(acc, obj, t)
        acc.n_chunks += 1
        if token is not None:
            self._events.put(token)

    # -- per-API hooks ----------------------------------------------------------

    async def payload(self, request: Request) -> dict:
        raise NotImplementedError

    def on_chunk(self, acc, obj, t):
        """One streamed JSON object -> a TokenEvent or None; set acc.done on the final one."""
        raise NotImplementedError

    def on_body(self, acc, obj, t):
        """A whole (non-streamed) JSON reply."""
        raise NotImplementedError

    def on_sentinel(self, acc, data) -> bool:
        """True if `data` is a non-JSON end marker (OpenAI's [DONE])."""
        return False

    def on_end(self, acc):
        """The stream closed cleanly without the final event."""
        raise ProtocolFailure(f"stream ended before the final event ({acc.n_chunks} chunks received)")


async def _spawn(coro):
    return asyncio.get_running_loop().create_task(coro)


async def _read_some(response):
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= BODY_LIMIT:
            break
    return body.decode("utf-8", errors="replace")


def _parse_json(text, what):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolFailure(f"malformed JSON in {what}: {e.msg} at char {e.pos}: {excerpt(text)!r}") from None
    if not isinstance(obj, dict):
        raise ProtocolFailure(f"malformed JSON in {what}: expected an object, got {excerpt(text)!r}")
    return obj


def _error_message(text):
    """The message of `{"error": {"message": ...}}` or `{"message": ...}` JSON (llama-server, OpenAI), else the text."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict) and "message" in err:
        code = err.get("code") or err.get("type") or ""
        return f"{err['message']}" + (f" ({code})" if code else "")
    return text if isinstance(err, dict) else str(err)

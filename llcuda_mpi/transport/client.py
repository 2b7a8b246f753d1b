"""Client of the binary protocol: an asyncio library and the `llcuda-mpi client` command.

    async with await Client.connect("tcp://127.0.0.1:8080") as c:
        async for item in c.generate("Hello", max_tokens=16):
            if isinstance(item, Chunk): print(item.text, end="")
            else: final = item           # the FINAL dict (text, n_output, timings, ...)

Many generations may share one connection (up to the server's max_streams):
each gets its own stream id; a reader task routes frames to them.

    llcuda-mpi client --url tcp://HOST:PORT "a prompt" [--max-tokens N] [--json]
"""

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from llcuda_mpi.transport import protocol as p

DEFAULT_URL = "tcp://127.0.0.1:8080"


class ServerError(Exception):
    """An ERROR frame: `code` is one of protocol.E_*."""

    def __init__(self, code: int, message: str):
        super().__init__(f"server error {code}: {message}")
        self.code, self.message = code, message


@dataclass
class Chunk:
    stream: int
    t: float               # the worker's time of the chunk
    n_tokens: int
    token_ids: list
    text: str


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of tcp://HOST:PORT, http://HOST:PORT (same port) or HOST:PORT; ValueError otherwise."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme not in ("tcp", "http") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected tcp://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--url {url!r}: bad port") from None
    return parts.hostname, port or 8080


class Client:
    def __init__(self, reader, writer, limits: p.Limits | None = None):
        self.reader, self.writer = reader, writer
        self.limits = limits or p.Limits()
        self.server: dict = {}
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue] = {}
        self._pongs: asyncio.Queue = asyncio.Queue()
        self._failure: Exception | None = None
        self._task = None

    @classmethod
    async def connect(cls, url: str = DEFAULT_URL, timeout: float = 10.0) -> "Client":
        host, port = parse_url(url)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
            client = cls(reader, writer)
            writer.write(p.encode_json(p.HELLO, 0, {"client": "llcuda-mpi", "protocol": p.VERSION}))
            try:
                frame = await p.read_frame(reader, client.limits)
            except (p.ProtocolError, asyncio.IncompleteReadError) as exc:
                # Something else listens there (llama-server, any HTTP server...).
                writer.close()
                raise ConnectionError(f"not a llcuda-mpi serve gateway ({exc})") from None
        if frame is None or frame.type not in (p.HELLO, p.ERROR):
            writer.close()
            raise ConnectionError("not a llcuda-mpi serve gateway (no HELLO)")
        if frame.type == p.ERROR:
            writer.close()
            err = frame.json()
            raise ServerError(err.get("code", 0), err.get("message", ""))
        client.server = frame.json()
        client.limits = p.Limits(**{**p.Limits().to_dict(), **client.server.get("limits", {})})
        client._task = asyncio.create_task(client._read_loop())
        return client

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await p.read_frame(self.reader, self.limits)
                if frame is None:
                    raise ConnectionError("server closed the connection")
                if frame.type == p.PONG:
                    self._pongs.put_nowait(frame.payload)
                elif frame.type == p.ERROR and frame.stream == 0:
                    err = frame.json()
                    raise ServerError(err.get("code", 0), err.get("message", ""))
                elif frame.stream in self._streams:
                    self._streams[frame.stream].put_nowait(frame)
        except (ConnectionError, asyncio.IncompleteReadError, p.ProtocolError, ServerError) as e:
            self._failure = e
            for q in self._streams.values():
                q.put_nowait(None)
            self._pongs.put_nowait(None)

    def _check(self):
        if self._failure is not None:
            raise ConnectionError(f"connection lost: {self._failure}")

    async def ping(self, payload: bytes = b"ping") -> float:
        """Round-trip time in seconds."""
        self._check()
        t0 = time.perf_counter()
        self.writer.write(p.encode(p.PING, 0, payload))
        await self.writer.drain()
        if await self._pongs.get() is None:
            self._check()
        return time.perf_counter() - t0

    async def generate(self, prompt, **params):
        """Yield Chunks (when streaming), then the FINAL dict; ServerError for an ERROR frame.

        `prompt` is a string or a list of token ids; params: max_tokens, temperature,
        top_k, top_p, seed, stop, ignore_eos, stream. Breaking out of the loop cancels.
        """
        self._check()
        sid = next(self._ids)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[sid] = queue
        finished = False
        try:
            self.writer.write(p.encode_json(p.GENERATE, sid, {"prompt": prompt, **params}))
            await self.writer.drain()
            while True:
                frame = await queue.get()
                if frame is None:
                    self._check()
                if frame.type == p.TOKEN:
                    t, n, ids, text = p.decode_token(frame.payload)
                    yield Chunk(sid, t, n, ids, text)
                elif frame.type == p.FINAL:
                    finished = True
                    yield frame.json()
                    return
                elif frame.type == p.ERROR:
                    finished = True
                    err = frame.json()
                    raise ServerError(err.get("code", 0), err.get("message", ""))
        finally:
            self._streams.pop(sid, None)
            if not finished and self._failure is None and not self.writer.is_closing():
                self.writer.write(p.encode(p.CANCEL, sid))

    async def complete(self, prompt, **params) -> dict:
        """The FINAL dict of one generation (chunks are dropped)."""
        final = None
        async for item in self.generate(prompt, **params):
            if isinstance(item, dict):
                final = item
        return final


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    parser.add_argument("prompt", nargs="?", default=None, help="prompt text; '-' reads stdin")
    parser.add_argument("--url", default=DEFAULT_URL, help="gateway address (default %(default)s)")
    parser.add_argument("--max-tokens", "-n", type=int, default=128, metavar="N", help="default %(default)s")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off (default)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="wait for the whole text")
    parser.add_argument("--json", action="store_true", help="print one JSON object (final fields + client times)")
    parser.add_argument("--ping", action="store_true", help="only measure the round-trip time")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="default %(default)s")


async def _main(args) -> dict:
    async with await Client.connect(args.url) as c:
        if args.ping:
            return {"ping_ms": await c.ping() * 1e3, "server": c.server}
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        params = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
                  "top_p": args.top_p, "seed": args.seed, "stop": args.stop, "ignore_eos": args.ignore_eos,
                  "stream": args.stream}
        t0, t_first, final = time.time(), 0.0, {}
        async with asyncio.timeout(args.timeout):
            async for item in c.generate(prompt, **params):
                if isinstance(item, Chunk):
                    t_first = t_first or time.time()
                    if not args.json:
                        print(item.text, end="", flush=True)
                else:
                    final = item
        t1 = time.time()
        if not args.json and not args.stream:
            print(final.get("text", ""), end="")
        final["client"] = {"ttft_ms": ((t_first or t1) - t0) * 1e3, "e2e_ms": (t1 - t0) * 1e3}
        return final


def run(args) -> int:
    if not args.ping and args.prompt is None:
        print("llcuda-mpi client: error: give a PROMPT (or '-' for stdin), or --ping", file=sys.stderr)
        return 2
    try:
        out = asyncio.run(_main(args))
    except ServerError as e:
        print(f"llcuda-mpi client: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, TimeoutError) as e:
        what = "no answer within the timeout" if isinstance(e, TimeoutError) else e
        print(f"llcuda-mpi client: error: {args.url}: {what}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    elif args.ping:
        print(f"pong from {out['server'].get('server')} {out['server'].get('version')}: {out['ping_ms']:.3f} ms")
    else:
        c = out["client"]
        print(f"\n[{out.get('n_output', 0)} tokens, rank {out.get('rank')}, TTFT {c['ttft_ms']:.1f} ms, "
              f"E2E {c['e2e_ms']:.1f} ms, {out.get('finish_reason', '')}]", file=sys.stderr)
    return 0

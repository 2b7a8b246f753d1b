"""The binary protocol of the serve gateway: frames, codec, limits (see docs/protocol.md).

Every frame is a 16-byte header then `length` payload bytes:

    offset size  field
    0      4     magic    b"LLCM"
    4      1     version  1
    5      1     type     HELLO .. PONG (below)
    6      2     flags    0 (reserved; anything else is rejected)
    8      4     stream   stream id (the client's name for one generation; 0 = connection)
    12     4     length   payload bytes (<= Limits.max_frame)

all big-endian. Payloads: HELLO, GENERATE, FINAL and ERROR carry one UTF-8
JSON object; TOKEN is packed (`>dII` time, n_tokens, n_ids, then n_ids `>I`
token ids, then UTF-8 text); CANCEL is empty; PING/PONG carry up to 64 opaque
bytes.

`FrameDecoder.feed(bytes)` is incremental and never trusts a length before
checking it: a bad header raises `ProtocolError` before any payload is
buffered, so a peer cannot make us allocate more than `max_frame` bytes.
"""

import asyncio
import json
import math
import struct
from dataclasses import asdict, dataclass

MAGIC = b"LLCM"
VERSION = 1
HEADER = struct.Struct(">4sBBHII")
HEADER_SIZE = HEADER.size                  # 16
TOKEN_HEAD = struct.Struct(">dII")
PING_MAX = 64

HELLO, GENERATE, TOKEN, FINAL, ERROR, CANCEL, PING, PONG = range(1, 9)
TYPE_NAMES = {HELLO: "hello", GENERATE: "generate", TOKEN: "token", FINAL: "final", ERROR: "error",
              CANCEL: "cancel", PING: "ping", PONG: "pong"}
JSON_TYPES = (HELLO, GENERATE, FINAL, ERROR)

# ERROR codes: 1xx = the connection is closed after the frame, 2xx/3xx = one stream failed.
E_BAD_FRAME = 100        # bad magic, flags, unknown type, undecodable payload
E_BAD_VERSION = 101
E_TOO_LARGE = 102        # frame longer than max_frame
E_BAD_REQUEST = 200      # a generate request with invalid fields
E_TOO_MANY_STREAMS = 201
E_DUPLICATE_STREAM = 202
E_SHUTTING_DOWN = 203
E_GENERATION = 300       # the backend failed the request
E_TIMEOUT = 301
E_CANCELLED = 302


class ProtocolError(Exception):
    """A frame or request that breaks the protocol; `code` is one of the E_* values."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    @property
    def fatal(self) -> bool:
        return self.code < 200


@dataclass(frozen=True)
class Limits:
    """Hard limits, enforced by the gateway and announced in its HELLO."""
    max_frame: int = 1 << 20               # payload bytes of one frame
    max_prompt_chars: int = 256 * 1024     # characters of a text prompt
    max_prompt_tokens: int = 32768         # ids of a token prompt
    max_tokens: int = 4096                 # output tokens of one request
    max_streams: int = 64                  # generations in flight per connection
    max_stop: int = 16                     # stop strings per request (each <= 256 characters)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Frame:
    type: int
    stream: int = 0
    payload: bytes = b""

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))

    def json(self) -> dict:
        """The JSON object of a HELLO/GENERATE/FINAL/ERROR payload (ProtocolError if it is not one)."""
        try:
            obj = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(E_BAD_FRAME, f"{self.name} frame: payload is not UTF-8 JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ProtocolError(E_BAD_FRAME, f"{self.name} frame: payload must be a JSON object")
        return obj


# ---------------------------------------------------------------- encoding

def encode(type_: int, stream: int = 0, payload: bytes = b"") -> bytes:
    if type_ not in TYPE_NAMES:
        raise ValueError(f"unknown frame type {type_}")
    if not 0 <= stream < 1 << 32:
        raise ValueError(f"stream id {stream} out of range 0..2**32-1")
    return HEADER.pack(MAGIC, VERSION, type_, 0, stream, len(payload)) + payload


def encode_json(type_: int, stream: int, obj: dict) -> bytes:
    return encode(type_, stream, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode())


def encode_token(stream: int, t: float, text: str, token_ids=(), n_tokens: int = 1) -> bytes:
    ids = list(token_ids)
    body = TOKEN_HEAD.pack(t, n_tokens, len(ids)) + struct.pack(f">{len(ids)}I", *ids) + text.encode()
    return encode(TOKEN, stream, body)


def encode_error(stream: int, code: int, message: str) -> bytes:
    return encode_json(ERROR, stream, {"code": code, "message": message})


def decode_token(payload: bytes) -> tuple[float, int, list[int], str]:
    """(t, n_tokens, token ids, text) of a TOKEN payload."""
    if len(payload) < TOKEN_HEAD.size:
        raise ProtocolError(E_BAD_FRAME, f"token frame: {len(payload)} bytes, need >= {TOKEN_HEAD.size}")
    t, n_tokens, n_ids = TOKEN_HEAD.unpack_from(payload)
    end = TOKEN_HEAD.size + 4 * n_ids
    if end > len(payload):
        raise ProtocolError(E_BAD_FRAME, f"token frame: {n_ids} ids do not fit in {len(payload)} bytes")
    ids = list(struct.unpack_from(f">{n_ids}I", payload, TOKEN_HEAD.size))
    try:
        text = payload[end:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(E_BAD_FRAME, f"token frame: text is not UTF-8 ({e})") from None
    return t, n_tokens, ids, text


# ---------------------------------------------------------------- decoding

def check_header(header: bytes, limits: Limits) -> tuple[int, int, int]:
    """(type, stream, length) of a 16-byte header; ProtocolError if anything is off."""
    magic, version, type_, flags, stream, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(E_BAD_FRAME, f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(E_BAD_VERSION, f"protocol version {version} not supported (this server speaks {VERSION})")
    if type_ not in TYPE_NAMES:
        raise ProtocolError(E_BAD_FRAME, f"unknown frame type {type_}")
    if flags:
        raise ProtocolError(E_BAD_FRAME, f"reserved flags set: {flags:#06x}")
    if length > limits.max_frame:
        raise ProtocolError(E_TOO_LARGE, f"{TYPE_NAMES[type_]} frame of {length} bytes exceeds the "
                            f"{limits.max_frame}-byte limit")
    if type_ in (PING, PONG) and length > PING_MAX:
        raise ProtocolError(E_TOO_LARGE, f"{TYPE_NAMES[type_]} payload of {length} bytes exceeds {PING_MAX}")
    if type_ == CANCEL and length:
        raise ProtocolError(E_BAD_FRAME, "cancel frame must have no payload")
    return type_, stream, length


class FrameDecoder:
    """Bytes in, Frames out; raises ProtocolError on the first bad header (then unusable)."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._head = None              # (type, stream, length) of the frame being read

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        while True:
            if self._head is None:
                if len(self._buf) < HEADER_SIZE:
                    return out
                self._head = check_header(bytes(self._buf[:HEADER_SIZE]), self.limits)
                del self._buf[:HEADER_SIZE]
            type_, stream, length = self._head
            if len(self._buf) < length:
                return out
            out.append(Frame(type_, stream, bytes(self._buf[:length])))
            del self._buf[:length]
            self._head = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (a truncated stream ends with pending > 0)."""
        return len(self._buf) + (HEADER_SIZE if self._head else 0)


async def read_frame(reader, limits: Limits, prefix: bytes = b"") -> Frame | None:
    """One frame from an asyncio StreamReader; None at a clean EOF between frames.

    asyncio.IncompleteReadError (EOF inside a frame) propagates: a truncated frame.
    """
    need = HEADER_SIZE - len(prefix)
    if need > 0:
        try:
            rest = await reader.readexactly(need)
        except asyncio.IncompleteReadError as e:
            if not prefix and not e.partial:
                return None
            raise
        header = prefix + rest
    else:
        header = prefix
    type_, stream, length = check_header(header, limits)
    payload = await reader.readexactly(length) if length else b""
    return Frame(type_, stream, payload)


# ---------------------------------------------------------------- generate requests

class BadRequest(ValueError):
    """A request field out of its allowed range (HTTP 400 / protocol E_BAD_REQUEST)."""


def _number(obj, key, default, lo=-math.inf, hi=math.inf, integer=False):
    value = obj.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise BadRequest(f"{key!r} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        raise BadRequest(f"{key!r} = {value!r} out of range [{lo}, {hi}]")
    return value


def generation_params(obj: dict, limits: Limits, *, max_tokens_key="max_tokens", defaults=None) -> dict:
    """Validated keyword arguments of backends.base.Request from one request object.

    Shared by the binary protocol and both HTTP APIs (which rename max_tokens
    and choose their own defaults). A prompt is a string or a list of token ids.
    """
    d = {"max_tokens": 128, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0,
         "ignore_eos": False, "stream": True, **(defaults or {})}
    prompt = obj.get("prompt")
    out = {}
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]                                     # OpenAI: a batch of one
    if isinstance(prompt, str):
        if len(prompt) > limits.max_prompt_chars:
            raise BadRequest(f"prompt of {len(prompt)} characters exceeds the limit of {limits.max_prompt_chars}")
        out["prompt"] = prompt
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if len(prompt) > limits.max_prompt_tokens:
            raise BadRequest(f"prompt of {len(prompt)} tokens exceeds the limit of {limits.max_prompt_tokens}")
        if any(not 0 <= t < 1 << 31 for t in prompt):
            raise BadRequest("prompt token ids must be in 0..2**31-1")
        out["prompt_tokens"] = list(prompt)
    else:
        raise BadRequest("'prompt' must be a string or a list of token ids")
    n = _number(obj, max_tokens_key, min(d["max_tokens"], limits.max_tokens), -1, limits.max_tokens, integer=True)
    if n == 0:
        raise BadRequest(f"{max_tokens_key!r} must be >= 1 (or -1: as many as allowed)")
    out["max_tokens"] = limits.max_tokens if n < 0 else n
    out["temperature"] = float(_number(obj, "temperature", d["temperature"], 0.0, 100.0))
    out["top_k"] = _number(obj, "top_k", d["top_k"], 0, 1 << 31, integer=True)
    out["top_p"] = float(_number(obj, "top_p", d["top_p"], 0.0, 1.0))
    seed = _number(obj, "seed", d["seed"], -1, (1 << 64) - 1, integer=True)
    out["seed"] = d["seed"] if seed == -1 else seed            # llama.cpp: -1 = random
    stop = obj.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stop) \
            or len(stop) > limits.max_stop:
        raise BadRequest(f"'stop' must be a string or a list of at most {limits.max_stop} non-empty strings "
                         "of <= 256 characters")
    out["stop"] = stop
    for key in ("ignore_eos", "stream"):
        value = obj.get(key, d[key])
        if not isinstance(value, bool):
            raise BadRequest(f"{key!r} must be true or false, got {value!r}")
        out[key] = value
    return out

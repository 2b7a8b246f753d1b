"""The binary protocol's codec: round trips, every rejection, request validation, and a fuzz
test of the frame decoder (hypothesis, ~1-2 s)."""

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llcuda_mpi.transport import protocol as p

LIMITS = p.Limits(max_frame=4096, max_prompt_chars=100, max_prompt_tokens=10, max_tokens=50, max_stop=2)


def header(type_=p.PING, stream=0, length=0, magic=p.MAGIC, version=p.VERSION, flags=0):
    return p.HEADER.pack(magic, version, type_, flags, stream, length)


def test_round_trip_of_every_kind():
    frames = [p.encode_json(p.HELLO, 0, {"client": "x"}),
              p.encode_json(p.GENERATE, 7, {"prompt": "hi", "max_tokens": 3}),
              p.encode_token(7, 1.5, "héllo", [1, 2, 3], 3),
              p.encode_json(p.FINAL, 7, {"text": "abc"}),
              p.encode_error(7, p.E_TIMEOUT, "slow"),
              p.encode(p.CANCEL, 7), p.encode(p.PING, 0, b"abc"), p.encode(p.PONG, 0, b"abc")]
    blob = b"".join(frames)
    dec = p.FrameDecoder(LIMITS)
    out = []
    for i in range(0, len(blob), 5):                     # split across every kind of boundary
        out += dec.feed(blob[i:i + 5])
    assert [f.type for f in out] == [p.HELLO, p.GENERATE, p.TOKEN, p.FINAL, p.ERROR, p.CANCEL, p.PING, p.PONG]
    assert dec.pending == 0
    assert out[1].stream == 7 and out[1].json() == {"prompt": "hi", "max_tokens": 3}
    assert p.decode_token(out[2].payload) == (1.5, 3, [1, 2, 3], "héllo")
    assert out[4].json() == {"code": p.E_TIMEOUT, "message": "slow"}
    assert out[6].payload == b"abc"


@pytest.mark.parametrize("head, code, words", [
    (header(magic=b"GET "), p.E_BAD_FRAME, "bad magic"),
    (header(version=2), p.E_BAD_VERSION, "version 2 not supported"),
    (header(type_=99), p.E_BAD_FRAME, "unknown frame type 99"),
    (header(flags=1), p.E_BAD_FRAME, "reserved flags"),
    (header(type_=p.GENERATE, length=4097), p.E_TOO_LARGE, "exceeds the 4096-byte limit"),
    (header(type_=p.GENERATE, length=0xFFFFFFFF), p.E_TOO_LARGE, "exceeds"),
    (header(type_=p.PING, length=65), p.E_TOO_LARGE, "exceeds 64"),
    (header(type_=p.CANCEL, length=1), p.E_BAD_FRAME, "no payload"),
])
def test_bad_headers_are_rejected_before_any_payload(head, code, words):
    dec = p.FrameDecoder(LIMITS)
    with pytest.raises(p.ProtocolError) as e:
        dec.feed(head)                                   # the header alone is enough to refuse
    assert e.value.code == code and words in str(e.value) and e.value.fatal


def test_truncated_frames_stay_pending_and_read_frame_reports_them():
    blob = p.encode_json(p.GENERATE, 1, {"prompt": "x" * 50})
    dec = p.FrameDecoder(LIMITS)
    assert dec.feed(blob[:10]) == [] and dec.pending == 10
    assert dec.feed(blob[10:-1]) == [] and dec.pending == len(blob) - 1

    async def read(data):
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await p.read_frame(r, LIMITS)

    assert asyncio.run(read(b"")) is None                 # clean EOF between frames
    for cut in (3, p.HEADER_SIZE, len(blob) - 1):
        with pytest.raises(asyncio.IncompleteReadError):
            asyncio.run(read(blob[:cut]))
    assert asyncio.run(read(blob)).json() == {"prompt": "x" * 50}


def test_payload_errors():
    for payload in (b"\xff\xfe", b"[1, 2]", b"{not json"):
        with pytest.raises(p.ProtocolError, match="generate frame"):
            p.Frame(p.GENERATE, 1, payload).json()
    with pytest.raises(p.ProtocolError, match="need >= 16"):
        p.decode_token(b"abc")
    with pytest.raises(p.ProtocolError, match="ids do not fit"):
        p.decode_token(p.TOKEN_HEAD.pack(0.0, 1, 1000))
    with pytest.raises(p.ProtocolError, match="not UTF-8"):
        p.decode_token(p.TOKEN_HEAD.pack(0.0, 1, 0) + b"\xff")
    with pytest.raises(ValueError):
        p.encode(42)


def test_generation_params_validation():
    ok = p.generation_params({"prompt": "hi", "max_tokens": 5, "stop": "x"}, LIMITS)
    assert ok["prompt"] == "hi" and ok["max_tokens"] == 5 and ok["stop"] == ["x"] and ok["temperature"] == 0.0
    assert p.generation_params({"prompt": [1, 2], "max_tokens": -1}, LIMITS)["max_tokens"] == 50
    assert p.generation_params({"prompt": ["one"]}, LIMITS)["prompt"] == "one"      # OpenAI batch of one
    assert p.generation_params({"prompt": "x", "n_predict": 3}, LIMITS, max_tokens_key="n_predict")["max_tokens"] == 3
    assert p.generation_params({"prompt": "x", "seed": -1}, LIMITS, defaults={"seed": 9})["seed"] == 9
    bad = [({}, "'prompt'"), ({"prompt": 3}, "'prompt'"), ({"prompt": "x" * 101}, "101 characters"),
           ({"prompt": list(range(11))}, "11 tokens"), ({"prompt": [-1]}, "token ids"),
           ({"prompt": [True]}, "'prompt'"), ({"prompt": "x", "max_tokens": 51}, "out of range"),
           ({"prompt": "x", "max_tokens": 0}, ">= 1"), ({"prompt": "x", "max_tokens": 2.5}, "integer"),
           ({"prompt": "x", "temperature": -1}, "out of range"), ({"prompt": "x", "temperature": "hot"}, "number"),
           ({"prompt": "x", "temperature": float("nan")}, "out of range"), ({"prompt": "x", "top_p": 2}, "range"),
           ({"prompt": "x", "stop": ["a", "b", "c"]}, "'stop'"), ({"prompt": "x", "stop": [""]}, "'stop'"),
           ({"prompt": "x", "stream": "yes"}, "'stream'"), ({"prompt": "x", "ignore_eos": 1}, "'ignore_eos'")]
    for obj, words in bad:
        with pytest.raises(p.BadRequest, match=words):
            p.generation_params(obj, LIMITS)


# ---------------------------------------------------------------- fuzz

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.integers(1, 50))
def test_fuzz_decoder_raises_only_protocol_errors(data, step):
    """Arbitrary bytes in arbitrary pieces: frames or ProtocolError, nothing else, bounded buffering."""
    dec = p.FrameDecoder(LIMITS)
    try:
        for i in range(0, len(data), step):
            for frame in dec.feed(data[i:i + step]):
                assert frame.type in p.TYPE_NAMES and len(frame.payload) <= LIMITS.max_frame
                if frame.type in p.JSON_TYPES:
                    try:
                        frame.json()
                    except p.ProtocolError:
                        pass
                elif frame.type == p.TOKEN:
                    try:
                        p.decode_token(frame.payload)
                    except p.ProtocolError:
                        pass
        assert dec.pending <= p.HEADER_SIZE + LIMITS.max_frame
    except p.ProtocolError as e:
        assert e.code in (p.E_BAD_FRAME, p.E_BAD_VERSION, p.E_TOO_LARGE)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(p.TYPE_NAMES)), st.integers(0, 2**32 - 1),
                          st.binary(max_size=64)), max_size=8), st.integers(1, 40))
def test_fuzz_valid_frames_round_trip(frames, step):
    blob = b""
    expected = []
    for type_, stream, payload in frames:
        payload = b"" if type_ == p.CANCEL else payload
        blob += p.encode(type_, stream, payload)
        expected.append((type_, stream, payload))
    dec = p.FrameDecoder(LIMITS)
    got = []
    for i in range(0, len(blob), step):
        got += [(f.type, f.stream, f.payload) for f in dec.feed(blob[i:i + step])]
    assert got == expected and dec.pending == 0


def test_header_layout_is_what_the_docs_say():
    h = p.encode(p.GENERATE, 0x01020304, b"xy")
    assert h[:4] == b"LLCM" and h[4] == 1 and h[5] == p.GENERATE and h[6:8] == b"\0\0"
    assert struct.unpack(">I", h[8:12])[0] == 0x01020304 and struct.unpack(">I", h[12:16])[0] == 2
    assert h[16:] == b"xy" and p.HEADER_SIZE == 16

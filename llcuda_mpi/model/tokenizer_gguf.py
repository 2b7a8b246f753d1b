"""Read a GGUF file's tokenizer metadata into plain python values, fast.

`read_tokenizer_metadata(path)` returns {GGUF key: value} for the
`tokenizer.*` keys plus `general.architecture` and `general.name`: strings,
ints, floats, bools, lists (string arrays) and numpy arrays (numeric arrays).
That dict is what `Tokenizer.from_metadata` takes; the model loader builds
the same dict its own way.

Why not `gguf.GGUFReader`: it builds one numpy view per array element, so a
150k-token vocab plus 280k merges takes 5-15 s to open; this reader walks the
key/value section once with `struct` and decodes string arrays in a plain
loop (~0.1-0.3 s for the same files). The value-type codes come from the
`gguf` package. Tensors are not read at all.
"""

import mmap
import os
import struct

import numpy as np
from gguf import GGUF_MAGIC, GGUFValueType


class TokenizerError(ValueError):
    """Missing, malformed or unsupported tokenizer metadata (names file and field)."""


_SCALARS = {  # value type -> (struct code, python converter)
    GGUFValueType.UINT8: ("B", int), GGUFValueType.INT8: ("b", int),
    GGUFValueType.UINT16: ("H", int), GGUFValueType.INT16: ("h", int),
    GGUFValueType.UINT32: ("I", int), GGUFValueType.INT32: ("i", int),
    GGUFValueType.UINT64: ("Q", int), GGUFValueType.INT64: ("q", int),
    GGUFValueType.FLOAT32: ("f", float), GGUFValueType.FLOAT64: ("d", float),
    GGUFValueType.BOOL: ("?", bool),
}
_NP = {GGUFValueType.UINT8: "u1", GGUFValueType.INT8: "i1", GGUFValueType.UINT16: "u2",
       GGUFValueType.INT16: "i2", GGUFValueType.UINT32: "u4", GGUFValueType.INT32: "i4",
       GGUFValueType.UINT64: "u8", GGUFValueType.INT64: "i8", GGUFValueType.FLOAT32: "f4",
       GGUFValueType.FLOAT64: "f8", GGUFValueType.BOOL: "u1"}
_MAX_KV = 1 << 20          # absurd header counts are rejected, not looped over
_WANTED = ("tokenizer.", "general.architecture", "general.name")


class _Cursor:
    """Bounds-checked little/big-endian reads over a buffer; errors name the file."""

    def __init__(self, buf, path, order):
        self.buf, self.path, self.order, self.pos = buf, path, order, 0
        self.key = "header"

    def fail(self, what):
        raise TokenizerError(f"{self.path}: {self.key}: {what}")

    def need(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            self.fail(f"truncated file (needs {n} bytes at offset {self.pos}, file has {len(self.buf)})")

    def scalar(self, code):
        size = struct.calcsize(code)
        self.need(size)
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += size
        return value

    def string(self):
        n = self.scalar("Q")
        self.need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"string is not valid UTF-8 ({exc.reason} at byte {exc.start})")

    def value(self, vtype, keep):
        """The value of type `vtype` (python/numpy), or None after skipping it if not `keep`."""
        if vtype in _SCALARS:
            code, conv = _SCALARS[vtype]
            v = self.scalar(code)
            return conv(v) if keep else None
        if vtype == GGUFValueType.STRING:
            s = self.string()
            return s if keep else None
        if vtype == GGUFValueType.ARRAY:
            return self.array(keep)
        self.fail(f"unknown value type {vtype}")

    def array(self, keep):
        itype = self.scalar("I")
        n = self.scalar("Q")
        if n > len(self.buf):
            self.fail(f"array length {n} exceeds the file size")
        if itype in _NP:
            dt = np.dtype(_NP[itype]).newbyteorder(self.order)
            self.need(n * dt.itemsize)
            arr = None
            if keep:
                arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).astype(dt.newbyteorder("="))
                if itype == GGUFValueType.BOOL:
                    arr = arr.astype(bool)
            self.pos += n * dt.itemsize
            return arr
        if itype == GGUFValueType.STRING:
            return self.string_array(n, keep)
        if itype == GGUFValueType.ARRAY:
            items = [self.array(keep) for _ in range(n)]
            return items if keep else None
        self.fail(f"unknown array item type {itype}")

    def string_array(self, n, keep):
        """n strings; the offsets loop is the whole cost, so it is kept minimal."""
        buf, unpack, start, end = self.buf, struct.Struct(self.order + "Q").unpack_from, self.pos, len(self.buf)
        for errors in ("strict", "replace"):
            out, pos = [], start
            append = out.append
            try:
                for i in range(n):
                    (ln,) = unpack(buf, pos)
                    pos += 8
                    if pos + ln > end:
                        break
                    if keep:
                        append(str(buf[pos:pos + ln], "utf-8", errors))
                    pos += ln
                else:
                    self.pos = pos
                    return out if keep else None
            except struct.error:
                pass
            except UnicodeDecodeError:
                continue                     # a few vocabs hold invalid UTF-8 pieces: keep them, replaced
            self.pos = pos
            self.fail(f"truncated file in string {len(out) if keep else '?'} of {n}")


def read_tokenizer_metadata(path) -> dict:
    """{key: value} for the tokenizer.* keys, general.architecture and general.name of a GGUF file.

    Raises TokenizerError (a ValueError) for a missing file, a non-GGUF file or
    a truncated/malformed header; the message names the file and the field.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise TokenizerError(f"{path}: not a GGUF file ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(mm, path)
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, not a GGUF file") from None
    except PermissionError:
        raise TokenizerError(f"{path}: permission denied") from None


def _parse(mm, path):
    (magic,) = struct.unpack_from("<I", mm, 0)
    if magic != GGUF_MAGIC:
        raise TokenizerError(f"{path}: not a GGUF file (magic {bytes(mm[:4])!r})")
    (version,) = struct.unpack_from("<I", mm, 4)
    order = "<"
    if version & 0xFFFF == 0 and version:  # written on a big-endian host
        order = ">"
        (version,) = struct.unpack_from(">I", mm, 4)
    if version not in (2, 3):
        raise TokenizerError(f"{path}: unsupported GGUF version {version}")
    cur = _Cursor(mm, path, order)
    cur.pos = 8
    n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
    if n_kv > _MAX_KV or n_tensors > len(mm):
        cur.fail(f"absurd header counts (tensors={n_tensors}, kv={n_kv})")
    meta = {}
    for i in range(n_kv):
        cur.key = f"key #{i}"
        key = cur.string()
        cur.key = key
        vtype = cur.scalar("I")
        keep = key.startswith(_WANTED)
        value = cur.value(vtype, keep)
        if keep:
            meta[key] = value
    return meta

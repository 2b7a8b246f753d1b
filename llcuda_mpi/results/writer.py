"""Rank 0's HDF5 results writer (schema v1, see docs/results-format.md).

The file is written as `{path}.tmp` in HDF5's SWMR mode (libver="latest"):
SWMR orders metadata writes so that the file on disk is readable at every
flush, which is also what survives `kill -9` of the job (the reader opens such
a file with `swmr=True`, which skips the "file is open for writing" check).
Rows are buffered in memory and flushed every `flush_rows` rows or every
`flush_interval` seconds, whichever comes first (checked in `add` and in
`poll`, which the master may call from its loop when no results arrive).
`close` writes the measured window and the per-rank summaries and renames the
file into place.

SWMR forbids creating objects or attributes while it is on, so everything
known up front is created before it is switched on, and the closing
attributes and the `ranks` group are added after reopening the closed file.
"""

import array
import errno
import json
import os
import tempfile
import time
from datetime import datetime, timezone

import h5py
import numpy as np

from llcuda_mpi import __version__
from llcuda_mpi.results import schema


# One encoder for every row: json.dumps(..., default=str) builds a new one per call.
_encode_json = json.JSONEncoder(default=str).encode


def _nan_if_zero(t):
    return float(t) if t else float("nan")


def derived_times(t_submit, t_first, t_end, n_output):
    """(ttft, tpot, e2e) in seconds as vLLM's benchmark defines them; NaN where undefined."""
    e2e = t_end - t_submit if t_end and t_submit else float("nan")
    ttft = t_first - t_submit if t_first and t_submit else float("nan")
    tpot = (e2e - ttft) / (n_output - 1) if n_output > 1 else float("nan")
    return ttft, tpot, e2e


def encode_attr(value):
    """An HDF5-friendly attribute value: scalars as they are, anything else as JSON."""
    if isinstance(value, str) and "\x00" in value:
        return json.dumps(value), True   # HDF5 strings can't hold NULs (Open MPI's version string ends in one)
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value, False
    return json.dumps(value, default=str), True


def write_attrs(obj, mapping):
    json_keys = []
    for key, value in mapping.items():
        encoded, is_json = encode_attr(value)
        obj.attrs[str(key)] = encoded
        if is_json:
            json_keys.append(str(key))
    obj.attrs["_json_keys"] = json.dumps(json_keys)


def _fixed_bytes(text, size):
    return str(text).encode("utf-8", "replace")[:size]


def check_writable(path) -> None:
    """OSError now, not at the rename after a long run, if a file cannot be written at `path`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryFile(dir=parent):      # the directory takes new files (root ignores modes)
        pass


class ResultsWriter:
    """Append request records to `{path}.tmp`; `close` renames it to `path`."""

    def __init__(self, path, provenance: dict, config: dict, *,
                 flush_rows: int = 1024, flush_interval: float = 0.5):
        self.path = os.fspath(path)
        self.tmp_path = self.path + ".tmp"
        self.flush_rows = max(1, int(flush_rows))
        self.flush_interval = float(flush_interval)
        check_writable(self.path)
        self._file = h5py.File(self.tmp_path, "w", libver="latest")
        self._create(self._file, provenance, config)
        self._file.swmr_mode = True
        self._ds = {name: self._file[name] for name in
                    (schema.REQUESTS, schema.TOKEN_TIMES, schema.ERROR_TEXT, schema.SERVER_TIMINGS)}
        # In-memory batch since the last flush.
        self._rows = np.zeros(self.flush_rows, dtype=schema.REQUEST_DTYPE)
        self._n_buf = 0
        self._tok = array.array("d")
        self._err = bytearray()
        self._tim = bytearray()
        # Totals written to the file so far (extents of the datasets).
        self._n_rows = 0
        self._n_tok = 0
        self._n_err = 0
        self._n_tim = 0
        self._last_flush = time.monotonic()
        self._rank_rows = None
        self.closed = False

    @staticmethod
    def _create(f, provenance, config):
        f.attrs["format"] = schema.FORMAT
        f.attrs["version"] = schema.VERSION
        f.attrs["created"] = datetime.now(timezone.utc).isoformat()
        f.attrs["writer"] = f"llcuda-mpi {__version__}"
        f.attrs["config"] = json.dumps(config, default=str, sort_keys=True)
        write_attrs(f.create_group(schema.PROVENANCE), provenance)
        req = f.create_dataset(schema.REQUESTS, shape=(0,), maxshape=(None,),
                               dtype=schema.REQUEST_DTYPE, chunks=(schema.REQUEST_CHUNK,))
        req.attrs["status_codes"] = json.dumps(schema.STATUS_CODES)
        req.attrs["time_units"] = "s"
        tok = f.create_dataset(schema.TOKEN_TIMES, shape=(0,), maxshape=(None,), dtype="<f8",
                               chunks=(schema.FLAT_CHUNK,), fillvalue=np.nan)
        tok.attrs["units"] = "s since the epoch (time.time())"
        for name in (schema.ERROR_TEXT, schema.SERVER_TIMINGS):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="u1",
                             chunks=(schema.FLAT_CHUNK,))

    def add(self, request, completion, rank: int, device: str) -> None:
        """Record one finished request (any status). Cheap: a buffered copy."""
        c = completion
        ttft, tpot, e2e = derived_times(c.t_submit, c.t_first, c.t_end, c.n_output)
        times = c.token_times
        err = c.error.encode("utf-8", "replace") if c.error else b""
        tim = _encode_json(c.server_timings).encode() if c.server_timings else b""
        tok_start = self._n_tok + len(self._tok)
        err_start = self._n_err + len(self._err)
        tim_start = self._n_tim + len(self._tim)
        self._tok.extend(times)
        self._err += err
        self._tim += tim
        self._rows[self._n_buf] = (
            c.request_id, rank, _fixed_bytes(device, schema.DEVICE_LEN),
            1 if getattr(request, "warmup", False) else 0,
            schema.STATUS_CODES.get(c.status, schema.STATUS_CODES["error"]),
            c.n_prompt, c.n_output,
            _nan_if_zero(c.t_submit), _nan_if_zero(c.t_first), _nan_if_zero(c.t_end),
            ttft, tpot, e2e, _fixed_bytes(c.finish_reason, schema.FINISH_LEN),
            tok_start, len(times), err_start, len(err), tim_start, len(tim),
        )
        self._n_buf += 1
        if self._n_buf >= self.flush_rows:
            self.flush()
        else:
            self.poll()

    def poll(self) -> None:
        """Flush if rows are waiting and `flush_interval` has passed since the last flush."""
        if self._n_buf and time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def _append(self, name, data, start):
        if len(data) == 0:
            return start
        ds = self._ds[name]
        end = start + len(data)
        ds.resize((end,))
        ds[start:end] = data
        return end

    def flush(self) -> None:
        """Write the batch and flush the file: on disk, readable, kill-safe."""
        if self._n_buf:
            # Referenced data first, rows last: a row never points past its data.
            self._n_tok = self._append(schema.TOKEN_TIMES, np.frombuffer(self._tok, dtype="<f8"), self._n_tok)
            self._n_err = self._append(schema.ERROR_TEXT, np.frombuffer(self._err, dtype="u1"), self._n_err)
            self._n_tim = self._append(schema.SERVER_TIMINGS, np.frombuffer(self._tim, dtype="u1"), self._n_tim)
            self._n_rows = self._append(schema.REQUESTS, self._rows[:self._n_buf], self._n_rows)
            self._n_buf = 0
            self._tok = array.array("d")
            self._err = bytearray()
            self._tim = bytearray()
            self._file.flush()
        self._last_flush = time.monotonic()

    @property
    def flushed_rows(self) -> int:
        """Rows on disk (readable from the `.tmp` file even after `kill -9`)."""
        return self._n_rows

    @property
    def n_rows(self) -> int:
        """Rows added so far (flushed or buffered)."""
        return self._n_rows + self._n_buf

    def set_rank_summaries(self, rows: list[dict]) -> None:
        """Per-rank summary dicts (any keys); written by `close`."""
        self._rank_rows = [dict(r) for r in rows]

    def close(self, t_start: float, t_end: float) -> str:
        """Final flush, closing attributes, rename `{path}.tmp` -> `path`; returns `path`."""
        if self.closed:
            return self.path
        self.flush()
        self._file.close()
        with h5py.File(self.tmp_path, "r+", libver="latest") as f:
            f.attrs["t_start"] = float(t_start)
            f.attrs["t_end"] = float(t_end)
            f.attrs["n_requests"] = self._n_rows
            _write_rank_summaries(f.create_group(schema.RANKS, track_order=True), self._rank_rows or [])
        os.replace(self.tmp_path, self.path)
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Flush and close, leaving `{path}.tmp` (readable, without a window) in place."""
        if not self.closed:
            self.flush()
            self._file.close()
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def _column(values):
    """(numpy array, is_json) for one per-rank key; None marks a missing value."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present) and len(present) == len(values):
        return np.array(values, dtype=bool), False
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values):
            return np.array(values, dtype="<i8"), False
        return np.array([np.nan if v is None else v for v in values], dtype="<f8"), False
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       for v in present):
        return np.array([np.nan if v is None else v for v in values], dtype="<f8"), False
    if all(isinstance(v, str) or v is None for v in values):
        return np.array(["" if v is None else v for v in values], dtype=h5py.string_dtype()), False
    return np.array([json.dumps(v, default=str) for v in values], dtype=h5py.string_dtype()), True


def _write_rank_summaries(group, rows):
    keys = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    json_keys = []
    for key in keys:
        data, is_json = _column([row.get(key) for row in rows])
        group.create_dataset(str(key), data=data)
        if is_json:
            json_keys.append(str(key))
    group.attrs["columns"] = json.dumps([str(k) for k in keys])
    group.attrs["_json_keys"] = json.dumps(json_keys)

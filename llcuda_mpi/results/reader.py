"""Read an HDF5 results file (schema v1), finished or left behind by a killed job.

`read_results(path)` returns a `Results`; every user mistake (no file, not
HDF5, another format, a newer schema) raises `ResultsError` with a one-line
message naming the file.
"""

import json
import os
import re
from dataclasses import dataclass, field

import h5py
import numpy as np

from llcuda_mpi.results import schema


class ResultsError(ValueError):
    """A file that cannot be read as llcuda-mpi results; the message is one line."""


@dataclass
class Results:
    path: str
    version: int
    attrs: dict                  # root attributes (format, version, created, writer, t_start, t_end...)
    provenance: dict
    config: dict
    requests: np.ndarray         # structured, schema.REQUEST_DTYPE; only rows fully on disk
    token_times: np.ndarray      # float64, flat; row i's times: token_times[tok_start:tok_start+tok_count]
    ranks: list = field(default_factory=list)   # per-rank summary dicts
    complete: bool = True        # closed properly (False: a `.tmp` file from a killed or running job)
    n_dropped: int = 0           # rows whose extent reached the file but whose data did not
    _error_bytes: bytes = b""
    _timings_bytes: bytes = b""

    @property
    def t_start(self):
        """Start of the measured window (s since the epoch), or None if the job did not close."""
        return self.attrs.get("t_start")

    @property
    def t_end(self):
        return self.attrs.get("t_end")

    def __len__(self):
        return len(self.requests)

    @property
    def status(self) -> np.ndarray:
        """Status names ("ok"/"error"/"timeout") per row."""
        names = np.array(["?", "ok", "error", "timeout"])
        return names[np.clip(self.requests["status"], 0, 3)]

    def column(self, name) -> np.ndarray:
        """One per-request column; byte strings decoded to str."""
        col = self.requests[name]
        if col.dtype.kind == "S":
            return np.char.decode(col, "utf-8", "replace")
        return col

    def token_times_of(self, i) -> np.ndarray:
        row = self.requests[i]
        start = int(row["tok_start"])
        return self.token_times[start:start + int(row["tok_count"])]

    @property
    def offsets(self) -> np.ndarray:
        """Start offsets into `token_times`, one per row plus the end of the last row."""
        starts = self.requests["tok_start"]
        ends = starts + self.requests["tok_count"]
        return np.append(starts, ends[-1] if len(ends) else 0)

    def error_of(self, i) -> str:
        row = self.requests[i]
        start = int(row["error_start"])
        return self._error_bytes[start:start + int(row["error_len"])].decode("utf-8", "replace")

    def server_timings_of(self, i) -> dict:
        row = self.requests[i]
        start, n = int(row["timings_start"]), int(row["timings_len"])
        return json.loads(self._timings_bytes[start:start + n]) if n else {}

    @property
    def errors(self) -> list:
        return [self.error_of(i) for i in range(len(self))]

    def as_columns(self) -> dict:
        """Per-request columns as a dict of numpy arrays (pandas.DataFrame(r.as_columns()))."""
        cols = {name: self.column(name) for name in self.requests.dtype.names}
        cols["status"] = self.status
        cols["error"] = np.array(self.errors, dtype=object)
        return cols


def _decode_attrs(obj) -> dict:
    json_keys = set(json.loads(obj.attrs.get("_json_keys", "[]")))
    out = {}
    for key, value in obj.attrs.items():
        if key == "_json_keys":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.generic):
            value = value.item()
        if key in json_keys:
            value = json.loads(value)
        out[key] = value
    return out


def _read_ranks(group) -> list:
    columns = json.loads(group.attrs.get("columns", "[]"))
    json_keys = set(json.loads(group.attrs.get("_json_keys", "[]")))
    data = {}
    for key in columns:
        values = group[key][()]
        if values.dtype.kind in "OS":
            values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
            if key in json_keys:
                values = [json.loads(v) for v in values]
        else:
            values = values.tolist()
        data[key] = values
    n = len(next(iter(data.values()))) if data else 0
    return [{key: data[key][i] for key in columns} for i in range(n)]


def _open(path):
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ResultsError(f"{path}: is a directory, not a results file")
    if not h5py.is_hdf5(path):
        raise ResultsError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as first:
        if "truncated file" in str(first):
            # An SWMR read skips the end-of-file check too, then retries every read past the
            # end with back-off: minutes per object, a hang to the user. A live or killed
            # writer's file fails the open-for-write check instead (see below).
            stored = re.search(r"stored_eof = (\d+)", str(first))
            expected = f" of the {stored[1]} its superblock records" if stored else ""
            raise ResultsError(f"{path}: truncated HDF5 file ({os.path.getsize(path)} bytes{expected}): "
                               f"an incomplete copy?") from None
        # A file last opened by an SWMR writer that never closed (kill -9):
        # HDF5 refuses a plain open, an SWMR read skips that check.
        try:
            return h5py.File(path, "r", swmr=True)
        except OSError:
            raise ResultsError(f"{path}: cannot open HDF5 file ({first})") from None


def _valid_rows(rows, n_tok, n_err, n_tim, token_times):
    """Rows whose status and referenced data are on disk (a killed flush may leave fill values)."""
    ok = rows["status"] != schema.UNWRITTEN
    ok &= rows["tok_start"] + rows["tok_count"] <= n_tok
    ok &= rows["error_start"] + rows["error_len"] <= n_err
    ok &= rows["timings_start"] + rows["timings_len"] <= n_tim
    # Token times not yet flushed read as the NaN fill value.
    if n_tok and np.isnan(token_times).any():
        for i in np.flatnonzero(ok & (rows["tok_count"] > 0)):
            s = rows["tok_start"][i]
            if np.isnan(token_times[s:s + rows["tok_count"][i]]).any():
                ok[i] = False
    return ok


def read_results(path) -> Results:
    path = os.fspath(path)
    f = _open(path)
    with f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        if fmt != schema.FORMAT:
            shown = "none" if fmt is None else repr(fmt)
            raise ResultsError(f"{path}: not an llcuda-mpi results file (format attribute {shown})")
        version = int(f.attrs.get("version", -1))
        if version > schema.VERSION:
            raise ResultsError(f"{path}: results schema version {version} is newer than this "
                               f"llcuda-mpi reads ({schema.VERSION}); upgrade llcuda-mpi")
        if version < 1:
            raise ResultsError(f"{path}: invalid results schema version {version}")
        missing = [n for n in (schema.REQUESTS, schema.TOKEN_TIMES, schema.ERROR_TEXT,
                               schema.SERVER_TIMINGS, schema.PROVENANCE) if n not in f]
        if missing:
            raise ResultsError(f"{path}: damaged results file (missing {', '.join(missing)})")
        attrs = _decode_attrs(f)
        try:
            config = json.loads(attrs.pop("config", "{}"))
        except json.JSONDecodeError:
            raise ResultsError(f"{path}: damaged results file (config is not JSON)") from None
        provenance = _decode_attrs(f[schema.PROVENANCE])
        rows = f[schema.REQUESTS][()]
        token_times = f[schema.TOKEN_TIMES][()]
        err = f[schema.ERROR_TEXT][()].tobytes()
        tim = f[schema.SERVER_TIMINGS][()].tobytes()
        ranks = _read_ranks(f[schema.RANKS]) if schema.RANKS in f else []
    ok = _valid_rows(rows, len(token_times), len(err), len(tim), token_times)
    complete = "t_end" in attrs
    return Results(path=path, version=version, attrs=attrs, provenance=provenance, config=config,
                   requests=rows[ok], token_times=token_times, ranks=ranks, complete=complete,
                   n_dropped=int((~ok).sum()), _error_bytes=err, _timings_bytes=tim)

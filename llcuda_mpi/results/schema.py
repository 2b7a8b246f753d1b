"""HDF5 results schema v1: names, dtypes and codes shared by writer and reader.

docs/results-format.md describes every object; keep the two in step. Times
are `time.time()` seconds (float64); durations are seconds.
"""

import numpy as np

FORMAT = "llcuda-mpi-results"
VERSION = 1

# Status codes. 0 is HDF5's default fill value, so a row whose extent reached
# the file but whose data did not (a writer killed mid-flush) reads as 0 and
# the reader drops it.
UNWRITTEN = 0
STATUS_CODES = {"ok": 1, "error": 2, "timeout": 3}
STATUS_NAMES = {code: name for name, code in STATUS_CODES.items()}

DEVICE_LEN = 48          # bytes of the fixed-length device string
FINISH_LEN = 16          # bytes of the fixed-length finish reason

# One row per request, one compound dataset: a row is written (and flushed)
# as a unit, and pandas reads it in one line.
REQUEST_DTYPE = np.dtype([
    ("request_id", "<i8"),
    ("rank", "<i4"),
    ("device", f"S{DEVICE_LEN}"),
    ("warmup", "u1"),            # 1 = warmup request, excluded from statistics
    ("status", "u1"),            # STATUS_CODES
    ("n_prompt", "<i4"),
    ("n_output", "<i4"),
    ("t_submit", "<f8"),         # handed to the backend (s since the epoch)
    ("t_first", "<f8"),          # first token; NaN if none
    ("t_end", "<f8"),            # completion (ok, error or timeout)
    ("ttft", "<f8"),             # t_first - t_submit (s); NaN if no token
    ("tpot", "<f8"),             # (e2e - ttft) / (n_output - 1) (s); NaN if n_output < 2
    ("e2e", "<f8"),              # t_end - t_submit (s)
    ("finish_reason", f"S{FINISH_LEN}"),
    ("tok_start", "<i8"),        # token_times[tok_start : tok_start + tok_count]
    ("tok_count", "<i4"),
    ("error_start", "<i8"),      # error_text[error_start : error_start + error_len] (UTF-8)
    ("error_len", "<i4"),
    ("timings_start", "<i8"),    # server_timings[timings_start : ... + timings_len] (JSON, UTF-8)
    ("timings_len", "<i4"),
])

# Dataset names.
REQUESTS = "requests"
TOKEN_TIMES = "token_times"      # float64, flat: per-token (or per-chunk) arrival times
ERROR_TEXT = "error_text"        # uint8, flat UTF-8
SERVER_TIMINGS = "server_timings"  # uint8, flat UTF-8 JSON objects
RANKS = "ranks"                  # group: one dataset per per-rank summary key
PROVENANCE = "provenance"        # group: attributes only

REQUEST_CHUNK = 4096             # rows (~560 KB)
FLAT_CHUNK = 65536               # elements

# Root attributes written at close (absent from a killed run's .tmp file).
CLOSE_ATTRS = ("t_start", "t_end", "n_requests")

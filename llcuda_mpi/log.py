"""Rank-aware logging for SPMD jobs.

Rank 0 (the master) logs plainly; every other rank prefixes its lines with
`[rank N]` so that interleaved stderr from many workers stays readable. All
log lines go to stderr: stdout is reserved for a job's printed results (the
summary table), so it can be piped.

    from llcuda_mpi import log
    log.setup(rank)            # once, right after MPI init
    log.info("loaded %s", path)
"""

import logging
import sys

LOGGER_NAME = "llcuda_mpi"
_logger = logging.getLogger(LOGGER_NAME)


def setup(rank: int, level: int = logging.INFO, stream=None) -> logging.Logger:
    """Configure the package logger for this rank (idempotent)."""
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
    _logger.addHandler(handler)
    _logger.setLevel(level)
    _logger.propagate = False
    return _logger


def get() -> logging.Logger:
    return _logger


def debug(msg, *args):
    _logger.debug(msg, *args)


def info(msg, *args):
    _logger.info(msg, *args)


def warning(msg, *args):
    _logger.warning(msg, *args)


def error(msg, *args):
    _logger.error(msg, *args)

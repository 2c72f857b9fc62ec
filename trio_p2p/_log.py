"""Logging helpers: the library's loggers and a rate limit for bad-input warnings."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedWarnings", "get_logger"]


def get_logger(area: str) -> logging.Logger:
    """The logger of one area of the library: ``trio_p2p.<area>``."""
    return logging.getLogger(f"trio_p2p.{area}")


class RateLimitedWarnings:
    """Logs at most *burst* warnings per *period* seconds; counts the rest.

    A flood of bad input therefore cannot flood the log: when the period
    ends, the next warning says how many were suppressed.

    Args:
        logger: where to log.
        burst: warnings allowed per period.
        period: length of a period, in seconds (monotonic clock).
    """

    def __init__(self, logger: logging.Logger, burst: int = 10, period: float = 10.0) -> None:
        self._logger = logger
        self._burst = burst
        self._period = period
        self._window_start = -float("inf")
        self._count = 0
        self._suppressed = 0

    def reset(self) -> None:
        """Start a new period now, forgetting what was logged and suppressed."""
        self._window_start = -float("inf")
        self._count = 0
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        """Log *msg* % *args* at WARNING unless the rate limit is reached."""
        self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        """Log *msg* % *args* at INFO unless the rate limit is reached."""
        self.log(logging.INFO, msg, *args)

    def log(self, level: int, msg: str, *args: object) -> None:
        """Log *msg* % *args* at *level* unless the rate limit is reached."""
        now = time.monotonic()
        if now - self._window_start >= self._period:
            if self._suppressed:
                self._logger.log(
                    level,
                    "%d similar messages suppressed in the last %g s",
                    self._suppressed,
                    self._period,
                )
            self._window_start = now
            self._count = 0
            self._suppressed = 0
        if self._count < self._burst:
            self._count += 1
            self._logger.log(level, msg, *args)
        else:
            self._suppressed += 1

"""What the benchmark scripts share: reporting to the driver, ports, memory."""

from __future__ import annotations

import json
import resource
import socket
from typing import Any


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """CPU time (user and system, every thread) used so far by *who*."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def report(**values: Any) -> None:
    """One JSON line to the driver on stdout."""
    print(json.dumps(values), flush=True)


def free_port(kind: int) -> int:
    """A free loopback port of the socket type *kind* (SOCK_STREAM or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

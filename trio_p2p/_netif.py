"""Network interfaces: where to send beacons (ifaddr, plus Linux link flags)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ifaddr

__all__ = ["broadcast_addresses", "interface_is_up", "source_addresses"]

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def _link_flags(name: str) -> int | None:
    """The interface's flags from sysfs (Linux), or None where they are not readable."""
    try:
        return int(Path("/sys/class/net", name, "flags").read_text(), 16)
    except (OSError, ValueError):
        return None


def interface_is_up(name: str) -> bool:
    """True unless the system says the interface is down (ifaddr has no such flag)."""
    flags = _link_flags(name)
    return flags is None or bool(flags & _IFF_UP)


def _ipv4s(adapter: Any) -> Iterable[ipaddress.IPv4Interface]:
    for ip in adapter.ips:
        if isinstance(ip.ip, str):
            try:
                yield ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
            except ValueError:
                continue


def broadcast_addresses(
    adapters: Iterable[Any] | None = None,
    *,
    is_up: Callable[[str], bool] = interface_is_up,
    include_loopback: bool = False,
) -> tuple[str, ...]:
    """The broadcast address of every up IPv4 interface, sorted, without repeats.

    Args:
        adapters: ifaddr adapters to look at (default: this machine's).
        is_up: tells whether an interface, by name, is up.
        include_loopback: also list loopback networks (127.255.255.255).

    Point-to-point networks (/31, /32) have no broadcast address and are skipped.
    """
    if adapters is None:
        adapters = ifaddr.get_adapters()
    found: set[str] = set()
    for adapter in adapters:
        if not is_up(adapter.name):
            continue
        for interface in _ipv4s(adapter):
            network = interface.network
            if network.prefixlen >= 31:
                continue
            if interface.ip.is_loopback and not include_loopback:
                continue
            found.add(str(network.broadcast_address))
    return tuple(sorted(found, key=ipaddress.IPv4Address))


def source_addresses(
    targets: Iterable[str],
    adapters: Iterable[Any] | None = None,
    *,
    is_up: Callable[[str], bool] = interface_is_up,
    limit: int = 16,
) -> dict[str, tuple[str, ...]]:
    """For each broadcast *target*, the addresses a datagram to it may come from.

    They are this machine's IPv4 addresses on the up networks whose broadcast
    address is the target (loopback included: ``127.255.255.255`` gives
    ``127.0.0.1``). For a target no network matches (a unicast address, say),
    every up IPv4 address of the machine. At most *limit* per target, sorted.
    """
    if adapters is None:
        adapters = ifaddr.get_adapters()
    by_broadcast: dict[str, set[str]] = {}
    everything: set[str] = set()
    for adapter in adapters:
        if not is_up(adapter.name):
            continue
        for interface in _ipv4s(adapter):
            everything.add(str(interface.ip))
            by_broadcast.setdefault(str(interface.network.broadcast_address), set()).add(
                str(interface.ip)
            )

    def ordered(addresses: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(addresses, key=ipaddress.IPv4Address)[:limit])

    return {target: ordered(by_broadcast.get(target) or everything) for target in targets}

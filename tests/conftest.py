"""Shared fixtures: every messenger in a test broadcasts only to 127.255.255.255
on a discovery port of its own, so tests never reach a real network."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

from trio_p2p import Config
from trio_p2p._log import RateLimitedWarnings


@pytest.fixture(autouse=True)
def _private_data_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLI nodes (and their subprocesses) keep their identities in a temporary folder."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(autouse=True)
def _fresh_warning_limits() -> None:
    """Each test starts with the bad-input warning limits unspent (they are global)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("trio_p2p."):
            for value in list(vars(module).values()):
                if isinstance(value, RateLimitedWarnings):
                    value.reset()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


ConfigFactory = Callable[..., Config]


@pytest.fixture
def make_config() -> ConfigFactory:
    """Configs that share one private discovery port and loopback broadcast."""
    port = free_udp_port()

    def make(**changes: Any) -> Config:
        settings: dict[str, Any] = {
            "discovery_port": port,
            "tcp_port": 0,
            "broadcast_addresses": ("127.255.255.255",),
            "announce_interval": 0.2,
            "peer_timeout": 1.0,
            "heartbeat_interval": 0.2,
            "heartbeat_timeout": 1.0,
            "handshake_timeout": 1.0,
        }
        settings.update(changes)
        return Config(**settings)

    return make

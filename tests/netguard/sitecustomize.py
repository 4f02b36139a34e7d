"""The tests' no-network guard, installed in every Python process a test starts.

``tests/conftest.py`` puts this folder first on ``PYTHONPATH`` and sets
``AL_DET_TEST_NO_NETWORK=1``, so child processes (``al-det``, ``torchrun`` and its workers)
import this at start-up: a connection to anything but loopback or a Unix socket raises, so a
forgotten ``weights: DEFAULT`` in a subprocess fails instead of downloading. Outside the tests
(the variable unset) it does nothing.
"""

from __future__ import annotations

import os
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def allowed(sock: socket.socket, address: object) -> bool:
    """Loopback and Unix sockets only."""
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1"))


def _guarded_connect(self: socket.socket, address: object) -> object:
    if not allowed(self, address):
        raise RuntimeError(f"tests must not use the network (tried {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> object:
    if not allowed(self, address):
        raise RuntimeError(f"tests must not use the network (tried {address!r})")
    return _real_connect_ex(self, address)


def install() -> None:
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


if os.environ.get("AL_DET_TEST_NO_NETWORK") == "1":
    install()

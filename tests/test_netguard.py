"""The no-network guard covers the processes the tests start, not only the test process."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

CHILD = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
except RuntimeError as exc:
    print("refused:", exc)
else:
    print("connected")
"""


def _child(host: str, port: int) -> str:
    # the plain environment the tests pass on (conftest set PYTHONPATH and the switch)
    out = subprocess.run([sys.executable, "-c", CHILD, host, str(port)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("host", ["10.255.255.1", "192.0.2.1", "2001:db8::1"])
def test_child_process_cannot_reach_the_network(host: str) -> None:
    assert _child(host, 80).startswith("refused: tests must not use the network")


def test_child_process_may_use_loopback() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert _child("127.0.0.1", server.getsockname()[1]) == "connected"


def test_this_process_cannot_reach_the_network() -> None:
    with pytest.raises(RuntimeError, match="must not use the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=5)

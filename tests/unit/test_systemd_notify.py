"""sd_notify must never block the daemon, whatever the state of the notify socket."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from lucidd.daemon.supervisor.systemd import notify

# More datagrams than net.unix.max_dgram_qlen (512 by default) queue on one socket.
MANY = 2000


def test_notify_to_a_socket_nobody_reads_returns_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path)}
        results: list[bool] = []
        sender = threading.Thread(
            target=lambda: results.extend(notify("STATUS=x", env) for _ in range(MANY)),
            daemon=True,
        )
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "notify blocked on a full notify socket"
        assert results[0] is True
        assert results[-1] is False

"""The multi-user test rig itself: a daemon as one throw-away user, a client as another."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import Daemon
from tests.users import HostUsers


def test_a_client_of_the_daemons_group_reaches_a_daemon_run_as_another_user(
    user_daemon: Callable[..., Daemon], host_users: HostUsers
) -> None:
    daemon = user_daemon()
    result = host_users.alice.lucidctl("--runtime-dir", daemon.runtime_dir, "--json", "health")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["status"] == "ok"
    assert daemon.state_dir.stat().st_uid == host_users.daemon.uid

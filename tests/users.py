"""Throw-away host users for tests of a shared host (issue 10).

CI runs as root: :func:`make_host_users` creates a group and a few users with ``useradd``, the
daemon runs as one of them and clients as the others (``setpriv``), and everything is deleted
afterwards. Without root (or without ``useradd``/``setpriv``) the tests that need them skip,
saying why.

The interpreter may live under a folder the throw-away users cannot enter (``/root/.pyenv``
with ``/root`` at 0700). Then, and only then, their processes get the ambient capability
``CAP_DAC_READ_SEARCH``: it lets them read and traverse files, so Python can start, but not
write or connect anywhere DAC forbids, and ``SO_PEERCRED`` still reports the user's uid, which
is what lucidd authorizes on.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Why a multi-user test cannot run here (None when it can).
NO_USERS_REASON: str | None = (
    "needs root to create throw-away users (CI runs as root)"
    if os.geteuid() != 0
    else "needs useradd, groupadd and setpriv"
    if not all(shutil.which(tool) for tool in ("useradd", "groupadd", "setpriv"))
    else None
)
requires_users = pytest.mark.skipif(NO_USERS_REASON is not None, reason=NO_USERS_REASON or "")


@dataclass(frozen=True)
class HostUser:
    """One throw-away user; :meth:`command` runs a program as that user."""

    name: str
    uid: int
    gid: int

    def command(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` as this user, with the caller's environment (see :meth:`run`)."""
        prefix = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        if _needs_read_search_cap():
            prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        return [*prefix, "--", *map(str, argv)]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a login of this user would have (no root's variables)."""
        env = {
            "HOME": "/nonexistent",
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }
        env.update(extra or {})
        return env

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        env: dict[str, str] | None = None,
        stdin: bytes = b"",
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as this user with only :meth:`env`'s variables (none of root's)."""
        full = self.command(["env", "-i", *(f"{k}={v}" for k, v in self.env(env).items()), *argv])
        return subprocess.run(full, input=stdin, capture_output=True, timeout=timeout, check=False)

    def python(
        self, code: str, *, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``python -c code`` as this user, with lucidd importable."""
        return self.run([sys.executable, "-c", code], env=env, timeout=timeout)

    def lucidctl(
        self, *args: str | Path, env: dict[str, str] | None = None, stdin: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        return self.run([sys.executable, "-m", "lucidd.cli", *map(str, args)], env=env, stdin=stdin)


@dataclass(frozen=True)
class HostUsers:
    """The cast of a shared host.

    ``daemon`` runs lucidd; its primary group ``group`` is the one clients join. ``alice`` and
    ``bob`` are ordinary clients, ``admin`` is also in ``admin_group``, and ``outsider`` is in no
    group of lucidd's.
    """

    group: str
    gid: int
    admin_group: str
    admin_gid: int
    daemon: HostUser
    alice: HostUser
    bob: HostUser
    admin: HostUser
    outsider: HostUser


@functools.cache
def _needs_read_search_cap() -> bool:
    """Can an unprivileged user start this interpreter and import lucidd as it is?"""
    probe = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            sys.executable,
            "-c",
            # The daemon's forkserver re-executes sys.executable: probe that, not just imports.
            "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import lucidd'],"
            " check=True)",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode != 0


def _add_group(name: str) -> int:
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    return grp.getgrnam(name).gr_gid


def _add_user(name: str, primary: str, groups: Sequence[str] = ()) -> HostUser:
    argv = ["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "-g", primary]
    if groups:
        argv += ["-G", ",".join(groups)]
    subprocess.run([*argv, name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    return HostUser(name, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def make_host_users() -> Iterator[HostUsers]:
    """Create the cast (names ``ldt<random>-<role>``), delete it afterwards."""
    tag = "ldt" + os.urandom(3).hex()
    groups: list[str] = []
    users: list[str] = []
    try:
        group, admin_group = f"{tag}-g", f"{tag}-adm"
        gid = _add_group(group)
        groups.append(group)
        admin_gid = _add_group(admin_group)
        groups.append(admin_group)
        cast: dict[str, HostUser] = {}
        for role, primary, extra in (
            ("daemon", group, ()),
            ("alice", f"{tag}-alice", (group,)),
            ("bob", f"{tag}-bob", (group,)),
            ("admin", f"{tag}-admin", (group, admin_group)),
            ("outsider", f"{tag}-out", ()),
        ):
            if primary != group:
                _add_group(primary)
                groups.append(primary)
            cast[role] = _add_user(f"{tag}-{role}", primary, extra)
            users.append(cast[role].name)
        yield HostUsers(group=group, gid=gid, admin_group=admin_group, admin_gid=admin_gid, **cast)
    finally:
        for user in users:
            subprocess.run(["userdel", user], check=False, capture_output=True)
        for group in reversed(groups):
            subprocess.run(["groupdel", group], check=False, capture_output=True)

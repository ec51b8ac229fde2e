"""The daemon's folder rules (daemon.folders) and the client's socket checks, without a daemon.

The end-to-end versions, with a daemon and users of a shared host, are in
tests/integration/test_squatting.py.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lucidd.client import check_peer, trusted_peer_uids
from lucidd.daemon.folders import RUNTIME_DIR_MODE, STATE_DIR_MODE, ensure_own_folder
from lucidd.daemon.supervisor.fds import (
    RESERVE_FDS,
    FdReserve,
    fd_budget,
    fds_needed,
    open_fd_count,
)
from lucidd.errors import ConfigError, UntrustedSocketError

FOREIGN_UID = 12345


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.mark.parametrize("mode", [STATE_DIR_MODE, RUNTIME_DIR_MODE])
def test_a_missing_folder_is_created_with_the_exact_mode(
    tmp_path: Path, umask_000: None, mode: int
) -> None:
    path = tmp_path / "a" / "b"
    ensure_own_folder(path, mode, "state folder")
    assert mode_of(path) == mode


def test_an_exact_mode_whatever_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        ensure_own_folder(tmp_path / "run", RUNTIME_DIR_MODE, "runtime folder")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "run") == RUNTIME_DIR_MODE


def test_an_existing_folder_of_ours_is_kept_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()
    os.chmod(path, 0o755)
    ensure_own_folder(path, STATE_DIR_MODE, "state folder")
    assert mode_of(path) == 0o755  # not writable by others: accepted, never chmodded


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_a_folder_others_can_write_is_refused_naming_it_its_owner_and_mode(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "run"
    path.mkdir()
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as info:
        ensure_own_folder(path, RUNTIME_DIR_MODE, "runtime folder")
    message = info.value.message
    assert str(path) in message
    assert f"owner uid {os.geteuid()}" in message
    assert f"mode {mode:04o}" in message
    assert info.value.exit_code == 78
    assert mode_of(path) == mode  # refused, not "fixed"


def test_a_symlink_is_refused_even_to_a_good_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        ensure_own_folder(link, RUNTIME_DIR_MODE, "runtime folder")


def test_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a folder"):
        ensure_own_folder(path, RUNTIME_DIR_MODE, "runtime folder")


def test_a_folder_of_another_uid_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, FOREIGN_UID, -1)
    with pytest.raises(ConfigError, match=f"owner uid {FOREIGN_UID}.*not owned by"):
        ensure_own_folder(path, RUNTIME_DIR_MODE, "runtime folder")


# --- the client's side ----------------------------------------------------------------------


def test_the_client_refuses_a_socket_folder_others_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    os.chmod(folder, 0o777)
    for explicit in (False, True):
        with pytest.raises(UntrustedSocketError, match="writable by group or others") as info:
            trusted_peer_uids(folder / "data.sock", explicit)
        assert info.value.exit_code == 77
        assert str(folder) in info.value.message and "mode 0777" in info.value.message


def test_the_client_trusts_a_foreign_folder_only_when_it_was_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    folder = tmp_path / "run"
    folder.mkdir(mode=0o750)
    os.chown(folder, FOREIGN_UID, -1)
    with pytest.raises(UntrustedSocketError, match=f"owner uid {FOREIGN_UID}.*is not ours"):
        trusted_peer_uids(folder / "data.sock", explicit=False)
    assert FOREIGN_UID in trusted_peer_uids(folder / "data.sock", explicit=True)


def test_the_client_refuses_a_peer_of_an_untrusted_uid() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        check_peer(left, Path("/x/data.sock"), frozenset({os.getuid()}))
        with pytest.raises(UntrustedSocketError, match=f"runs as uid {os.getuid()}"):
            check_peer(left, Path("/x/data.sock"), frozenset({FOREIGN_UID}))


# --- descriptors ----------------------------------------------------------------------------


def test_the_fd_budget_leaves_the_daemon_its_own_descriptors() -> None:
    assert fd_budget(fds_needed(10), 10) == 0
    assert fd_budget(100, 10) == 0  # never negative
    assert fd_budget(65536, 10) == 65536 - fds_needed(10)
    assert fd_budget(65536, 50) < fd_budget(65536, 1)  # more workers, fewer connections


def test_the_reserve_is_released_for_a_block_and_taken_back() -> None:
    reserve = FdReserve()
    try:
        assert reserve.held == RESERVE_FDS
        before = open_fd_count()
        with reserve.released():
            assert open_fd_count() == before - RESERVE_FDS
        assert reserve.held == RESERVE_FDS
        assert open_fd_count() == before
    finally:
        reserve.close()

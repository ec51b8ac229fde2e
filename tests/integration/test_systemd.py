"""lucidd as a systemd service (issue 6): the units, socket activation, sd_notify, journald.

The unit checks run systemd's own tools (``systemd-analyze``, ``systemd-socket-activate``,
``systemd-creds``) and skip, naming the missing tool, where the ``systemd`` package is not
installed; CI installs it (``.ci/run``). ``systemd/pid1-check.sh`` runs the units under a real
systemd as PID 1 (too slow and too privileged for this suite).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.crypto import Keyring
from lucidd.daemon.config import RANGES
from lucidd.daemon.keyfile import CREDENTIAL_NAME, write_keyring
from lucidd.daemon.logs import JournalFormatter, journal_priority, stderr_is_journal
from lucidd.daemon.supervisor.fds import fd_budget
from lucidd.daemon.supervisor.main import DRAIN_TIMEOUT_S, EXTEND_INTERVAL_S
from lucidd.daemon.supervisor.sockets import CONTROL_SOCKET, DATA_SOCKET, SOCKET_MODE
from lucidd.daemon.supervisor.systemd import Watchdog, listen_fds, notify
from lucidd.errors import EX_CONFIG
from tests.conftest import READY_TIMEOUT_S, Daemon

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNITS / "lucidd.service"
SOCKETS = {"data": UNITS / "lucidd.socket", "control": UNITS / "lucidd-control.socket"}
SOCKET_FILES = {"data": DATA_SOCKET, "control": CONTROL_SOCKET}
MAX_EXPOSURE = 1.0  # systemd-analyze security: up to 1.0 is "SAFE"
MAX_WORKERS = int(RANGES["workers"][1] or 0)
WATCHDOG_USEC = 400_000  # pings every 0.2 s
WATCH_S = 2.0
# What the test's environment may need to pass through systemd-socket-activate, which gives
# its child only the variables it is told to.
PASS_THROUGH_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "COVERAGE_PROCESS_START")

Unit = dict[str, dict[str, list[str]]]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install systemd)")
    return path


def parse_unit(path: Path) -> Unit:
    """A unit file as section -> key -> values (keys may repeat, as in systemd)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, is {values}"
    return values[0]


def timespan_s(value: str) -> float:
    """Seconds in a systemd time span such as ``30s``, ``2min``, ``1min 30s`` or ``90``."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


# -- the unit files -------------------------------------------------------------------------


def security_exposure(service: Path) -> tuple[float, str]:
    """``systemd-analyze security``'s overall exposure of ``service``, and its failing lines."""
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        cwd=UNITS,
        check=False,
    )
    name = re.escape(service.name)
    found = re.search(rf"Overall exposure level for {name}: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    failing = "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
    return float(found[1]), failing


def analyze_verify(service: Path, tmp_path: Path, *others: Path) -> str:
    """``systemd-analyze verify`` of ``service`` beside ``others``; its output. ``verify`` also
    checks that the programs of ExecStart= and ExecReload= exist: where lucidd is not installed
    at the unit's path, a stub stands in for it (nothing else in the units is changed)."""
    analyze = require_tool("systemd-analyze")
    program = one(parse_unit(service), "Service", "ExecStart").split()[0]
    text = service.read_text()
    if not os.access(program, os.X_OK):
        stub = tmp_path / "bin" / "lucidd"
        stub.parent.mkdir(exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
        # ExecStart= and ExecReload= ("lucidd keys load") name the same program.
        text = text.replace(f"{program} ", f"{stub} ")
    units = tmp_path / "units"
    units.mkdir()
    (units / service.name).write_text(text)
    for path in others:
        shutil.copy(path, units / path.name)
    checked = [units / service.name, *(units / p.name for p in others if p.suffix == ".socket")]
    result = subprocess.run(
        [analyze, "verify", "--man=no", "--recursive-errors=no", *map(str, checked)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    return output


def test_service_scores_safe_in_systemd_analyze_security() -> None:
    exposure, failing = security_exposure(SERVICE)
    assert exposure <= MAX_EXPOSURE, failing


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    output = analyze_verify(SERVICE, tmp_path, *SOCKETS.values())
    assert [line for line in output.splitlines() if "lucidd" in line] == []


def test_units_keep_the_daemons_contract() -> None:
    """What the daemon's code relies on, held against the unit files (no systemd needed)."""
    service = parse_unit(SERVICE)
    assert one(service, "Service", "Type") == "notify"
    assert one(service, "Service", "NotifyAccess") == "main"
    assert one(service, "Service", "KillMode") == "mixed"
    assert one(service, "Service", "ExecStart").endswith(" serve")
    # SIGHUP re-reads the keyring (docs/keys.md); it must reach the supervisor alone.
    reload = one(service, "Service", "ExecReload")
    assert reload == (
        "+/opt/lucidd/bin/lucidd keys load --credential /etc/credstore.encrypted/lucidd.keyring"
    )
    # It loads the very credential the daemon starts from.
    assert one(service, "Service", "LoadCredentialEncrypted").endswith(reload.split()[-1])
    assert timespan_s(one(service, "Service", "TimeoutStopSec")) == 30
    assert timespan_s(one(service, "Service", "TimeoutStopSec")) > DRAIN_TIMEOUT_S
    assert timespan_s(one(service, "Service", "WatchdogSec")) >= 2
    assert str(EX_CONFIG) in one(service, "Service", "RestartPreventExitStatus").split()
    credential = one(service, "Service", "LoadCredentialEncrypted")
    assert credential == f"{CREDENTIAL_NAME}:/etc/credstore.encrypted/{CREDENTIAL_NAME}"
    assert one(service, "Service", "StateDirectory") == "lucidd"
    assert one(service, "Service", "RuntimeDirectory") == "lucidd"
    assert one(service, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert one(service, "Service", "ConfigurationDirectory") == "lucidd"
    # Never wedged by descriptors, keys never in a core file (issue 10).
    assert fd_budget(int(one(service, "Service", "LimitNOFILE")), MAX_WORKERS) >= 60_000
    assert one(service, "Service", "LimitCORE") == "0"
    group = one(service, "Service", "Group")
    for name, path in SOCKETS.items():
        unit = parse_unit(path)
        assert one(unit, "Socket", "ListenStream") == f"/run/lucidd/{SOCKET_FILES[name]}"
        assert one(unit, "Socket", "FileDescriptorName") == name
        assert int(one(unit, "Socket", "SocketMode"), 8) == SOCKET_MODE
        assert one(unit, "Socket", "SocketGroup") == group
        assert one(unit, "Socket", "Service") == SERVICE.name
        assert path.name in one(service, "Unit", "Requires").split()
    sysusers = (UNITS / "lucidd.sysusers.conf").read_text().split("\n")
    assert any(line.split()[:2] == ["u", one(service, "Service", "User")] for line in sysusers)
    tmpfiles = [line.split() for line in (UNITS / "lucidd.tmpfiles.conf").read_text().split("\n")]
    assert ["d", "/run/lucidd", "0750", "lucidd", group, "-"] in tmpfiles


# -- sd_notify, socket activation and watchdog helpers --------------------------------------


def _wait_for_listening(path: Path, daemon: Daemon) -> None:
    """Until systemd-socket-activate says it listens on ``path``. (The socket file exists from
    bind(2) on, a moment before listen(2): a connect in between is refused.)"""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while f"Listening on {path} ".encode() not in daemon.log_path.read_bytes():
        alive = daemon.proc is not None and daemon.proc.poll() is None
        assert alive and time.monotonic() < deadline, f"{path} never listened"
        time.sleep(0.02)


# -- socket activation ----------------------------------------------------------------------


@pytest.mark.parametrize("order", [("data", "control"), ("control", "data")])
def test_socket_activation_serves_a_put_and_a_root_on_the_inherited_sockets(
    short_tmp: Path, order: tuple[str, str]
) -> None:
    """Both sockets come from ``systemd-socket-activate`` and are told apart by name
    ($LISTEN_FDNAMES), not by position: the test passes them in both orders."""
    activate = require_tool("systemd-socket-activate")
    paths = {"data": short_tmp / "d.sock", "control": short_tmp / "c.sock"}
    daemon = Daemon(short_tmp, workers=2)
    command = [activate, f"--fdname={order[0]}:{order[1]}"]
    for name in order:
        command += ["-l", str(paths[name])]
    command += ["-E", f"NOTIFY_SOCKET={daemon.notify_path}"]
    command += [arg for var in PASS_THROUGH_ENV if var in os.environ for arg in ("-E", var)]
    daemon.command_prefix = command
    daemon.launch()
    try:
        for path in paths.values():
            _wait_for_listening(path, daemon)
        session = new_session_id()
        # The first connection makes systemd-socket-activate exec the daemon (same pid).
        with DataClient(path=paths["data"], timeout=READY_TIMEOUT_S) as data:
            ack = data.put(session, 0, b"chunk through an inherited socket")
        ready = daemon.wait_for("READY=1", READY_TIMEOUT_S)
        with ControlClient(path=paths["control"]) as control:
            root = control.root(session)
            health = control.health()
        assert f"MAINPID={daemon.pid}" in ready
        assert (root.size, root.root) == (1, ack.leaf_hash)  # a one-leaf tree's root is it
        assert sorted(p.role for p in health.processes) == [
            "aggregator",
            "supervisor",
            "worker0",
            "worker1",
        ]
        run_dir = short_tmp / "run"
        assert not (run_dir / DATA_SOCKET).exists() and not (run_dir / CONTROL_SOCKET).exists()
        assert daemon.stop() == 0
        assert any("STOPPING=1" in m for m in daemon.notifications)
        # systemd's socket files are systemd's: the daemon leaves them in place.
        assert all(path.exists() for path in paths.values())
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()


# -- sd_notify ------------------------------------------------------------------------------


def test_ready_comes_once_both_sockets_serve_and_every_child_is_up(short_tmp: Path) -> None:
    daemon = Daemon(short_tmp, workers=3).start()  # returns as soon as READY=1 is received
    try:
        with ControlClient(daemon.runtime_dir) as control, DataClient(daemon.runtime_dir) as data:
            health = control.health()
            ack = data.put(new_session_id(), 0, b"first chunk right after READY=1")
        roles = sorted(p.role for p in health.processes if p.alive)
        assert roles == ["aggregator", "supervisor", "worker0", "worker1", "worker2"]
        assert ack.index == 0
        ready = next(m for m in daemon.notifications if "READY=1" in m)
        assert f"MAINPID={daemon.pid}" in ready.split("\n")
        assert any(line.startswith("STATUS=") for line in ready.split("\n"))
    finally:
        assert daemon.stop() == 0


def test_status_carries_live_figures_and_stopping_ends_the_conversation(short_tmp: Path) -> None:
    daemon = Daemon(short_tmp, workers=2, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)}).start()
    try:
        session = new_session_id()
        with DataClient(daemon.runtime_dir) as data:
            data.put_many(session, [(i, os.urandom(1000)) for i in range(3)], window=3)
        daemon.wait_for("acked 3, sessions 1", READY_TIMEOUT_S)
    finally:
        assert daemon.stop() == 0
    status = [m for m in daemon.notifications if m.startswith("STATUS=in flight")]
    assert status and all(
        re.match(r"STATUS=in flight \d+, acked \d+, sessions \d+", m) for m in status
    )
    assert "STOPPING=1" in daemon.notifications[-1]
    stopping = next(i for i, m in enumerate(daemon.notifications) if "STOPPING=1" in m)
    assert not any("WATCHDOG=1" in m for m in daemon.notifications[stopping:])


def _watchdog_pings(short_tmp: Path, env: Mapping[str, str], shell_pid: bool) -> tuple[int, int]:
    """Start the daemon with ``env``, count (WATCHDOG=1, STATUS=) messages over WATCH_S."""
    daemon = Daemon(
        short_tmp,
        workers=2,
        env=env,
        base_env={k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")},
        # WATCHDOG_PID must be the daemon's own pid: set it where it is known.
        command_prefix=["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"] if shell_pid else (),
    )
    try:
        daemon.start()
        window = daemon.collect(WATCH_S)
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()
    pings = sum("WATCHDOG=1" in m.split("\n") for m in window)
    statuses = sum(m.startswith("STATUS=") for m in window)
    return pings, statuses


@pytest.mark.parametrize(
    ("env", "shell_pid"),
    [({"WATCHDOG_USEC": str(WATCHDOG_USEC)}, False), ({"WATCHDOG_USEC": str(WATCHDOG_USEC)}, True)],
    ids=["no-watchdog-pid", "watchdog-pid-is-ours"],
)
def test_watchdog_keeps_coming_while_the_daemon_is_healthy(
    short_tmp: Path, env: dict[str, str], shell_pid: bool
) -> None:
    pings, _ = _watchdog_pings(short_tmp, env, shell_pid)
    # Every 0.2 s (half of WATCHDOG_USEC) for 2 s: ten; three leave room for a slow machine.
    assert pings >= 3


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": str(WATCHDOG_USEC), "LUCIDD_WATCHDOG": "false"},
        {},
    ],
    ids=["watchdog-for-another-pid", "watchdog-setting-off", "no-watchdog"],
)
def test_no_watchdog_pings_unless_systemd_asks_this_process(
    short_tmp: Path, env: dict[str, str]
) -> None:
    pings, statuses = _watchdog_pings(short_tmp, env, shell_pid=False)
    assert (pings, statuses > 0) == (0, True)


def test_a_recovery_whose_aggregator_cannot_open_the_sessions_stops_the_start_with_78(
    short_tmp: Path,
) -> None:
    """A keyring that opens none of the stored sessions makes the aggregator fail its
    recovery: the daemon says why and exits 78 at once (systemd's RestartPreventExitStatus=78
    keeps it down), instead of respawning it in a loop with no READY=1, and it never sends
    EXTEND_TIMEOUT_USEC= that would hold systemd's start open."""
    daemon = Daemon(short_tmp, workers=1).start()
    with DataClient(daemon.runtime_dir) as data:
        data.put(new_session_id(), 0, b"sealed under the first keyring")
    assert daemon.stop() == 0
    keyring = daemon.state_dir / "keys" / "keyring"
    keyring.unlink()
    write_keyring(Keyring.generate(), keyring)
    restarted = Daemon(short_tmp, workers=1, ready_timeout=EXTEND_INTERVAL_S * 2)
    try:
        with pytest.raises(AssertionError, match="lucidd exited with 78"):
            restarted.start()
        log = restarted.log()
        assert "event=aggregator_start_failed code=keyring" in log
        assert "event=start_failed role=aggregator exitcode=78" in log
        assert log.count("event=child_died role=aggregator") == 1  # no respawn loop
        assert not any("EXTEND_TIMEOUT_USEC=" in m for m in restarted.notifications)
    finally:
        restarted.kill_all()


# -- journald -------------------------------------------------------------------------------


def test_log_lines_carry_syslog_priorities_when_stderr_is_the_journal_stream(
    short_tmp: Path,
) -> None:
    log_path = short_tmp / "lucidd.log"
    log_path.touch()
    st = log_path.stat()
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "LUCIDD_DURABILITY": "os"}
    daemon = Daemon(short_tmp, workers=1, env=env).start()
    assert daemon.stop() == 0
    lines = log_path.read_text().splitlines()
    assert lines and all(re.match(r"<[0-7]>(supervisor|aggregator|worker0): ", x) for x in lines)
    assert any(x.startswith("<4>supervisor: event=durability_os") for x in lines)
    assert any(x.startswith("<6>supervisor: event=ready") for x in lines)
    assert any(x.startswith("<6>aggregator: ") for x in lines)


def test_log_lines_are_plain_when_journal_stream_names_another_file(short_tmp: Path) -> None:
    other = os.stat("/")
    env = {"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"}
    daemon = Daemon(short_tmp, workers=1, env=env).start()
    assert daemon.stop() == 0
    lines = (short_tmp / "lucidd.log").read_text().splitlines()
    assert lines and not any(x.startswith("<") for x in lines)
    assert any(re.match(r"\d{4}-\d\d-\d\d .* supervisor\[\d+\] INFO event=ready", x) for x in lines)


def test_every_line_of_a_traceback_keeps_the_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "event=x", (), sys.exc_info())
    lines = JournalFormatter("worker0: %(message)s").format(record).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[0] == "<3>worker0: event=x"


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (logging.WARNING + 5, 4),
        (1, 7),
    ],
)
def test_journal_priority_follows_the_level(level: int, priority: int) -> None:
    assert journal_priority(level) == priority


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    path.touch()
    st = path.stat()
    with path.open("rb") as f:
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())
        assert not stderr_is_journal({}, f.fileno())


# -- lucidd.daemon.supervisor.systemd, without systemd ----------------------------------------


def test_notify_reaches_an_abstract_socket_and_never_raises() -> None:
    name = f"lucidd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(64) == b"READY=1"
    assert not notify("READY=1", {"NOTIFY_SOCKET": "@" + name})  # nobody listens any more
    assert not notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not notify("READY=1", {})


def test_listen_fds_ignores_sockets_meant_for_another_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "data:control"}
    assert listen_fds(env) == {}
    assert listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}) == {}
    assert listen_fds({}) == {}


def test_listen_fds_names_the_passed_sockets_and_makes_them_close_on_exec() -> None:
    """In a child whose fds 3 and 4 are inheritable sockets, as systemd passes them."""
    code = (
        "import os, sys\n"
        "from lucidd.daemon.supervisor.systemd import listen_fds\n"
        "for target, fd in enumerate(sys.argv[1:], start=3):\n"
        "    os.dup2(int(fd), target)  # inheritable, like systemd's\n"
        "    os.close(int(fd))\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "print(sorted(listen_fds().items()), os.get_inheritable(3), os.get_inheritable(4))\n"
    )
    a, b = socket.socketpair()
    with a, b:
        # Above fd 4, so moving them to 3 and 4 in the child cannot clobber one with the other.
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 10) for s in (a, b)]
        env = {**os.environ, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "control:data"}
        try:
            result = subprocess.run(
                [sys.executable, "-c", code, *map(str, high)],
                env=env,
                pass_fds=high,
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            for fd in high:
                os.close(fd)
    assert result.stdout.strip() == "[('control', 3), ('data', 4)] False False"


def test_watchdog_pings_at_half_the_interval_systemd_expects() -> None:
    watchdog = Watchdog.from_env({"WATCHDOG_USEC": "30000000"})
    assert watchdog is not None and watchdog.interval_s == 15.0
    pid = str(os.getpid())
    assert Watchdog.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) is not None
    assert Watchdog.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert Watchdog.from_env({"WATCHDOG_USEC": "0"}) is None
    assert Watchdog.from_env({"WATCHDOG_USEC": "soon"}) is None
    assert Watchdog.from_env({}) is None


# -- lucidd keygen and systemd-creds --------------------------------------------------------


def _keygen(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lucidd", "keygen", *args], capture_output=True, check=False
    )


def test_keygen_writes_a_new_keyring_to_stdout() -> None:
    first, second = _keygen(), _keygen()
    assert first.returncode == second.returncode == 0
    assert Keyring.parse(first.stdout) != Keyring.parse(second.stdout)
    assert len(Keyring.parse(first.stdout).current_key) == 32


def test_keygen_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "lucidd.keyring"
    assert _keygen("-o", str(path)).returncode == 0
    written = path.read_bytes()
    assert (path.stat().st_mode & 0o777) == 0o600
    again = _keygen("-o", str(path))
    assert again.returncode != 0 and b"already exists" in again.stderr
    assert path.read_bytes() == written
    Keyring.parse(written)


def test_keygen_piped_into_systemd_creds_decrypts_to_the_same_keyring(tmp_path: Path) -> None:
    """README's ``lucidd keygen | systemd-creds encrypt --name=lucidd.keyring - FILE``, with a
    host key of the test's own (``$SYSTEMD_CREDENTIAL_SECRET``) instead of the machine's."""
    creds = require_tool("systemd-creds")
    env = {**os.environ, "SYSTEMD_CREDENTIAL_SECRET": str(tmp_path / "host.secret")}
    sealed = tmp_path / CREDENTIAL_NAME
    keygen = subprocess.Popen([sys.executable, "-m", "lucidd", "keygen"], stdout=subprocess.PIPE)
    assert keygen.stdout is not None
    encrypt = subprocess.run(
        [creds, "encrypt", "--with-key=host", f"--name={CREDENTIAL_NAME}", "-", str(sealed)],
        stdin=keygen.stdout,
        env=env,
        capture_output=True,
        check=False,
    )
    keygen.stdout.close()
    assert keygen.wait() == 0
    assert encrypt.returncode == 0, encrypt.stderr
    assert b"lucidd-keyring" not in sealed.read_bytes()
    decrypt = subprocess.run(
        [creds, "decrypt", f"--name={CREDENTIAL_NAME}", str(sealed), "-"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert decrypt.returncode == 0, decrypt.stderr
    assert len(Keyring.parse(decrypt.stdout).key_ids) == 1
    wrong_name = subprocess.run(
        [creds, "decrypt", "--name=other", str(sealed), "-"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert wrong_name.returncode != 0


# -- lucidd-http.service (issue 15) ---------------------------------------------------------

HTTP_SERVICE = UNITS / "lucidd-http.service"
#: It needs loopback TCP and no user namespace (it reads its Unix peers' uids), which cost
#: exposure points the daemon's unit does not pay.
MAX_HTTP_EXPOSURE = 1.5


def test_http_service_scores_well_in_systemd_analyze_security() -> None:
    exposure, failing = security_exposure(HTTP_SERVICE)
    assert exposure <= MAX_HTTP_EXPOSURE, failing


def test_http_service_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    output = analyze_verify(HTTP_SERVICE, tmp_path, SERVICE, *SOCKETS.values())
    assert [line for line in output.splitlines() if "lucidd-http" in line] == []


def test_http_service_runs_the_gateway_as_the_daemons_user() -> None:
    service = parse_unit(HTTP_SERVICE)
    daemon = parse_unit(SERVICE)
    assert one(service, "Service", "User") == one(daemon, "Service", "User")
    assert one(service, "Service", "Type") == "notify"
    assert " http " in one(service, "Service", "ExecStart") + " "

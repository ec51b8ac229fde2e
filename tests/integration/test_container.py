"""lucidd's container image (issue 16): container/Containerfile, built by container/build.sh.

The image is built once per run (build.sh skips the build when an image of the same sources
exists) and run as one container for the module, its runtime and state folders bind-mounted
from a temporary folder and the keyring given as a podman secret. The tests talk to it from
the host with ``lucidctl --runtime-dir`` through the mounted sockets.

Skips, saying why, unless run as root with podman, buildah, debootstrap and runc installed
(Debian: ``apt-get install podman buildah debootstrap runc``; ``.ci/run`` installs them and
runs this module again), and where podman cannot run a container. Set
``LUCIDD_TEST_CONTAINER=0`` to skip it anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lucidd.crypto import Keyring
from lucidd.daemon.keyfile import CREDENTIAL_NAME, state_keyring_path, write_keyring
from lucidd.daemon.supervisor.sockets import CONTROL_SOCKET, DATA_SOCKET

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "container" / "build.sh"
NOBODY = 65534
#: build.sh's exit status when podman cannot run a container here.
BUILD_CANNOT_RUN = 3
TOOLS = ("podman", "buildah", "debootstrap", "runc")
# The build: debootstrap (once) and the image, about 1.5 min on 2 cores; generous for CI.
BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 60
# runc, not crun (crun refuses hybrid cgroups); rlimits below the host's, which a host without
# CAP_SYS_RESOURCE cannot raise to podman's defaults. Both as container/build.sh does.
RUN_FLAGS = (
    "--runtime",
    os.environ.get("RUNTIME", "runc"),
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
)
#: What the final stage must not hold: a shell, a package manager (dpkg, apt, pip).
FORBIDDEN = ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash", "usr/bin/dpkg", "usr/bin/apt")

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 300)


def skip_reason() -> str | None:
    if os.environ.get("LUCIDD_TEST_CONTAINER") == "0":
        return "LUCIDD_TEST_CONTAINER=0"
    if os.geteuid() != 0:
        return "the container tests run as root (rootful podman; the volumes are owned by 65534)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed "
            "(Debian: apt-get install podman buildah debootstrap runc)"
        )
    return None


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
    return proc


def lucidctl(runtime_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    return subprocess.run(
        [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(runtime_dir), *map(str, args)],
        capture_output=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def image() -> str:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # Can podman run a container here at all? Probed once, on the base build.sh makes first.
    proc = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    if proc.returncode == BUILD_CANNOT_RUN:
        pytest.skip(f"podman cannot run a container here: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.split()[-1]


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    runtime_dir: Path
    state_dir: Path

    def host_pids(self) -> list[int]:
        out = podman("top", self.name, "hpid").stdout.split()
        return [int(pid) for pid in out[1:]]


def wait_ready(container: str, runtime_dir: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        logs = podman("logs", container, check=False)
        if "event=ready" in logs.stdout + logs.stderr:
            return
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False)
        assert state.stdout.strip() in {"running", "created", "configured"}, logs.stderr
        time.sleep(0.2)
    raise AssertionError(f"not ready in {READY_TIMEOUT_S} s: {podman('logs', container).stderr}")


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    base = Path(tempfile.mkdtemp(prefix="ldc-", dir="/tmp"))
    name = f"lucidd-test-{os.getpid()}"
    secret = f"lucidd-keyring-{os.getpid()}"
    runtime_dir, state_dir = base / "run", base / "state"
    for folder, mode in ((runtime_dir, 0o750), (state_dir, 0o700)):
        folder.mkdir(mode)
        os.chown(folder, NOBODY, NOBODY)
    keyring_file = base / "keyring"
    write_keyring(Keyring.generate(), keyring_file)
    podman("secret", "create", secret, str(keyring_file))
    try:
        podman(
            "run", "--detach", "--name", name, *RUN_FLAGS, "--network", "none",
            "--env", "LUCIDD_WORKERS=2",
            "--volume", f"{runtime_dir}:/run/lucidd",
            "--volume", f"{state_dir}:/var/lib/lucidd",
            "--secret", f"{secret},target={CREDENTIAL_NAME},uid={NOBODY},gid={NOBODY},mode=0400",
            image,
        )  # fmt: skip
        wait_ready(name, runtime_dir)
        yield Container(name, image, runtime_dir, state_dir)
    finally:
        podman("rm", "--force", "--time", "10", name, check=False)
        podman("secret", "rm", secret, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_put_and_get_through_the_mounted_socket(container: Container, tmp_path: Path) -> None:
    for name in (DATA_SOCKET, CONTROL_SOCKET):
        assert (container.runtime_dir / name).is_socket(), name
    data = os.urandom(300_000)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    put = lucidctl(container.runtime_dir, "--json", "put", source, "--chunk-size", "64KiB")
    assert put.returncode == 0, put.stderr
    session = json.loads(put.stdout)["session"]
    copy = tmp_path / "copy.bin"
    got = lucidctl(container.runtime_dir, "get", session, "-o", copy)
    assert got.returncode == 0, got.stderr
    assert copy.read_bytes() == data
    # Stored in the state volume, as the daemon's user.
    assert any(p.stat().st_uid == NOBODY for p in container.state_dir.rglob("*") if p.is_file())


def test_every_process_runs_as_nobody(container: Container) -> None:
    pids = container.host_pids()
    assert len(pids) >= 3, pids  # the supervisor, the aggregator, the workers
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        ids = {line.split(":")[0]: line.split()[1:] for line in status if ":" in line}
        assert ids["Uid"] == [str(NOBODY)] * 4, (pid, ids["Uid"])
        assert ids["Gid"] == [str(NOBODY)] * 4, (pid, ids["Gid"])


def test_the_image_has_no_shell_and_no_package_manager(
    container: Container, tmp_path: Path
) -> None:
    shell = podman(
        "run", "--rm", *RUN_FLAGS, "--network", "none", "--entrypoint", "/bin/sh",
        container.image, "-c", "true", check=False,
    )  # fmt: skip
    assert shell.returncode != 0
    assert "no such file" in shell.stderr.lower(), shell.stderr
    archive = tmp_path / "rootfs.tar"
    podman("export", "--output", str(archive), container.name)
    with tarfile.open(archive) as tar:
        names = {member.name.removeprefix("./") for member in tar}
    assert "usr/bin/python3.11" in names and "opt/lucidd/bin/lucidd" in names
    assert not [path for path in FORBIDDEN if path in names]
    assert not [n for n in names if "/site-packages/pip/" in n or n.startswith("var/lib/dpkg")]


def test_health_check_passes(container: Container) -> None:
    config = json.loads(podman("image", "inspect", container.image).stdout)[0]
    health = config["Healthcheck"]["Test"]
    assert health[-2:] == ["/run/lucidd", "health"], health
    assert podman("healthcheck", "run", container.name).returncode == 0


def test_keyring_comes_from_the_mounted_secret(container: Container) -> None:
    """The daemon found /run/secrets/lucidd.keyring ($CREDENTIALS_DIRECTORY): it made none."""
    env = podman("inspect", "--format", "{{json .Config.Env}}", container.name).stdout
    assert "CREDENTIALS_DIRECTORY=/run/secrets" in json.loads(env)
    assert not state_keyring_path(container.state_dir).exists()

"""The shared-memory transport (issue 17): a real daemon, real memfds, real workers.

Clients get a sealed region at connect and send only headers; the tests check that the path is
taken (``chunks_shared_total``), that what is acked reads back byte-identical through kill -9 of
a worker, that a hostile client (out-of-region chunk, oversized or late ``ShareMemory``, a
buffer scribbled on while in flight, a shrink of the memfd) gets typed errors and can only
affect its own chunk, and that the daemon lets go of every region when its client is gone.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lucidd import protocol as p
from lucidd.client import AsyncDataClient, ControlClient, DataClient
from lucidd.client.shared_memory import fds_of
from lucidd.errors import DuplicateIndexError
from lucidd.testing import Daemon
from tests.faults.test_worker_timeout import worker_pids
from tests.users import HostUsers, requires_users

MiB = 1024 * 1024
TIMEOUT_S = 30.0


def wait_until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def shared_chunks(daemon: Daemon, acked: int) -> float:
    """``chunks_shared_total`` once the figures that reached the aggregator count ``acked``
    acks (the supervisor relays its counters as one snapshot, a moment after they change)."""
    metrics: dict[str, float] = {}

    def settled() -> bool:
        nonlocal metrics
        with ControlClient(daemon.runtime_dir) as control:
            metrics = control.metrics()
        return metrics.get("chunks_acked_total", 0.0) >= acked

    wait_until(settled, f"{acked} acks in the metrics")
    return metrics.get("chunks_shared_total", 0.0)


def read_back(daemon: Daemon, session: bytes, expected: dict[int, bytes]) -> None:
    with ControlClient(daemon.runtime_dir) as control:
        for index, data in expected.items():
            assert control.read_chunk(session, index).data == data, index


class RawConnection:
    """A data connection spoken by hand: frames out, replies (and descriptors) in."""

    def __init__(self, daemon: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(str(daemon.runtime_dir / "data.sock"))
        self._decoder = p.data_reply_decoder()
        self.fds: list[int] = []

    def send(self, *messages: p.Message, payload: bytes = b"") -> None:
        self.sock.sendall(b"".join(p.encode_frame(m) for m in messages) + payload)

    def reply(self) -> p.Message:
        while True:
            event = self._decoder.next_event()
            if event is not None:
                assert isinstance(event, p.FrameMessage), event
                return event.message
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            assert data, "the daemon closed the connection"
            self.fds += fds_of(ancillary)
            self._decoder.receive_data(data)

    def share(self, size: int) -> tuple[int, mmap.mmap]:
        self.send(p.ShareMemory(req=1, size=size))
        answer = self.reply()
        assert isinstance(answer, p.MemoryShared), answer
        assert len(self.fds) == 1
        fd = self.fds.pop()
        return fd, mmap.mmap(fd, answer.size)

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[Callable[[], RawConnection]]:
    made: list[RawConnection] = []

    def connect() -> RawConnection:
        made.append(RawConnection(daemon))
        return made[-1]

    yield connect
    for conn in made:
        conn.close()


def test_clients_take_shared_memory_and_every_chunk_reads_back(daemon: Daemon) -> None:
    session = os.urandom(16)
    sizes = [0, 1, 1000, 16 * 1024, 16 * 1024 + 1, 64 * 1024, MiB, 3 * MiB]
    chunks = {i: os.urandom(n) for i, n in enumerate(sizes)}
    with DataClient(daemon.runtime_dir) as client:
        assert client.transport == "memfd"
        acks = client.put_many(session, chunks.items())
        # A resend of stored chunks is compared (copied into the ring) and acked again.
        again = client.put_many(session, chunks.items())
        assert [a.leaf_hash for a in again] == [a.leaf_hash for a in acks]
        with pytest.raises(DuplicateIndexError):
            client.put(session, 3, os.urandom(1000))
    # Every non-empty chunk of the first put went through the region (the empty one and the
    # resends did not need it).
    assert shared_chunks(daemon, 2 * len(sizes)) == len([n for n in sizes if n])
    read_back(daemon, session, chunks)


def test_a_chunk_larger_than_the_region_takes_the_socket(daemon: Daemon) -> None:
    session = os.urandom(16)
    chunks = {0: os.urandom(100_000), 1: os.urandom(300_000), 2: os.urandom(10)}
    with DataClient(daemon.runtime_dir, shared_memory=128 * 1024) as client:
        assert client.transport == "memfd"
        client.put_many(session, chunks.items(), window=2)
    assert shared_chunks(daemon, 3) == 2  # chunk 1 did not fit
    read_back(daemon, session, chunks)


def test_the_async_client_shares_memory_with_concurrent_puts(daemon: Daemon) -> None:
    session = os.urandom(16)
    chunks = {i: os.urandom(200_000 + i) for i in range(40)}

    async def put_all() -> str:
        client = await AsyncDataClient.connect(daemon.runtime_dir, shared_memory=2 * MiB)
        try:
            # 40 x 200 KB in flight at once do not fit in 2 MiB: the rest take the socket.
            await asyncio.gather(*(client.put(session, i, d) for i, d in chunks.items()))
            more = {i + 40: d for i, d in chunks.items()}
            await client.put_many(session, more.items(), window=4)
            return client.transport
        finally:
            await client.close()

    assert asyncio.run(put_all()) == "memfd"
    assert shared_chunks(daemon, 80) >= 40
    read_back(daemon, session, chunks | {i + 40: d for i, d in chunks.items()})


def test_with_shared_memory_off_clients_fall_back_to_the_socket(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(shared_memory_max=0)
    session = os.urandom(16)
    with DataClient(daemon.runtime_dir) as client:
        assert client.transport == "socket"
        client.put_many(session, [(0, b"a" * 70_000), (1, b"b")])
    assert shared_chunks(daemon, 2) == 0
    read_back(daemon, session, {0: b"a" * 70_000, 1: b"b"})


def test_the_region_is_sealed_so_a_client_cannot_make_a_worker_fault(
    raw: Callable[[], RawConnection],
) -> None:
    conn = raw()
    fd, region = conn.share(100_000)
    size = len(region)
    assert size >= 100_000 and size % mmap.PAGESIZE == 0
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    with pytest.raises(PermissionError):
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    region.close()
    os.close(fd)


def test_hostile_shared_chunks_get_typed_errors_and_the_connection_lives(
    daemon: Daemon, raw: Callable[[], RawConnection]
) -> None:
    session = os.urandom(16)
    conn = raw()
    fd, region = conn.share(64 * 1024)
    region[:5] = b"hello"
    outside = p.SharedChunk(req=2, session=session, index=0, offset=len(region) - 4, length=5)
    conn.send(outside)
    refused = conn.reply()
    assert isinstance(refused, p.Error) and refused.code == "bad_request", refused
    assert "outside" in refused.message
    # A second ShareMemory, and one after a chunk, are refused; the connection goes on.
    conn.send(p.ShareMemory(req=3, size=4096))
    late = conn.reply()
    assert isinstance(late, p.Error) and late.code == "bad_request", late
    conn.send(p.SharedChunk(req=4, session=session, index=0, offset=0, length=5))
    ack = conn.reply()
    assert isinstance(ack, p.Ack) and ack.index == 0, ack
    conn.send(p.Chunk(req=5, session=session, index=1, length=3), payload=b"abc")
    ack = conn.reply()
    assert isinstance(ack, p.Ack) and ack.index == 1, ack
    read_back(daemon, session, {0: b"hello", 1: b"abc"})
    # A shared chunk on a connection without a region; a region over the daemon's maximum.
    other = raw()
    other.send(p.SharedChunk(req=1, session=os.urandom(16), index=0, offset=0, length=1))
    no_region = other.reply()
    assert isinstance(no_region, p.Error) and no_region.code == "bad_request", no_region
    third = raw()
    third.send(p.ShareMemory(req=1, size=2**40))
    too_big = third.reply()
    assert isinstance(too_big, p.Error) and too_big.code == "too_large", too_big
    assert not third.fds
    third.send(p.Chunk(req=2, session=os.urandom(16), index=0, length=1), payload=b"x")
    assert isinstance(third.reply(), p.Ack)
    region.close()
    os.close(fd)
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize("compression", ["off", "zstd", "auto"])
def test_a_buffer_scribbled_on_in_flight_changes_only_its_own_chunk(
    make_daemon: Callable[..., Daemon], compression: str
) -> None:
    daemon = make_daemon(compression=compression)
    victim, bystander = os.urandom(16), os.urandom(16)
    conn = RawConnection(daemon)
    fd, region = conn.share(4 * MiB)
    length = 2 * MiB
    region[:length] = bytes(length)  # compressible: the compressor has work to do
    stop = threading.Event()

    def scribble() -> None:
        pattern = 0
        while not stop.is_set():
            pattern = (pattern + 1) % 251
            region[pattern * 4096 : pattern * 4096 + 4096] = bytes([pattern]) * 4096

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        bystander_data = os.urandom(MiB)
        with DataClient(daemon.runtime_dir) as other:
            for index in range(8):
                conn.send(
                    p.SharedChunk(
                        req=index + 1, session=victim, index=index, offset=0, length=length
                    )
                )
                other.put(bystander, index, bystander_data)
            acks = [conn.reply() for _ in range(8)]
    finally:
        stop.set()
        writer.join()
    assert all(isinstance(a, p.Ack) for a in acks), acks
    with ControlClient(daemon.runtime_dir) as control:
        for index in range(8):
            # The record opens (authenticated, decompressed to its length), whatever it read.
            assert len(control.read_chunk(victim, index).data) == length
            assert control.read_chunk(bystander, index).data == bystander_data
        assert control.check(victim).bad == []
    region.close()
    os.close(fd)
    conn.close()


def memfd_fds(pid: int) -> int:
    count = 0
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(entry).startswith("/memfd:lucidd-client"):
                count += 1
        except FileNotFoundError:
            continue
    return count


def memfd_mappings(pid: int) -> int:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sum(1 for line in maps.splitlines() if "memfd:lucidd-client" in line)


def unmapped(pid: int) -> bool:
    return memfd_mappings(pid) == 0


def test_the_daemon_lets_go_of_a_region_once_its_client_is_gone(daemon: Daemon) -> None:
    session = os.urandom(16)
    workers = list(worker_pids(daemon).values())
    with DataClient(daemon.runtime_dir) as client:
        client.put_many(session, [(i, os.urandom(300_000)) for i in range(20)])
        # The supervisor holds one descriptor and never maps it; the workers map it.
        assert memfd_fds(daemon.pid) == 1
        assert memfd_mappings(daemon.pid) == 0
        assert sum(memfd_mappings(pid) for pid in workers) >= 1
    wait_until(lambda: memfd_fds(daemon.pid) == 0, "the supervisor to close the region")
    for pid in workers:  # every worker was told to unmap it (ForgetRegion)
        wait_until(functools.partial(unmapped, pid), f"worker {pid} to unmap it")
        assert memfd_fds(pid) == 0


def test_acked_shared_chunks_survive_kill_9_of_a_worker_mid_stream(daemon: Daemon) -> None:
    session = os.urandom(16)
    chunks = {i: os.urandom(256 * 1024) for i in range(200)}
    acked: dict[int, bytes] = {}
    killed = threading.Event()

    def on_ack(ack: p.Ack) -> None:
        acked[ack.index] = chunks[ack.index]
        if len(acked) == 40 and not killed.is_set():
            killed.set()
            os.kill(worker_pids(daemon)["worker0"], signal.SIGKILL)

    with DataClient(daemon.runtime_dir) as client:
        client.put_many(session, chunks.items(), on_ack=on_ack)
    assert killed.is_set() and len(acked) == len(chunks)
    read_back(daemon, session, acked)
    # And through kill -9 of the whole daemon.
    daemon.kill_all()
    daemon.start()
    read_back(daemon, session, acked)


@requires_users
def test_no_other_user_can_reach_a_clients_region(
    user_daemon: Callable[..., Daemon], host_users: HostUsers
) -> None:
    daemon = user_daemon()
    alice, bob = host_users.alice, host_users.bob
    holder = (
        "import os, sys\n"
        "from lucidd.client import DataClient\n"
        "client = DataClient(sys.argv[1])\n"
        "client.put(os.urandom(16), 0, b'secret' * 20000)\n"
        "print(client.transport, flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = [f"{k}={v}" for k, v in alice.env().items()]
    argv = alice.command(["env", "-i", *env, sys.executable, "-c", holder, daemon.runtime_dir])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"memfd"
        assert memfd_fds(daemon.pid) == 1  # alice's region, held by the supervisor
        workers = list(worker_pids(daemon).values())
        # Listing a folder of /proc may be allowed (the harness may give bob
        # CAP_DAC_READ_SEARCH, tests/users.py); opening what it names is what counts.
        probe = (
            "import os, sys\n"
            "for pid in sys.argv[1:]:\n"
            "    for where in ('fd', 'map_files'):\n"
            "        try:\n"
            "            names = os.listdir(f'/proc/{pid}/{where}')\n"
            "        except PermissionError:\n"
            "            continue\n"
            "        for name in names:\n"
            "            try:\n"
            "                os.close(os.open(f'/proc/{pid}/{where}/{name}', os.O_RDONLY))\n"
            "            except OSError:\n"
            "                continue\n"
            "            print('opened', pid, where, name)\n"
        )
        pids = [str(pid) for pid in (daemon.pid, proc.pid, *workers)]
        seen = bob.run([sys.executable, "-c", probe, *pids])
        assert seen.returncode == 0, seen.stderr
        assert b"opened" not in seen.stdout, seen.stdout
        # The probe does reach what is one's own: alice opens her own descriptors.
        own = alice.run([sys.executable, "-c", probe, str(proc.pid)])
        assert f"opened {proc.pid} fd".encode() in own.stdout, own
    finally:
        proc.communicate(b"", timeout=TIMEOUT_S)

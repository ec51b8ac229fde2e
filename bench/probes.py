"""Machine probes behind the figures in docs/bench.md ("What bounds the goals").

Three small measurements that explain where a chunk's CPU goes, independent of lucidd:

- ``crypto``: SHA-256 (the RFC 9162 leaf hash of every record) and AES-256-GCM throughput of
  1 MiB buffers in this process;
- ``socket``: CPU per MiB in the sender and in the receiver of a Unix stream socket pair (the
  cost of moving a payload from a client into the supervisor);
- ``pagecache``: appending 1 MiB records with an fdatasync every 8, with and without dropping
  the synced pages from the page cache (``POSIX_FADV_DONTNEED``, what workers do);
- ``readback``: CPU per MiB of reading dropped records back from disk, as the replicator
  does: 1 MiB ``pread`` into new buffers, 8 MiB ``preadv`` into one, and ``O_DIRECT``.

    python bench/probes.py [crypto|socket|pagecache|readback ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import mmap
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MiB: Final = 1024 * 1024


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def crypto(rounds: int = 300) -> list[tuple[str, str]]:
    data = os.urandom(MiB)
    start = time.perf_counter()
    for _ in range(rounds):
        hashlib.sha256(data).digest()
    sha = rounds / (time.perf_counter() - start)
    aead = AESGCM(os.urandom(32))
    nonce, out = os.urandom(12), bytearray(MiB + 16)
    start = time.perf_counter()
    for _ in range(rounds):
        aead.encrypt_into(nonce, data, b"", out)
    gcm = rounds / (time.perf_counter() - start)
    return [("SHA-256, 1 MiB", f"{sha:,.0f} MiB/s"), ("AES-256-GCM, 1 MiB", f"{gcm:,.0f} MiB/s")]


def unix_socket(rounds: int = 400) -> list[tuple[str, str]]:
    """1 MiB per round, sender → receiver, one byte back; CPU of each side per MiB."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the receiver, like the supervisor: recv_into a preallocated buffer
        sender.close()
        view = memoryview(bytearray(MiB))
        got = 0
        while count := receiver.recv_into(view[got:]):
            got += count
            if got == MiB:
                got = 0
                receiver.send(b"k")
        os._exit(0)
    receiver.close()
    data = memoryview(os.urandom(MiB))
    own = _cpu_s(resource.RUSAGE_SELF)
    for _ in range(rounds):
        sender.sendall(data)
        sender.recv(1)
    own = _cpu_s(resource.RUSAGE_SELF) - own
    children = _cpu_s(resource.RUSAGE_CHILDREN)
    sender.close()
    os.waitpid(pid, 0)
    children = _cpu_s(resource.RUSAGE_CHILDREN) - children
    return [
        ("Unix socket, sender CPU per MiB", f"{own / rounds * 1e6:.0f} µs"),
        ("Unix socket, receiver CPU per MiB", f"{children / rounds * 1e6:.0f} µs"),
    ]


def pagecache(records: int = 1024, batch: int = 8) -> list[tuple[str, str]]:
    """Fresh files in the current folder's file system (as a state folder would be)."""
    data = os.urandom(MiB)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        for drop in (False, True, False, True):
            path = Path(folder) / f"seg-{drop}-{len(rows)}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            start = time.perf_counter()
            for i in range(records):
                os.write(fd, data)
                if (i + 1) % batch == 0:
                    os.fdatasync(fd)
                    if drop:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            rate = records / (time.perf_counter() - start)
            os.close(fd)
            name = "append + fdatasync/8, " + ("dropping synced pages" if drop else "cached")
            rows.append((name, f"{rate:,.0f} MiB/s"))
    return rows


def readback(size: int = 512 * MiB) -> list[tuple[str, str]]:
    """A fresh file in the current folder's file system, dropped from the page cache before
    each way of reading it back."""
    big = 8 * MiB
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        path = Path(folder) / "segment"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        for _ in range(size // big):
            os.write(fd, os.urandom(big))
        os.fdatasync(fd)
        os.close(fd)

        def one_mib_reads(fd: int) -> None:
            for offset in range(0, size, MiB):
                os.pread(fd, MiB, offset)

        def into_one_buffer(fd: int, buffer: memoryview | mmap.mmap) -> None:
            for offset in range(0, size, big):
                os.preadv(fd, [buffer], offset)

        ways: list[tuple[str, int, Callable[[int], None]]] = [
            ("1 MiB pread, new buffers", 0, one_mib_reads),
            (
                "8 MiB preadv, one buffer",
                0,
                lambda fd: into_one_buffer(fd, memoryview(bytearray(big))),
            ),
            (
                "8 MiB preadv, O_DIRECT",
                os.O_DIRECT,
                lambda fd: into_one_buffer(fd, mmap.mmap(-1, big)),
            ),
        ]
        for label, flags, read in ways:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            try:
                fd = os.open(path, os.O_RDONLY | flags)
            except OSError:  # O_DIRECT where the file system has none (tmpfs)
                rows.append((f"read back, {label}, CPU per MiB", "n/a"))
                continue
            with contextlib.closing(_Fd(fd)):
                cpu = _cpu_s(resource.RUSAGE_SELF)
                read(fd)
                cpu = _cpu_s(resource.RUSAGE_SELF) - cpu
            rows.append((f"read back, {label}, CPU per MiB", f"{cpu / (size / MiB) * 1e3:.2f} ms"))
    return rows


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


PROBES: Final[dict[str, Callable[[], list[tuple[str, str]]]]] = {
    "crypto": crypto,
    "socket": unix_socket,
    "pagecache": pagecache,
    "readback": readback,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("probes", nargs="*", help=f"some of {', '.join(PROBES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.probes) - set(PROBES)
    if unknown:
        parser.error(f"unknown probe(s): {', '.join(sorted(unknown))}")
    print("| probe | figure |\n|---|---:|")
    for name in args.probes or PROBES:
        for label, value in PROBES[name]():
            print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

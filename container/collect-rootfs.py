"""Gather the final image's root filesystem into one folder (run in the builder stage).

Copies the Python interpreter and its standard library, the virtual environment at
/opt/lucidd, every shared library those load (as ``ldd`` resolves them) and the dynamic
loader, then writes the user database (root, nobody/nogroup), the CA certificates and the
state and runtime folders owned by 65534. Nothing else: no shell, no coreutils, no apt or
dpkg, no pip. Usage: ``python3 collect-rootfs.py OUT``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

VENV = Path("/opt/lucidd")
NOBODY = 65534
#: Parts of the standard library lucidd never imports; ensurepip carries pip's wheel; Debian's
#: sitecustomize.py is a link into /etc/python3.11, which the image does not have.
STDLIB_DROP = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__"}
    | {"sitecustomize.py"}
)
PASSWD = (
    "root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def copy_path(src: Path, out: Path) -> None:
    """Copy ``src`` (file or symlink, as it is) to the same path under ``out``."""
    dst = out / src.relative_to("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        return
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        copy_path(src.parent / os.readlink(src), out)
    else:
        shutil.copy2(src, dst)


def copy_tree(src: Path, out: Path, drop: frozenset[str] = frozenset()) -> None:
    shutil.copytree(
        src,
        out / src.relative_to("/"),
        symlinks=True,
        ignore=lambda _dir, names: [n for n in names if n in drop],
        dirs_exist_ok=True,
    )


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def shared_libraries(elf: Path) -> set[Path]:
    """The libraries ``elf`` loads, as ldd resolves them (the loader included)."""
    result = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False)
    libs: set[Path] = set()
    for line in result.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                libs.add(Path(word))
    return libs


def main(out: Path) -> None:
    out.mkdir(parents=True)
    for name in ("lib", "lib64"):  # Debian's merged /usr; no /bin (no shell there)
        if Path("/usr", name).exists():
            (out / "usr" / name).mkdir(parents=True)
            os.symlink(f"usr/{name}", out / name)
    python = Path(sys.executable).resolve()
    copy_path(Path("/usr/bin/python3"), out)
    copy_path(python, out)
    copy_tree(Path(sysconfig.get_paths()["stdlib"]), out, STDLIB_DROP)
    for activate in VENV.glob("bin/[Aa]ctivate*"):
        activate.unlink()
    copy_tree(VENV, out)

    elves = [python] + [p for p in out.rglob("*.so*") if p.is_file() and is_elf(p)]
    libs: set[Path] = set()
    for elf in elves:
        libs |= shared_libraries(elf)
    for lib in sorted(libs):
        if not str(lib).startswith(str(out)):
            copy_path(lib, out)

    etc = out / "etc"
    (etc / "ssl" / "certs").mkdir(parents=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "nsswitch.conf").write_text(NSSWITCH)
    (etc / "ld.so.conf").write_text("/usr/lib/x86_64-linux-gnu\n/usr/local/lib\n")
    shutil.copy2(CA_BUNDLE, etc / "ssl" / "certs" / CA_BUNDLE.name)
    subprocess.run(["ldconfig", "-r", str(out)], check=True)

    for folder, mode in (("var/lib/lucidd", 0o700), ("run/lucidd", 0o750), ("run/secrets", 0o755)):
        path = out / folder
        path.mkdir(parents=True)
        os.chmod(path, mode)
        if folder != "run/secrets":
            os.chown(path, NOBODY, NOBODY)
    (out / "tmp").mkdir()
    os.chmod(out / "tmp", 0o1777)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

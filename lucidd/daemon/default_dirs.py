"""Where the daemon's folders are by default (layer 1, DESIGN §7): state and runtime.

Pure, as daemon.config is: the caller passes the environment, the home folder and the uid in.
systemd's ``StateDirectory=``/``RuntimeDirectory=`` come first, then the XDG variables, then a
fallback; :func:`resolve_dirs` fills a :class:`~lucidd.daemon.config.Config`'s empty folders
with them. Making the folders, with their modes, is daemon.folders' job.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

import msgspec

from lucidd.daemon.config import Config


def _env_dir(env: Mapping[str, str], var: str) -> str | None:
    """The first absolute path in ``env[var]`` (systemd may list several, colon-separated)."""
    first = env.get(var, "").split(":")[0]
    return first if first.startswith("/") else None


def default_state_dir(env: Mapping[str, str], home: str) -> str:
    """``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else ``$XDG_STATE_HOME/lucidd``,
    else ``<home>/.local/state/lucidd``. Relative XDG values are ignored, as the spec says."""
    systemd = _env_dir(env, "STATE_DIRECTORY")
    if systemd is not None:
        return systemd
    xdg = _env_dir(env, "XDG_STATE_HOME")
    if xdg is not None:
        return posixpath.join(xdg, "lucidd")
    return posixpath.join(home, ".local", "state", "lucidd")


def default_runtime_dir(env: Mapping[str, str], uid: int) -> str:
    """``$RUNTIME_DIRECTORY`` (systemd ``RuntimeDirectory=``), else ``$XDG_RUNTIME_DIR/lucidd``,
    else ``/tmp/lucidd-<uid>``."""
    systemd = _env_dir(env, "RUNTIME_DIRECTORY")
    if systemd is not None:
        return systemd
    xdg = _env_dir(env, "XDG_RUNTIME_DIR")
    if xdg is not None:
        return posixpath.join(xdg, "lucidd")
    return fallback_runtime_dir(uid)


def fallback_runtime_dir(uid: int) -> str:
    """The runtime folder of last resort, ``/tmp/lucidd-<uid>``: in a folder everyone can
    write, so the daemon makes it 0700 and never trusts one it finds (lucidd.daemon.folders)."""
    return f"/tmp/lucidd-{uid}"


def resolve_dirs(config: Config, env: Mapping[str, str], home: str, uid: int) -> Config:
    """A validated copy of ``config`` with empty ``state_dir``/``runtime_dir`` filled in.

    ``keyring`` stays as configured: an empty one is resolved by the keyring loader, which must
    prefer ``$CREDENTIALS_DIRECTORY`` over ``<state>/keys/keyring``.
    """
    resolved = msgspec.structs.replace(
        config,
        state_dir=config.state_dir or default_state_dir(env, home),
        runtime_dir=config.runtime_dir or default_runtime_dir(env, uid),
    )
    resolved.validate()
    return resolved

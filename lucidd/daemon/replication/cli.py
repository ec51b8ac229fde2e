"""``lucidd restore`` (and ``--list``): the command's side, over :mod:`.restore` (layer 3)."""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

from lucidd.daemon.config import Config
from lucidd.daemon.folders import STATE_DIR_MODE, ensure_own_folder, lock_state_folder
from lucidd.daemon.replication.objects import (
    ObjectStore,
    ReplicationTarget,
    resolve_s3_credentials,
)
from lucidd.daemon.replication.replicator import HOST_ID_FILE
from lucidd.daemon.replication.restore import (
    adopt_host_id,
    list_hosts,
    list_sessions,
    restore,
)
from lucidd.errors import ConfigError


async def run_restore(
    config: Config, credentials_dir: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    if not config.replication_url:
        raise ConfigError("restore needs replication_url (s3://BUCKET/PREFIX) and its settings")
    state_dir = Path(config.state_dir)
    ensure_own_folder(state_dir, STATE_DIR_MODE, "state folder")
    lock = lock_state_folder(state_dir)  # the daemon must be stopped
    try:
        target = ReplicationTarget.parse(
            config.replication_url, config.replication_endpoint, config.replication_region
        )
        creds_dir = Path(credentials_dir) if credentials_dir else None
        store = ObjectStore(
            target, resolve_s3_credentials(config.replication_credentials, creds_dir, state_dir)
        )
        if args.list:
            hosts = await list_hosts(store, target.prefix)
            return {
                "hosts": [
                    {
                        "host_id": host_id,
                        "origin": record.origin,
                        "vkey": record.vkey,
                        "sessions": [
                            str(uuid.UUID(bytes=s))
                            for s in await list_sessions(store, target.prefix, host_id)
                        ],
                    }
                    for host_id, record in sorted(hosts.items())
                ]
            }
        host_id = args.host or _local_host_id(state_dir)
        if host_id is None:
            raise ConfigError(
                f"{state_dir} has no host id (a new disk?): give --host HOST_ID "
                "(lucidd restore --list shows the hosts)"
            )
        if args.host:
            adopt_host_id(state_dir, args.host)
        sessions = [uuid.UUID(s).bytes for s in args.session] if args.session else None
        done = await restore(
            store, target.prefix, state_dir, host_id, sessions=sessions, extra_vkeys=args.vkey
        )
        return {
            "host_id": host_id,
            "restored": [
                {
                    "session": str(uuid.UUID(bytes=r.session)),
                    "chunks": r.chunks,
                    "checkpoint_size": r.size,
                    "root": r.root.hex(),
                }
                for r in done
            ],
        }
    finally:
        os.close(lock)


def _local_host_id(state_dir: Path) -> str | None:
    try:
        return (state_dir / HOST_ID_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None

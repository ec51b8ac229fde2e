"""The control requests on master keys (layer 3): list, rotate, rewrap, retire, load.

Only for root, the daemon's own uid and the admin group (``AccessPolicy.sees_everything``):
the peers that may already read and shred every session. Rotating touches every session's
metadata and retiring a key could, were the checks wrong, make sessions unreadable, so nobody
who may not touch every session may start either. A connection that acts as another user
(``ActAs``) has that user's rights, not its sender's. Nothing here sends key material: only
key ids and counts. The work is :class:`~lucidd.daemon.aggregator.key_rotation.KeyRotation`'s.
"""

from __future__ import annotations

from lucidd import protocol as p
from lucidd.daemon.access import ROOT_UID, Peer
from lucidd.daemon.aggregator.services import ControlServices, Handler
from lucidd.errors import ForbiddenError


def _admin_only(s: ControlServices, peer: Peer, what: str) -> None:
    if not s.policy.sees_everything(peer):
        raise ForbiddenError(
            f"{what} is for root, lucidd's own user (uid {s.policy.daemon_uid}) and the admin group"
        )


async def _list(s: ControlServices, r: p.ListKeys, peer: Peer) -> p.Message:
    _admin_only(s, peer, "listing master keys")
    return s.keys.describe(r.req)


async def _rotate(s: ControlServices, r: p.RotateKeys, peer: Peer) -> p.Message:
    _admin_only(s, peer, "rotating master keys")
    return await s.keys.rotate(r.req, force_new=r.new)


async def _rewrap(s: ControlServices, r: p.RewrapKeys, peer: Peer) -> p.Message:
    _admin_only(s, peer, "re-wrapping session secrets")
    return await s.keys.rewrap(r.req)


async def _load(s: ControlServices, r: p.LoadKeyring, peer: Peer) -> p.Message:
    # Stricter than the others: this one brings keys in. A key an admin chose could become
    # the current key, under which every new session's secret would be wrapped.
    if peer.uid not in (ROOT_UID, s.policy.daemon_uid):
        raise ForbiddenError(
            f"loading a keyring is for root and lucidd's own user (uid {s.policy.daemon_uid})"
        )
    return await s.keys.load(r.req, r.keyring)


async def _retire(s: ControlServices, r: p.RetireKey, peer: Peer) -> p.Message:
    _admin_only(s, peer, "retiring a master key")
    return await s.keys.retire(r.req, r.key_id)


KEY_HANDLERS: dict[type, Handler] = {
    p.ListKeys: _list,
    p.RotateKeys: _rotate,
    p.RewrapKeys: _rewrap,
    p.RetireKey: _retire,
    p.LoadKeyring: _load,
}

"""Hold DESIGN §8's layering: each lucidd module imports only from layers below its own.

The layer of every module is written down here. A module missing from :data:`LAYERS` fails
the suite until someone classifies it, so the table stays the map of the package. Only modules
that exist are checked; imports anywhere in a module count (inside functions and
``TYPE_CHECKING`` blocks too: a type-only import of a higher layer is still an upward edge).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = "lucidd"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE
TABLE_HINT = "add it to LAYERS in tests/unit/test_layers.py (see DESIGN §8)"

LAYERS: Mapping[str, int] = {
    "__init__": 0,
    "errors": 0,
    "vocabulary": 0,  # the enums every part shares (compression, session state)
    # Package folders: docstrings only.
    "daemon.__init__": 0,
    "daemon.supervisor.__init__": 0,
    "daemon.aggregator.__init__": 0,
    "daemon.replication.__init__": 0,
    "anchoring.__init__": 0,
    # 1: pure — no I/O, no asyncio, no logging; return or raise. Shared by daemon and clients:
    "crypto.__init__": 1,  # re-exports the three below
    "crypto.record": 1,  # the record format: named sizes, header parse/build, codecs
    "crypto.seal": 1,  # chunk keys, seal/open, ChunkSealer, the FINAL record
    "crypto.keyring": 1,  # master keys, the Argon2id passphrase lock, secret wrapping
    "merkle": 1,
    "tlog_proof": 1,  # the C2SP tlog-proof text
    "receipt": 1,  # the receipt file and its offline verification
    "note": 1,  # C2SP signed notes (Ed25519), signed checkpoints
    "protocol.__init__": 1,  # the wire, re-exported as one module
    "protocol.messages": 1,  # the frames' base, the limits, the data socket's Structs
    "protocol.control_messages": 1,  # the control socket's requests, replies and checks
    "protocol.codec": 1,  # the frame encoder and the sans-IO decoder
    "units": 1,  # sizes and their spelling
    "listen": 1,  # where an HTTP endpoint listens: loopback TCP or unix:PATH
    # ... and the daemon's own:
    "daemon.config": 1,
    "daemon.config_load": 1,  # defaults < TOML < environment < flags, into one Config
    "daemon.default_dirs": 1,  # the default state and runtime folders (systemd, XDG, fallback)
    "daemon.ipc": 1,
    "daemon.access": 1,  # who may touch a session (the policy; credentials come from peers)
    "daemon.histograms": 1,  # fixed-bucket histograms of the daemon's figures, merged
    "daemon.supervisor.slots": 1,
    "daemon.supervisor.gates": 1,  # admission's records: a session's gate, a chunk in flight
    "daemon.aggregator.reorder": 1,
    "daemon.replication.layout": 1,  # object names and the pack format
    "daemon.supervisor.replication_link": 1,  # the replicator's feed, acks held for it
    # 2: I/O parts.
    "private_files": 2,  # a private file of secrets: read, check, bound
    "daemon.store": 2,
    "daemon.segments": 2,  # segment files: append, scan, quarantine
    "daemon.keyfile": 2,
    "daemon.passphrase": 2,  # where a locked keyring's passphrase comes from (credential, tty)
    "daemon.signing_key": 2,  # the host's Ed25519 checkpoint key (the keyring's file checks)
    "daemon.ring": 2,
    "daemon.channels": 2,
    "daemon.logs": 2,  # logging set-up shared by every process
    "daemon.peers": 2,  # SO_PEERCRED / SO_PEERGROUPS of a connection, the admin group
    "daemon.procutil": 2,  # process-level helpers (parent-death signal, undumpable, ...)
    "daemon.folders": 2,  # the daemon's own folders: exact modes, refuse squatted ones
    "daemon.supervisor.fds": 2,  # descriptor limit, reserve and the connection budget
    "daemon.supervisor.systemd": 2,
    "daemon.supervisor.sockets": 2,  # the listening sockets: bind (stale file replaced) or take
    "daemon.supervisor.respawn": 2,  # respawn and spawn-retry delays, health reasons meanwhile
    "daemon.key_usage": 2,  # which key each session needs; what may replace or retire one
    "daemon.shared_regions": 2,  # the sealed memfd, its trip to a worker, its mapping
    "daemon.aggregator.ledger": 2,  # the book of sessions, and the cache of their open files
    "daemon.aggregator.session": 2,  # one live session: index, reorder window, Merkle log
    "daemon.aggregator.recovery": 2,  # a session rebuilt from its files and its records
    "daemon.aggregator.repair": 2,  # scrub, quarantine, choosing among authentic records
    "daemon.aggregator.merkle_log": 2,  # a session's MerkleLog: append, proofs, sync, recovery
    "daemon.aggregator.merkle_files": 2,  # the log's level files and its state record
    "daemon.aggregator.note_files": 2,  # create-only folders of signed checkpoints by size
    "daemon.aggregator.anchor_log": 2,  # the host's log of session checkpoints
    "daemon.aggregator.notary": 2,  # signs, stores and logs checkpoints; the host origin
    "daemon.replication.objects": 2,  # the S3 client: create-only puts, gets, lists
    # Shared by the daemon and the CLI, so never importing lucidd.daemon:
    "anchoring.ethereum": 2,  # deploy LucidAnchor, anchor a checkpoint, check an attestation
    "anchoring.ethereum_credentials": 2,  # the RPC URL and signing key, read from a 0600 file
    # 3: process parts.
    "daemon.supervisor.admission": 3,  # which chunk may enter, what its client is told
    "daemon.supervisor.dispatch": 3,  # the worker side: which worker, recovery, outcomes
    "daemon.supervisor.regions": 3,  # client shared-memory regions: create, hand out, free
    "daemon.supervisor.ingest": 3,
    "daemon.supervisor.children": 3,
    "daemon.supervisor.keyring_link": 3,  # the keyring for new children, distributed to workers
    "daemon.preload": 3,  # the forkserver's preload: imports the child mains
    "daemon.replication.progress": 2,  # what is uploaded, durably (resume)
    "daemon.replication.pack_reader": 2,  # a pack read from the local segments
    "daemon.replication.replicator": 2,  # packs, the scan, uploads
    "daemon.replication.restore": 3,  # lucidd restore: fetch, verify, write
    "daemon.replication.cli": 3,  # lucidd restore's command
    "daemon.keys_online": 3,  # lucidd keys through a running daemon's control socket
    "daemon.keys_cli": 3,  # lucidd keys: offline, or through a running daemon's control socket
    "daemon.replication.main": 3,  # the replicator process
    "daemon.aggregator.anchoring": 3,  # anchoring backends and their retry loop
    "daemon.aggregator.remote": 3,  # other hosts' sessions, and freed ones, from the store
    "daemon.aggregator.services": 3,  # ControlServices; session lookups with the access check
    "daemon.aggregator.handlers": 3,  # one typed reply per control request
    "daemon.aggregator.trust_handlers": 3,  # signing key, checkpoint, anchor, receipt, remote
    "daemon.aggregator.key_rotation": 3,  # online rotation, re-wrap, retire, SIGHUP reload
    "daemon.aggregator.key_handlers": 3,  # the control requests on master keys (admins only)
    "daemon.aggregator.retention": 3,  # local_retention: replicated sessions freed locally
    "daemon.aggregator.startup": 3,  # crash recovery of every session at start
    "daemon.aggregator.control": 3,
    # 3: process mains — composition and lifecycle only.
    "daemon.supervisor.main": 3,
    "daemon.worker": 3,
    "daemon.aggregator.main": 3,
    # 4: edges. The client package: ids and paths, the sans-IO cores, two front ends.
    "client.__init__": 4,
    "client.ids": 4,
    "client.core": 4,  # what the cores and the front ends share: Core, results, AckCollector
    "client.data_core": 4,  # the data socket's sans-IO core (DataCore)
    "client.control_core": 4,  # the control socket's sans-IO core: each request and its reply
    "client.shared_memory": 4,  # the client's end of a shared region: map, place, free
    "client.sender": 4,  # one blocking put_many/put_file: place, batch headers, free on answer
    "client.sync_link": 4,  # the blocking connection: trust checks, ActAs, sendmsg
    "client.async_link": 4,  # the asyncio connection: trust checks, ActAs, the reader task
    "client.blocking": 4,
    "client.aio": 4,
    # lucidctl, a package by job (lucidd/cli/):
    "cli.__init__": 4,  # main(): parse, run the handler, report a failure
    "cli.__main__": 4,  # python -m lucidd.cli
    "cli.parser": 4,  # argparse: subcommands, global options
    "cli.output": 4,  # JSON or human results, failures, progress bar, files
    "cli.formats": 4,  # the proof and checkpoint JSON (Structs) that verify reads back
    "cli.commands": 4,  # the daemon commands
    "cli.put": 4,  # put, resume, the interrupted-put report
    "cli.verify": 4,  # offline verification
    "cli.trust": 4,  # signing-key, checkpoint, anchor, receipt; receipt and consistency checks
    # The HTTP side, a client of the daemon's sockets like lucidctl (lucidd/http/):
    # The HTTP side (lucidd/http/): its serving parts are shared with the daemon's
    # metrics_listen (so they sit low and never import lucidd.daemon), the gateway is an edge.
    "http.__init__": 0,
    "http.metric_catalog": 2,  # each figure's Prometheus name, type, unit and help
    "http.exposition": 2,  # a metrics_reply in the text format or OpenMetrics
    "http.problems": 1,  # typed errors as RFC 9457 problems, each code's status
    "http.server": 2,  # uvicorn under a guarded protocol: request deadlines, header bound
    "http.asgi": 2,  # a request, bounded bodies, responses
    "http.metrics_endpoint": 2,  # GET /metrics as an ASGI app
    "http.auth": 4,  # who is calling: the Unix peer, or a bearer token's user
    "http.daemon_link": 4,  # per-user connections to the daemon, acting as the user
    "http.gateway": 4,  # the REST app
    "http.main": 4,  # lucidd http: bind, serve, stop
    "daemon.aggregator.metrics_http": 3,  # metrics_listen: the aggregator serves /metrics
    "__main__": 4,
    "bench": 4,
    "testing": 4,  # the test and bench harness: starts `lucidd serve` as a subprocess
}

MAINS = frozenset({"daemon.supervisor.main", "daemon.worker", "daemon.aggregator.main"})

#: The only imports allowed between modules of the same layer (importer -> imported).
SAME_LAYER_ALLOWED: Mapping[str, frozenset[str]] = {
    # The crypto package: record <- seal <- keyring, and the package re-exports all three.
    "crypto.__init__": frozenset({"crypto.record", "crypto.seal", "crypto.keyring"}),
    "crypto.seal": frozenset({"crypto.record"}),
    "crypto.keyring": frozenset({"crypto.record", "crypto.seal"}),
    "crypto.record": frozenset(),
    # A signed note's text is a checkpoint.
    "note": frozenset({"merkle"}),
    "tlog_proof": frozenset({"merkle"}),
    # A receipt chains a record (crypto) through tlog-proofs of signed notes.
    "receipt": frozenset({"crypto.__init__", "merkle", "note", "tlog_proof"}),
    "daemon.aggregator.note_files": frozenset({"daemon.store"}),
    # Replication: packs are records (crypto) with their leaves (merkle); the replicator
    # reads the store's files and keeps its progress; restore's command drives restore.
    "daemon.replication.layout": frozenset({"crypto.__init__", "merkle"}),
    "daemon.replication.progress": frozenset({"daemon.store"}),
    "daemon.replication.pack_reader": frozenset({"daemon.store"}),
    "daemon.replication.replicator": frozenset(
        {
            "daemon.replication.objects",
            "daemon.replication.pack_reader",
            "daemon.replication.progress",
            "daemon.store",
            "daemon.aggregator.anchor_log",  # the entries' size, to upload them whole
        }
    ),
    "daemon.replication.cli": frozenset({"daemon.replication.restore"}),
    "daemon.supervisor.replication_link": frozenset({"daemon.ipc"}),
    "daemon.aggregator.anchor_log": frozenset(
        {"daemon.aggregator.merkle_log", "daemon.aggregator.note_files", "daemon.store"}
    ),
    "daemon.aggregator.notary": frozenset(
        {
            "daemon.aggregator.anchor_log",
            "daemon.aggregator.note_files",
            "daemon.aggregator.session",
            "daemon.store",
        }
    ),
    "daemon.aggregator.ledger": frozenset(
        {
            "daemon.store",
            "daemon.segments",
            "daemon.aggregator.session",
            "daemon.aggregator.recovery",
            "daemon.aggregator.repair",
            "daemon.aggregator.merkle_log",
        }
    ),
    "daemon.aggregator.session": frozenset(
        {
            "daemon.store",
            "daemon.segments",
            "daemon.aggregator.repair",
            "daemon.aggregator.merkle_log",
        }
    ),
    "daemon.aggregator.recovery": frozenset(
        {
            "daemon.store",
            "daemon.segments",
            "daemon.aggregator.session",
            "daemon.aggregator.repair",
            "daemon.aggregator.merkle_log",
        }
    ),
    "daemon.aggregator.repair": frozenset({"daemon.store", "daemon.segments"}),
    "daemon.aggregator.merkle_log": frozenset({"daemon.aggregator.merkle_files"}),
    "daemon.aggregator.merkle_files": frozenset(),
    # The children's start-up specs carry the validated Config.
    # A child's spec may carry the unlocked Keyring (a locked keyring file, DESIGN §4).
    "daemon.ipc": frozenset({"daemon.config", "protocol.__init__", "crypto.__init__"}),
    # A histogram's snapshot is the wire's Histogram.
    "daemon.histograms": frozenset({"protocol.__init__"}),
    # Settings are sizes, spelled the one way (units).
    "daemon.config": frozenset({"units", "protocol.__init__", "listen"}),
    # Loading fills a Config from text, the environment and flags (sizes spelled as units).
    "daemon.config_load": frozenset({"daemon.config", "units"}),
    # The default folders fill in a Config's empty ones.
    "daemon.default_dirs": frozenset({"daemon.config"}),
    "protocol.__init__": frozenset(
        {"protocol.messages", "protocol.control_messages", "protocol.codec"}
    ),
    "protocol.control_messages": frozenset({"protocol.messages"}),
    "protocol.codec": frozenset({"protocol.messages", "protocol.control_messages"}),
    "daemon.store": frozenset(),
    "daemon.segments": frozenset({"daemon.store"}),
    "daemon.peers": frozenset(),
    # An ActAs names a uid within the wire's bound.
    "daemon.access": frozenset({"protocol.__init__"}),
    # The signing key file is guarded as the keyring file is.
    "daemon.signing_key": frozenset({"daemon.keyfile"}),
    # Which key each session needs is read from the sessions' metadata files.
    "daemon.key_usage": frozenset({"daemon.store"}),
    # The passphrase credential file is guarded as the keyring file is.
    "daemon.passphrase": frozenset({"daemon.keyfile"}),
    # Something must name the child processes' entry points to spawn them; only children may.
    "daemon.supervisor.children": frozenset({"daemon.supervisor.fds"}),
    # The forkserver's preload module exists to import the child mains.
    "daemon.preload": frozenset(
        {"daemon.worker", "daemon.aggregator.main", "daemon.supervisor.children"}
    ),
    "daemon.supervisor.main": frozenset(
        {
            "daemon.supervisor.admission",
            "daemon.supervisor.dispatch",
            "daemon.supervisor.ingest",
            "daemon.supervisor.children",
            "daemon.supervisor.keyring_link",
        }
    ),
    # The keyring for new children goes to the workers through their links' inboxes.
    "daemon.supervisor.keyring_link": frozenset({"daemon.supervisor.dispatch"}),
    "daemon.supervisor.ingest": frozenset({"daemon.supervisor.admission"}),
    # lucidd keys asks a running daemon through keys_online.
    "daemon.keys_cli": frozenset({"daemon.keys_online"}),
    # Admission hands every admitted chunk to its dispatcher (the worker side).
    "daemon.supervisor.admission": frozenset(
        {"daemon.supervisor.dispatch", "daemon.supervisor.regions"}
    ),
    # A chunk in a client's region is dispatched only to a worker that was handed the region.
    "daemon.supervisor.dispatch": frozenset({"daemon.supervisor.regions"}),
    # Admission's records are plain data over the wire's and the slots' types.
    "daemon.supervisor.gates": frozenset(
        {"protocol.__init__", "daemon.ipc", "daemon.access", "daemon.supervisor.slots"}
    ),
    "daemon.aggregator.main": frozenset(
        {
            "daemon.aggregator.control",
            "daemon.aggregator.anchoring",
            "daemon.aggregator.remote",
            "daemon.aggregator.retention",
            "daemon.aggregator.startup",
            "daemon.aggregator.metrics_http",
            "daemon.aggregator.key_rotation",
        }
    ),
    "daemon.aggregator.metrics_http": frozenset(),
    "daemon.aggregator.control": frozenset(
        {"daemon.aggregator.handlers", "daemon.aggregator.services"}
    ),
    # The handlers see the aggregator through services; the trust chain's are a table apart.
    "daemon.aggregator.handlers": frozenset(
        {
            "daemon.aggregator.services",
            "daemon.aggregator.trust_handlers",
            "daemon.aggregator.key_handlers",
        }
    ),
    "daemon.aggregator.trust_handlers": frozenset({"daemon.aggregator.services"}),
    "daemon.aggregator.key_handlers": frozenset({"daemon.aggregator.services"}),
    "daemon.aggregator.key_rotation": frozenset(),
    "daemon.aggregator.services": frozenset(
        {
            "daemon.aggregator.anchoring",
            "daemon.aggregator.remote",
            "daemon.aggregator.key_rotation",
        }
    ),
    "daemon.aggregator.retention": frozenset({"daemon.aggregator.remote"}),
    "daemon.aggregator.startup": frozenset(),
    # The ethereum backend signs with the credentials' key.
    "anchoring.ethereum": frozenset({"anchoring.ethereum_credentials"}),
    # Both backends' credentials files are read one way.
    "anchoring.ethereum_credentials": frozenset({"private_files"}),
    "daemon.replication.objects": frozenset({"private_files"}),
    # Reading another host's session is a restore into the state folder.
    "daemon.aggregator.remote": frozenset({"daemon.replication.restore"}),
    "daemon.worker": frozenset(),
    # The client's front ends drive its cores; the package re-exports all of it.
    "client.core": frozenset(),
    "client.data_core": frozenset({"client.ids", "client.core"}),
    "client.control_core": frozenset({"client.ids", "client.core"}),
    "client.shared_memory": frozenset(),
    "client.sync_link": frozenset({"client.ids", "client.core", "client.shared_memory"}),
    "client.async_link": frozenset({"client.ids", "client.core", "client.shared_memory"}),
    "client.blocking": frozenset(
        {
            "client.ids",
            "client.core",
            "client.data_core",
            "client.control_core",
            "client.sync_link",
            "client.shared_memory",
            "client.sender",
        }
    ),
    "client.sender": frozenset(
        {
            "client.core",
            "client.data_core",
            "client.ids",
            "client.shared_memory",
            "client.sync_link",
        }
    ),
    "client.aio": frozenset(
        {
            "client.ids",
            "client.core",
            "client.data_core",
            "client.control_core",
            "client.async_link",
            "client.shared_memory",
        }
    ),
    "client.__init__": frozenset(
        {
            "client.ids",
            "client.core",
            "client.data_core",
            "client.control_core",
            "client.sync_link",
            "client.async_link",
            "client.blocking",
            "client.aio",
        }
    ),
    # The cli modules stack: output and formats at the bottom, the commands over them, the
    # parser naming every handler, main over the parser.
    "cli.__init__": frozenset({"cli.output", "cli.parser"}),
    "cli.__main__": frozenset({"cli.__init__"}),
    "cli.parser": frozenset(
        {"client.__init__", "cli.output", "cli.commands", "cli.put", "cli.verify", "cli.trust"}
    ),
    "cli.output": frozenset(),
    "cli.formats": frozenset(),
    "cli.commands": frozenset({"client.__init__", "cli.output", "cli.formats"}),
    "cli.put": frozenset({"client.__init__", "cli.output", "cli.commands"}),
    "cli.verify": frozenset({"client.__init__", "cli.output", "cli.formats", "cli.trust"}),
    "cli.trust": frozenset({"client.__init__", "cli.output", "cli.formats", "cli.commands"}),
    "http.__init__": frozenset(),
    "http.metric_catalog": frozenset(),
    "http.exposition": frozenset({"http.metric_catalog"}),
    "http.problems": frozenset(),
    "http.asgi": frozenset({"http.server"}),
    "http.metrics_endpoint": frozenset({"http.asgi", "http.exposition"}),
    "http.auth": frozenset(),
    "http.daemon_link": frozenset({"client.__init__"}),
    "http.gateway": frozenset({"client.__init__", "cli.formats", "http.auth", "http.daemon_link"}),
    "http.main": frozenset({"http.gateway", "http.auth", "http.daemon_link"}),
    "__main__": frozenset({"cli.__init__", "client.__init__", "http.main"}),
    "bench": frozenset({"client.__init__"}),
    "testing": frozenset({"client.__init__"}),
}

#: Standard modules that do I/O, concurrency or logging: none of them in layer 1.
LAYER1_FORBIDDEN = frozenset(
    {
        "os",
        "socket",
        "asyncio",
        "logging",
        "subprocess",
        "multiprocessing",
        "threading",
        "selectors",
        "signal",
        "shutil",
        "tempfile",
        "mmap",
        "uvloop",
    }
)
#: Sealing (nonces, session secrets) and the keyring (keys, salts, nonces) need ``os.urandom``.
LAYER1_ALLOWED_EXCEPTIONS: Mapping[str, frozenset[str]] = {
    "crypto.seal": frozenset({"os"}),
    "crypto.keyring": frozenset({"os"}),
}

#: Besides its own modules, the client package may use only these (it ships on its own).
CLIENT_MAY_IMPORT = frozenset({"protocol.__init__", "errors", "vocabulary"})
CLIENT_MODULES = frozenset(name for name in LAYERS if name.split(".")[0] == "client")
#: What the command line may use besides the client: the shared pure modules, never the daemon.
CLI_MAY_IMPORT = frozenset(
    {
        "client.__init__",
        "protocol.__init__",
        "errors",
        "vocabulary",
        "units",
        "crypto.__init__",
        "crypto.record",
        "crypto.seal",
        "crypto.keyring",
        "merkle",
        "note",
        "tlog_proof",
        "receipt",
        "anchoring.__init__",
        "anchoring.ethereum",  # verify --rpc; web3 is imported only then
        "anchoring.ethereum_credentials",
        "private_files",
        "listen",
        "__init__",
    }
)


# --- the checker ------------------------------------------------------------------------


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """``lucidd/errors.py`` -> ``errors``; ``lucidd/daemon/ipc.py`` -> ``daemon.ipc``; a
    package's ``__init__.py`` keeps its name (``daemon.__init__``), the top one is ``__init__``."""
    return ".".join(path.relative_to(package_dir).with_suffix("").parts)


def existing_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def _walk_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def lucidd_imports(source: str, known: set[str]) -> set[str]:
    """The lucidd modules (dotted names as in :data:`LAYERS`) that ``source`` imports.

    ``known`` holds module names that exist or are classified: ``from lucidd.daemon import
    ipc`` names the module ``daemon.ipc``, ``from lucidd import crypto`` the package
    ``crypto.__init__``, ``from lucidd import __version__`` a name of the package
    (``__init__``). A path that names no known module counts as its first part.
    """
    found: set[str] = set()
    for node in _walk_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(_resolve(parts[1:], known))
            continue
        if node.level:
            # Relative to the package: "from . import x" or "from .x import y".
            base = [PACKAGE, *node.module.split(".")] if node.module else [PACKAGE]
        elif node.module is not None:
            base = node.module.split(".")
        else:  # pragma: no cover - "from import" is not valid syntax
            continue
        if base[0] != PACKAGE:
            continue
        for alias in node.names:
            candidate = ".".join([*base[1:], alias.name])
            if candidate in known:
                found.add(candidate)
            elif f"{candidate}.__init__" in known:  # "from lucidd import crypto": a package
                found.add(f"{candidate}.__init__")
            else:
                found.add(_resolve(base[1:], known))
    return found


def _resolve(parts: list[str], known: set[str]) -> str:
    """The longest known module that ``lucidd.<parts>`` names (``__init__`` for none)."""
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in known:
            return name
        if f"{name}.__init__" in known:
            return f"{name}.__init__"
    return parts[0] if parts else "__init__"


def top_level_imports(source: str) -> set[str]:
    """The top-level names of every absolute import (``os.path`` -> ``os``)."""
    names: set[str] = set()
    for node in _walk_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif node.level == 0 and node.module is not None:
            names.add(node.module.split(".")[0])
    return names


def layering_violations(importer: str, imported: set[str]) -> list[str]:
    """Why ``importer`` may not import each module of ``imported`` (empty if all is fine)."""
    problems: list[str] = []
    layer = LAYERS[importer]
    for target in sorted(imported - {importer}):
        if target not in LAYERS:
            problems.append(f"{importer} imports unclassified module {target}: {TABLE_HINT}")
        elif importer in MAINS and target in MAINS:
            problems.append(
                f"{importer} imports {target}: process mains never import each other "
                "(they share only ipc messages)"
            )
        elif LAYERS[target] > layer:
            problems.append(
                f"{importer} (layer {layer}) imports {target} (layer {LAYERS[target]}): "
                "a module imports only from lower layers"
            )
        elif LAYERS[target] == layer and target not in SAME_LAYER_ALLOWED.get(importer, ()):
            problems.append(
                f"{importer} imports {target}, both layer {layer}: same-layer imports must be "
                "listed in SAME_LAYER_ALLOWED"
            )
    return problems


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    known = set(modules) | set(LAYERS)
    return {name: lucidd_imports(path.read_text(), known) for name, path in modules.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target, [*path, target])
                if cycle is not None:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle is not None:
                return cycle
    return None


MODULES = existing_modules()
GRAPH = import_graph(MODULES)
CLASSIFIED = sorted(name for name in MODULES if name in LAYERS)
#: Every module of lucidctl's package (lucidd/cli/).
CLI_MODULES = sorted(name for name in MODULES if name.startswith("cli."))
#: Every module of the HTTP side (lucidd/http/): a client of the daemon, as lucidctl is.
HTTP_MODULES = sorted(name for name in MODULES if name.startswith("http."))


# --- the package ------------------------------------------------------------------------


def test_package_has_the_base_modules() -> None:
    # Guards against the checker silently finding nothing (a wrong PACKAGE_DIR).
    assert {"errors", "protocol.__init__", "daemon.config"} <= set(MODULES)


def test_every_module_is_classified() -> None:
    unknown = sorted(set(MODULES) - set(LAYERS))
    assert not unknown, f"unclassified modules {unknown}: {TABLE_HINT}"


@pytest.mark.parametrize("module", CLASSIFIED)
def test_module_imports_only_from_lower_layers(module: str) -> None:
    problems = layering_violations(module, GRAPH[module])
    assert not problems, "\n".join(problems)


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH) or [])}"


@pytest.mark.parametrize("module", sorted(m for m in CLASSIFIED if LAYERS[m] == 1))
def test_layer1_module_does_no_io_concurrency_or_logging(module: str) -> None:
    imported = top_level_imports(MODULES[module].read_text())
    allowed = LAYER1_ALLOWED_EXCEPTIONS.get(module, frozenset())
    forbidden = sorted((imported & LAYER1_FORBIDDEN) - allowed)
    assert not forbidden, f"layer-1 module {module} imports {forbidden} (DESIGN §8: no I/O)"


def test_the_client_package_has_the_modules_of_the_table() -> None:
    # Guards the test below against a renamed module that it would silently skip.
    assert {name for name in MODULES if name.split(".")[0] == "client"} == CLIENT_MODULES


@pytest.mark.parametrize("module", sorted(CLIENT_MODULES))
def test_client_imports_only_protocol_and_errors(module: str) -> None:
    extra = sorted(GRAPH[module] - CLIENT_MAY_IMPORT - CLIENT_MODULES)
    assert not extra, f"{module} imports {extra}; the client may use only protocol and errors"


def test_the_command_line_is_a_package_of_modules() -> None:
    # Guards the test below against checking nothing (the package moved or was renamed).
    assert {"cli.__init__", "cli.__main__", "cli.parser", "cli.verify"} <= set(CLI_MODULES)


@pytest.mark.parametrize("module", CLI_MODULES)
def test_the_command_line_imports_nothing_of_the_daemon(module: str) -> None:
    extra = sorted(GRAPH[module] - CLI_MAY_IMPORT - set(CLI_MODULES))
    assert not extra, f"{module} imports {extra}; the client side must ship without the daemon"


def test_the_http_side_is_a_package_of_modules() -> None:
    # Guards the test below against checking nothing (the package moved or was renamed).
    assert {"http.__init__", "http.exposition", "http.metric_catalog"} <= set(HTTP_MODULES)


@pytest.mark.parametrize("module", HTTP_MODULES)
def test_the_http_side_imports_nothing_of_the_daemon(module: str) -> None:
    # The gateway answers proofs and checkpoints in lucidctl's JSON files (cli.formats).
    extra = sorted(GRAPH[module] - CLI_MAY_IMPORT - set(HTTP_MODULES) - {"cli.formats"})
    assert not extra, f"{module} imports {extra}; the HTTP side is a client of the daemon"


def test_importing_the_exposition_loads_no_daemon_module() -> None:
    code = (
        "import sys, lucidd.http.exposition\n"
        "print(sorted(m for m in sys.modules if m.startswith('lucidd.daemon')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_importing_the_client_the_cli_and_the_harness_loads_no_daemon_module() -> None:
    code = (
        "import sys, lucidd.client, lucidd.cli, lucidd.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('lucidd.daemon')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


_LAYER_IN_DOCSTRING = re.compile(r"\(layer (\d)\b")


@pytest.mark.parametrize("module", CLASSIFIED)
def test_layer_named_in_the_docstring_matches_the_table(module: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[module].read_text())) or ""
    match = _LAYER_IN_DOCSTRING.search(docstring)
    if match is not None:
        assert int(match.group(1)) == LAYERS[module], (
            f"{module}'s docstring says layer {match.group(1)}, LAYERS says {LAYERS[module]}"
        )


# --- the checker itself (so that the tests above can fail) --------------------------------

KNOWN = set(LAYERS)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import lucidd.errors", {"errors"}),
        ("import lucidd.protocol as p", {"protocol.__init__"}),
        ("from lucidd import merkle, protocol as p", {"merkle", "protocol.__init__"}),
        ("from lucidd.protocol.codec import FrameDecoder", {"protocol.codec"}),
        ("from lucidd.daemon import ipc", {"daemon.ipc"}),
        ("from lucidd.daemon.store import SessionPaths", {"daemon.store"}),
        ("import lucidd.daemon.worker", {"daemon.worker"}),
        ("from lucidd.daemon import something_else", {"daemon.__init__"}),
        ("from lucidd.sub.mod import x", {"sub"}),
        ("from . import errors", {"errors"}),
        ("from .crypto import seal", {"crypto.seal"}),
        ("from lucidd import crypto", {"crypto.__init__"}),
        ("import lucidd.crypto", {"crypto.__init__"}),
        ("from lucidd.crypto import Keyring, seal_chunk", {"crypto.__init__"}),
        ("from lucidd.crypto.record import HEADER_SIZE", {"crypto.record"}),
        ("from lucidd import __version__", {"__init__"}),
        ("import lucidd", {"__init__"}),
        (
            "def f():\n    from lucidd.daemon.supervisor.main import main\n",
            {"daemon.supervisor.main"},
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from lucidd.daemon.ring import R\n",
            {"daemon.ring"},
        ),
        ("import os\nfrom collections import deque\nimport lucidity", set()),
    ],
)
def test_lucidd_imports_finds_every_spelling(source: str, expected: set[str]) -> None:
    assert lucidd_imports(source, KNOWN) == expected


def test_top_level_imports_sees_from_and_dotted_imports() -> None:
    source = "import os.path\nfrom socket import socket\nimport re\nfrom . import errors\n"
    assert top_level_imports(source) == {"os", "socket", "re"}


@pytest.mark.parametrize(
    ("importer", "imported", "fragment"),
    [
        (
            "protocol.codec",
            {"daemon.store"},
            "protocol.codec (layer 1) imports daemon.store (layer 2)",
        ),
        ("errors", {"protocol.codec"}, "errors (layer 0) imports protocol.codec (layer 1)"),
        ("crypto.seal", {"merkle"}, "same-layer imports must be listed"),
        ("crypto.record", {"crypto.seal"}, "same-layer imports must be listed"),
        (
            "merkle",
            {"daemon.aggregator.merkle_log"},
            "merkle (layer 1) imports daemon.aggregator.merkle_log (layer 2)",
        ),
        ("daemon.aggregator.merkle_files", {"daemon.aggregator.merkle_log"}, "must be listed"),
        ("daemon.store", {"daemon.keyfile"}, "same-layer imports must be listed"),
        ("daemon.aggregator.control", {"daemon.supervisor.ingest"}, "must be listed"),
        ("daemon.worker", {"daemon.aggregator.main"}, "process mains never import each other"),
        ("daemon.supervisor.main", {"daemon.worker"}, "process mains never import each other"),
        ("daemon.aggregator.control", {"daemon.supervisor.main"}, "must be listed"),
        ("daemon.supervisor.children", {"daemon.supervisor.main"}, "must be listed"),
        ("daemon.config", {"newthing"}, "unclassified module newthing"),
        ("cli.output", {"cli.commands"}, "must be listed"),
    ],
)
def test_violations_are_reported(importer: str, imported: set[str], fragment: str) -> None:
    problems = layering_violations(importer, imported)
    assert len(problems) == 1
    assert fragment in problems[0]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("protocol.codec", {"errors", "protocol.messages"}),
        (
            "daemon.aggregator.ledger",
            {
                "daemon.store",
                "merkle",
                "daemon.aggregator.reorder",
                "daemon.ipc",
                "crypto.__init__",
                "daemon.aggregator.merkle_log",
            },
        ),
        ("daemon.aggregator.merkle_log", {"daemon.aggregator.merkle_files", "merkle"}),
        (
            "daemon.supervisor.main",
            {"daemon.supervisor.ingest", "daemon.supervisor.children", "daemon.ring"},
        ),
        ("daemon.aggregator.main", {"daemon.aggregator.control", "daemon.aggregator.ledger"}),
        ("daemon.supervisor.children", {"daemon.ipc", "daemon.channels"}),
        (
            "cli.commands",
            {"client.__init__", "protocol.__init__", "units", "cli.output", "cli.formats"},
        ),
        ("cli.__main__", {"cli.__init__"}),
        ("client.aio", {"client.core", "client.ids", "protocol.__init__", "errors"}),
        ("errors", {"errors"}),
    ],
)
def test_allowed_imports_pass(importer: str, imported: set[str]) -> None:
    assert layering_violations(importer, imported) == []


def test_find_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b"}}) == ["b", "b"]


def test_unclassified_module_fails_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "errors.py").write_text("")
    (tmp_path / "shiny.py").write_text("from lucidd import errors\n")
    modules = existing_modules(tmp_path)
    assert set(modules) == {"errors", "shiny"}
    unknown = sorted(set(modules) - set(LAYERS))
    assert unknown == ["shiny"]
    assert "add it to LAYERS" in TABLE_HINT

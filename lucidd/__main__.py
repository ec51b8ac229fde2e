"""``lucidd``: the daemon's command line (``serve``, ``keygen``, ``keys``, ``anchor deploy``).

``lucidd serve`` without options runs unprivileged on the defaults of DESIGN §7: state under
``$XDG_STATE_HOME/lucidd`` (else ``~/.local/state/lucidd``), sockets under
``$XDG_RUNTIME_DIR/lucidd`` (else ``/tmp/lucidd-$UID``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lucidd import __version__
from lucidd.anchoring import ethereum
from lucidd.anchoring.ethereum_credentials import load_credentials
from lucidd.crypto import Keyring
from lucidd.daemon.config import DURABILITY_CHOICES, Config
from lucidd.daemon.config_load import load_config, unknown_env_settings
from lucidd.daemon.default_dirs import resolve_dirs
from lucidd.daemon.keyfile import write_keyring
from lucidd.daemon.keys_cli import add_keys_parser, run_keys
from lucidd.daemon.logs import setup_logging
from lucidd.daemon.replication.cli import run_restore
from lucidd.daemon.signing_key import signing_key_file
from lucidd.daemon.supervisor.main import serve
from lucidd.daemon.supervisor.systemd import notify
from lucidd.errors import EX_CONFIG, ConfigError, LucidError

DEFAULT_CONFIG_FILE = Path("/etc/lucidd/lucidd.toml")
#: The tokens file's name in ``$CREDENTIALS_DIRECTORY`` (LoadCredential= of lucidd-http).
HTTP_TOKENS_CREDENTIAL = "lucidd.http-tokens"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lucidd", description="lucidd: seal streams of chunks")
    parser.add_argument("--version", action="version", version=f"lucidd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--state-dir", help="folder for sessions and keys")
    serve.add_argument("--runtime-dir", help="folder for data.sock and control.sock")
    serve.add_argument("--workers", type=int, help="worker processes (1-50)")
    serve.add_argument("--durability", choices=DURABILITY_CHOICES, help="when to acknowledge")
    restore = sub.add_parser(
        "restore",
        help="bring a host's sessions back from the object store (daemon stopped)",
    )
    restore.add_argument("--config", type=Path, help="TOML config file")
    restore.add_argument("--state-dir", help="folder for sessions and keys")
    restore.add_argument(
        "--host", metavar="HOST_ID", help="whose sessions (default: this state folder's host id)"
    )
    restore.add_argument(
        "--session", action="append", metavar="ID", help="only these sessions (repeatable)"
    )
    restore.add_argument(
        "--vkey", action="append", default=[], metavar="VKEY", help="also trust this key"
    )
    restore.add_argument(
        "--list", action="store_true", help="list the hosts and their sessions; restore nothing"
    )
    http = sub.add_parser("http", help="run the REST gateway (a client of the daemon)")
    http.add_argument("--config", type=Path, help="TOML config file")
    http.add_argument("--runtime-dir", help="folder of the daemon's sockets")
    http.add_argument("--state-dir", help="the daemon's state folder (for keys/http-tokens)")
    http.add_argument("--listen", help="127.0.0.1:PORT, [::1]:PORT or unix:PATH (http_listen)")
    keygen = sub.add_parser("keygen", help="write a new keyring (for systemd-creds)")
    keygen.add_argument("-o", "--output", type=Path, help="file to create (default: stdout)")
    keygen.add_argument(
        "--signing", action="store_true", help="a checkpoint-signing key instead of a keyring"
    )
    add_keys_parser(sub)
    anchor = sub.add_parser("anchor", help="the Ethereum anchoring contract")
    anchor_sub = anchor.add_subparsers(dest="anchor_command", required=True)
    deploy = anchor_sub.add_parser(
        "deploy", help='deploy a LucidAnchor contract; prints {"contract": "0x..."}'
    )
    deploy.add_argument(
        "--credentials",
        type=Path,
        required=True,
        help='JSON file {"rpc_url": ..., "private_key": "0x..."}, mode 0600',
    )
    return parser


def _load(args: argparse.Namespace, overrides: dict[str, object]) -> Config:
    config_file: Path | None = args.config
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    toml_text = config_file.read_bytes() if config_file is not None else None
    env = dict(os.environ)
    config = load_config(toml_text, env, overrides)
    return resolve_dirs(config, env, str(Path.home()), os.getuid())


def _restore(args: argparse.Namespace) -> int:
    config = _load(args, {"state_dir": args.state_dir})
    setup_logging("restore", config.log_level)
    results = asyncio.run(run_restore(config, os.environ.get("CREDENTIALS_DIRECTORY"), args))
    print(json.dumps(results))
    return 0


def _serve(args: argparse.Namespace) -> int:
    config_file: Path | None = args.config
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    toml_text = config_file.read_bytes() if config_file is not None else None
    overrides = {
        "state_dir": args.state_dir,
        "runtime_dir": args.runtime_dir,
        "workers": args.workers,
        "durability": args.durability,
    }
    env = dict(os.environ)
    config = load_config(toml_text, env, overrides)
    config = resolve_dirs(config, env, str(Path.home()), os.getuid())
    setup_logging("supervisor", config.log_level)
    if config.metrics_listen and importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("metrics_listen needs the HTTP extra: pip install 'lucidd[http]'")
    for name in unknown_env_settings(env):
        logging.getLogger("lucidd").warning("event=unknown_setting variable=%s", name)
    return serve(config)


def _http(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("lucidd http needs the HTTP extra: pip install 'lucidd[http]'")
    # Imported here: uvicorn and prometheus_client come with lucidd[http], not the core.
    from lucidd.http.main import GatewaySettings, run_gateway  # noqa: PLC0415
    from lucidd.http.server import HttpLimits  # noqa: PLC0415

    config = _load(
        args,
        {
            "runtime_dir": args.runtime_dir,
            "state_dir": args.state_dir,
            "http_listen": args.listen,
        },
    )
    setup_logging("http", config.log_level)
    if not config.http_listen:
        raise ConfigError("lucidd http needs http_listen (or --listen): where to serve")
    settings = GatewaySettings(
        listen=config.http_listen,
        runtime_dir=Path(config.runtime_dir),
        tokens_file=_tokens_file(config),
        limits=HttpLimits(
            max_connections=config.http_max_connections,
            header_timeout=config.http_request_timeout,
            body_timeout=config.http_request_timeout,
        ),
        max_requests_per_user=config.http_user_requests,
    )

    def ready(address: str) -> None:
        notify(f"READY=1\nSTATUS=serving the REST API on {address}")

    return run_gateway(settings, ready)


def _tokens_file(config: Config) -> Path:
    if config.http_tokens:
        return Path(config.http_tokens)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        return Path(credentials) / HTTP_TOKENS_CREDENTIAL
    return Path(config.state_dir) / "keys" / "http-tokens"


def _keygen(args: argparse.Namespace) -> int:
    if args.signing:
        data = signing_key_file(Ed25519PrivateKey.generate())
        if args.output is None:
            sys.stdout.buffer.write(data)
        else:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return 0
    keyring = Keyring.generate(time.time_ns())
    write_keyring(keyring, args.output if args.output is not None else sys.stdout.buffer)
    return 0


def _anchor_deploy(args: argparse.Namespace) -> int:
    creds = load_credentials(args.credentials)
    print(json.dumps({"contract": ethereum.deploy(creds)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "anchor":
            return _anchor_deploy(args)
        if args.command == "restore":
            return _restore(args)
        if args.command == "http":
            return _http(args)
        if args.command == "keys":
            config_file: Path | None = args.config
            if config_file is None and DEFAULT_CONFIG_FILE.is_file():
                config_file = DEFAULT_CONFIG_FILE
            return run_keys(args, config_file)
        return _keygen(args)
    except LucidError as err:
        print(f"lucidd: {err.code}: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"lucidd: {err}", file=sys.stderr)
        return EX_CONFIG


if __name__ == "__main__":
    sys.exit(main())

"""Command-line hooks: the ``serve`` sub-command and the ``--worker`` options of ``run``/``render``."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avatarcam.engines.base import Engine
from avatarcam.errors import ConfigError
from avatarcam.remote import protocol as P
from avatarcam.remote.transport import is_loopback, parse_address

ENV_TOKEN = "AVATARCAM_TOKEN"
DEFAULT_BIND = "127.0.0.1:5555"


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to an ``argparse`` sub-parsers object; returns the new parser."""
    p = subparsers.add_parser(
        "serve", help="run the engine for remote clients (on the GPU machine)",
        description="Serve an engine to `avatarcam run/render --worker HOST:PORT` clients. Bind to 0.0.0.0 to "
                    "accept other machines (a token is then required); add --curve-keys to encrypt the traffic.")
    p.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_BIND}: this machine only)")
    p.add_argument("--token", default=None,
                   help=f"shared secret clients must send (default: ${ENV_TOKEN}; on loopback a random one is printed)")
    p.add_argument("--engine", default="mesh", help="engine to serve (default mesh)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option the worker pins (clients cannot override it), e.g. device=cuda; repeatable")
    p.add_argument("--max-clients", type=int, default=4, metavar="N", help="concurrent clients (default 4)")
    p.add_argument("--max-fps", type=float, default=120.0, metavar="FPS",
                   help="frames per second one client may send (default 120)")
    p.add_argument("--no-client-options", action="store_true",
                   help="ignore the engine options clients send (use only --engine-option)")
    p.add_argument("--curve-keys", default=None, metavar="DIR",
                   help="encrypt with CurveZMQ using DIR/server.key_secret (created if missing); give clients "
                        "DIR/server.key or the printed public key for --worker-key")
    return p


def _token(args: argparse.Namespace) -> str | None:
    token = getattr(args, "token", None)
    if token is None:
        token = os.environ.get(ENV_TOKEN)
    if token is not None and not token.strip():
        raise ConfigError("the token is empty: pass a non-empty --token (or AVATARCAM_TOKEN)")
    return token


def parse_engine_options(items: list[str]) -> dict[str, Any]:
    """``["size=256", "device=cuda"]`` -> ``{"size": 256, "device": "cuda"}`` (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"engine option {item!r} must be KEY=VALUE, e.g. device=cuda")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        out[key.strip()] = value if isinstance(value, (str, int, float, bool, type(None))) else text
    return out


def worker_config_from_args(args: argparse.Namespace) -> tuple["WorkerConfig", bool]:  # noqa: F821
    """The :class:`WorkerConfig` for ``serve`` flags, and whether its token was generated here."""
    from avatarcam.remote.server import WorkerConfig
    from avatarcam.remote.transport import create_server_keys

    host, _ = parse_address(args.bind, allow_port_zero=True)
    token = _token(args)
    generated = False
    if token is None:
        if not is_loopback(host):
            raise ConfigError(f"refusing to listen on {args.bind} without a token: anyone on the network could use "
                              f"this GPU. Pass --token T (or set {ENV_TOKEN}) and give the same token to clients")
        token, generated = secrets.token_urlsafe(18), True
    secret_file = str(create_server_keys(args.curve_keys)) if args.curve_keys else None
    try:
        config = WorkerConfig(
            token=token, bind=args.bind, engine=args.engine,
            engine_options=parse_engine_options(args.engine_option),
            allow_client_options=not args.no_client_options, max_clients=args.max_clients,
            max_fps_per_client=args.max_fps, curve_secret_key_file=secret_file,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config, generated


def run_serve(args: argparse.Namespace) -> int:
    """Run the worker until Ctrl-C; returns the exit status. Raises AvatarcamError for bad flags,
    an engine that cannot start, or an address that cannot be bound."""
    from avatarcam.remote.server import Worker
    from avatarcam.remote.transport import load_server_keys

    config, generated = worker_config_from_args(args)
    worker = Worker(config=config)
    worker.bind()  # creates the engine and binds now: errors surface before the banner
    try:
        host, _ = parse_address(config.bind, allow_port_zero=True)
        print(f"avatarcam worker: engine {config.engine} on {worker.address} "
              f"(up to {config.max_clients} clients). Ctrl-C stops it.", flush=True)
        if generated:
            print(f"token (pass to clients with --token): {config.token}", flush=True)
        if config.curve_secret_key_file:
            public, _ = load_server_keys(config.curve_secret_key_file)
            # Z85 keys use shell characters such as ( ! * but never a single quote: quote it for copy-paste.
            print(f"encryption: CURVE; clients need --worker-key '{public.decode()}' "
                  f"(or a copy of {Path(config.curve_secret_key_file).with_suffix('.key')})", flush=True)
        elif not is_loopback(host):
            print("warning: traffic (frames and token) is not encrypted: use --curve-keys DIR, or a VPN / SSH "
                  "tunnel, on networks you do not trust", file=sys.stderr, flush=True)
        previous = _stop_on_sigterm()
        try:
            worker.serve_forever()
        finally:
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:
        pass
    finally:
        worker.close()
    stats = worker.stats()
    print(f"worker stopped: {stats.get('results', 0)} frames rendered, {stats.get('sessions', 0)} sessions", flush=True)
    return 0


def _stop_on_sigterm() -> Any:
    """Treat SIGTERM (``docker stop``, systemd) like Ctrl-C; returns the previous handler (None
    when not on the main thread, where handlers cannot be set)."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--worker``, ``--token``, ``--worker-mode``, ``--jpeg-quality``, ``--worker-key`` to ``run``/``render``."""
    g = parser.add_argument_group("remote worker (run the engine on another machine)")
    g.add_argument("--worker", default=None, metavar="HOST:PORT",
                   help="render on the worker at HOST:PORT (started there with `avatarcam serve`)")
    g.add_argument("--token", default=None, help=f"the worker's token (default: ${ENV_TOKEN})")
    g.add_argument("--worker-mode", choices=P.MODES, default="frames",
                   help="send the driving image (frames) or only face landmarks (keypoints; mesh engine)")
    g.add_argument("--jpeg-quality", type=int, default=85, metavar="Q",
                   help="JPEG quality 1..100 of images sent both ways (default 85)")
    g.add_argument("--lossless", action="store_true", help="send PNG instead of JPEG (exact, more bandwidth)")
    g.add_argument("--worker-key", default=None, metavar="KEY|FILE",
                   help="the worker's CURVE public key (or its server.key file) when it runs with --curve-keys")


def engine_from_args(args: argparse.Namespace, engine_name: str, engine_options: Mapping[str, Any] | None = None,
                     *, offline: bool | None = None, connect_timeout_s: float | None = 10.0) -> Engine | None:
    """A connected :class:`RemoteEngine` when ``--worker`` is given, else None (use a local engine).

    ``offline=True``: one synchronous round trip per frame, every frame in order (what ``render``
    needs); False: pipelined live use. None: True when ``args.command == "render"``.
    ``connect_timeout_s``: wait this long for the worker to accept us and raise EngineError with
    the reason (wrong token, unreachable, engine refused) so the CLI stops early; None skips it.
    """
    if getattr(args, "worker", None) is None:
        return None
    from avatarcam.remote.client import RemoteEngine

    token = _token(args)
    if token is None:
        raise ConfigError(f"--worker needs the worker's token: pass --token T or set {ENV_TOKEN}")
    if offline is None:
        offline = getattr(args, "command", None) == "render"
    quality = getattr(args, "jpeg_quality", 85)
    engine = RemoteEngine(
        address=args.worker, token=token, engine=engine_name, engine_options=engine_options,
        jpeg_quality=quality, mode=getattr(args, "worker_mode", "frames"),
        codec="png" if getattr(args, "lossless", False) else "jpeg",
        pipelined=not offline, curve_server_key=getattr(args, "worker_key", None),
    )
    if connect_timeout_s is not None:
        try:
            engine.connect(connect_timeout_s)
        except BaseException:
            engine.close()
            raise
    return engine

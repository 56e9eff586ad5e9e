"""ZeroMQ plumbing shared by the worker and the client: addresses, socket options, CURVE keys."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import zmq

from avatarcam.errors import ConfigError

SERVER_KEY_NAME = "server"  # DIR/server.key (public, give to clients), DIR/server.key_secret (keep)


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"`` (IPv6 as ``"[::1]:PORT"``) -> (host, port). Raises ConfigError."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"address {text!r} must be HOST:PORT, e.g. 192.168.1.20:5555")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"address {text!r}: port {port_text!r} is not a number") from None
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"address {text!r}: port {port} is outside 1..65535")
    if not host:
        raise ConfigError(f"address {text!r} has no host: use e.g. 127.0.0.1:{port} or 0.0.0.0:{port}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint(host: str, port: int | str) -> str:
    """The ZeroMQ TCP endpoint for ``host``/``port`` (``port`` may be ``"*"`` to bind any free one)."""
    if host.lower() == "localhost":
        host = "127.0.0.1"  # bind() needs an address or interface, not a name
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def _common_options(sock: zmq.Socket, max_message_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    # ZeroMQ drops the connection of a peer that sends a part above this size before it is buffered.
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    # ZMTP heartbeats find half-open connections (laptop lid closed, Wi-Fi gone) within seconds.
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 4000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 4000)


def router_socket(ctx: zmq.Context, *, max_message_bytes: int, curve_secret_key_file: str | None) -> zmq.Socket:
    """The worker's ROUTER socket (not bound yet)."""
    sock = ctx.socket(zmq.ROUTER)
    _common_options(sock, max_message_bytes)
    sock.setsockopt(zmq.RCVHWM, 256)
    # A client that stops reading loses replies once 64 are queued instead of growing memory.
    sock.setsockopt(zmq.SNDHWM, 64)
    if curve_secret_key_file is not None:
        public, secret = load_server_keys(curve_secret_key_file)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
    return sock


def dealer_socket(ctx: zmq.Context, *, max_message_bytes: int, curve_server_key: bytes | None) -> zmq.Socket:
    """A client DEALER socket (not connected yet)."""
    sock = ctx.socket(zmq.DEALER)
    _common_options(sock, max_message_bytes)
    # Queue messages only on a live connection: while the worker is away send() says so at once
    # (zmq.Again) instead of piling up stale frames that would be delivered after a restart.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, 16)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if curve_server_key is not None:
        public, secret = zmq.curve_keypair()  # an ephemeral client key: the token authenticates
        sock.curve_serverkey = curve_server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    return sock


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigError("this libzmq has no CURVE encryption support: install pyzmq from PyPI "
                          "(its wheels include it) or run without encryption on a trusted network / VPN")


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a ZeroMQ certificate file, as a ConfigError when unreadable."""
    import zmq.auth

    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a ZeroMQ CURVE certificate ({exc})") from exc


def load_server_keys(secret_key_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``*.key_secret`` certificate written by :func:`create_server_keys`."""

    _require_curve()
    path = Path(secret_key_file)
    if not path.is_file():
        raise ConfigError(f"CURVE secret key file {path} not found: create one with "
                          "`avatarcam serve --curve-keys DIR` (it writes DIR/server.key_secret)")
    public, secret = _load_certificate(path)
    if secret is None:
        raise ConfigError(f"{path} holds only a public key: the worker needs the secret one "
                          f"({SERVER_KEY_NAME}.key_secret)")
    return public, secret


def create_server_keys(directory: str | Path) -> Path:
    """Return ``DIR/server.key_secret``, creating a new key pair there first if there is none."""
    import zmq.auth

    _require_curve()
    directory = Path(directory)
    secret = directory / f"{SERVER_KEY_NAME}.key_secret"
    if not secret.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(directory, SERVER_KEY_NAME)
        secret.chmod(0o600)
    return secret


def read_server_public_key(key_or_file: str) -> bytes:
    """The worker's CURVE public key from its 40-character Z85 text or from a ``server.key`` file."""
    from zmq.utils import z85

    _require_curve()
    text = key_or_file.strip()
    if len(text) == 40 and not Path(text).exists():
        try:
            z85.decode(text)
        except Exception:  # z85 raises ValueError/KeyError for foreign characters
            raise ConfigError(f"worker key {text!r} is not a Z85 CURVE key") from None
        return text.encode("ascii")
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"worker key {text!r} is neither a 40-character CURVE public key nor a file: "
                          "copy server.key from the worker's --curve-keys folder")
    public, _ = _load_certificate(path)
    return public

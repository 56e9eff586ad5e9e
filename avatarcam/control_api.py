"""The local control API: the hotkey commands over HTTP and WebSocket, so a Stream Deck, an OBS
hotkey or a desktop shortcut can drive avatarcam while Zoom or OBS has the keyboard focus.

Served by aiohttp on its own thread and event loop; every request goes through
:meth:`Controller.execute`, exactly like a key press. Endpoints (all need the token, sent as
``Authorization: Bearer TOKEN`` or ``X-Avatarcam-Token: TOKEN``):

- ``GET /status``: current avatar, fps, latency, camera status and the live state;
- ``GET /commands``: the commands, their parameters and the hotkeys;
- ``POST /command/NAME`` with an optional JSON object of parameters, e.g. ``{"index": 2}``;
- ``POST /command`` with ``{"command": "NAME", ...parameters}``;
- ``GET /ws``: a WebSocket; each text message is ``{"command": "NAME", ...}`` (or
  ``{"command": "status"}``), each reply the same JSON as over HTTP.

Loopback only unless ``allow_remote``; requests addressed to another host name are refused
too (a web page cannot reach the API through DNS rebinding). Errors are JSON
``{"ok": false, "error": "..."}`` with 400 (bad command or parameters, malformed JSON),
401 (token), 403 (host), 404 (no such avatar name or path), 405, 413 (body over ``max_body``).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarcam.controls import COMMANDS, CommandError, Controller
from avatarcam.errors import AvatarcamError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


class ControlApiError(AvatarcamError):
    """The control API cannot be started."""


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only means this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def default_token_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("avatarcam")) / "api-token"


@dataclass(frozen=True)
class ApiConfig:
    """The control API. ``host``/``port``: where it listens (port 0: any free port);
    ``token``: the shared secret (None: read from ``token_file``, or generated and written there
    on first use, so Stream Deck buttons keep working across restarts); ``token_file`` (None:
    ``<user config dir>/avatarcam/api-token``); ``allow_remote``: permit a non-loopback ``host``
    (the token then travels unencrypted over the network); ``max_body``: request size limit in bytes.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    token_file: str | None = None
    allow_remote: bool = False
    max_body: int = 16384

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(f"api port must be in 0..65535, got {self.port!r}")
        if not 256 <= self.max_body <= 1 << 20:
            raise ConfigError(f"api max_body must be in 256..1048576 bytes, got {self.max_body}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("api token is too short: use at least 8 characters (or leave it unset to generate one)")
        if self.enabled and not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(f"the control API will only listen on this machine (127.0.0.1, ::1, localhost), "
                              f"not on {self.host!r}: anyone who can reach it can drive your camera. Set "
                              "allow_remote = true in [api] (or --api-allow-remote) if you really want that.")


def resolve_token(config: ApiConfig) -> str:
    """The configured token, else the one in the token file, else a new one written there (0600)."""
    if config.token is not None:
        return config.token
    path = Path(config.token_file) if config.token_file else default_token_file()
    try:
        existing = path.read_text(encoding="utf-8").strip()
        if len(existing) >= 16:
            return existing
    except OSError:
        pass
    token = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
    except OSError as exc:
        raise ControlApiError(f"cannot write the API token file {path} ({exc}): set a token in [api] "
                              "(token = \"...\") or --api-token, or make that folder writable") from exc
    return token


class ControlApi:
    """Serves ``controller`` over HTTP / WebSocket on a background thread (``start()`` / ``close()``)."""

    def __init__(self, *, controller: Controller, config: ApiConfig) -> None:
        if not config.allow_remote and not is_loopback(config.host):
            raise ConfigError(f"refusing to serve the control API on non-loopback host {config.host!r} "
                              "without allow_remote")
        self.controller, self.config = controller, config
        self.token = resolve_token(config)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "ControlApi":
        """Listen; returns once the port is bound. Raises ControlApiError when it cannot be."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._serve, name="avatarcam-api", daemon=True)
        self._thread.start()
        self._ready.wait(30.0)
        if self._error is not None:
            self._thread.join(5.0)
            raise ControlApiError(f"cannot start the control API on {self.config.host}:{self.config.port} "
                                  f"({self._error}): another program (or avatarcam) may use that port; "
                                  "choose another with --api-port") from self._error
        log.info("control API on %s (send the token from %s)", self.url,
                 "the config" if self.config.token else (self.config.token_file or default_token_file()))
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        runner = None
        try:
            runner = loop.run_until_complete(self._start_site())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            self._ready.set()
            if runner is not None:
                loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _start_site(self):
        from aiohttp import web

        app = web.Application(client_max_size=self.config.max_body,
                              middlewares=[self._errors_mw(), self._auth_mw()])
        app.router.add_get("/status", self._status)
        app.router.add_get("/commands", self._commands)
        app.router.add_post("/command", self._command)
        app.router.add_post("/command/{name}", self._command)
        app.router.add_get("/ws", self._websocket)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        return runner

    def close(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15.0)

    def __enter__(self) -> "ControlApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- middlewares -------------------------------------------------------------------------------
    def _errors_mw(self):
        from aiohttp import web

        @web.middleware
        async def errors(request, handler):
            try:
                return await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
                message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
                if exc.status == 413:
                    message = f"request body too large: at most {self.config.max_body} bytes"
                return _error(exc.status, message, headers=headers)
            except CommandError as exc:
                return _error(exc.status, str(exc), **exc.details)
            except Exception as exc:  # noqa: BLE001 - one bad request must never stop the server
                log.exception("control API request %s %s failed", request.method, request.path)
                return _error(500, f"internal error: {exc}")

        return errors

    def _auth_mw(self):
        from aiohttp import web

        expected = self.token.encode("utf-8")

        @web.middleware
        async def auth(request, handler):
            if not self.config.allow_remote and not is_loopback_name(request.url.host or ""):
                return _error(403, "requests must be addressed to 127.0.0.1, ::1 or localhost")
            given = request.headers.get("X-Avatarcam-Token")
            header = request.headers.get("Authorization", "")
            if given is None and header[:7].lower() == "bearer ":
                given = header[7:].strip()
            if given is None:
                return _error(401, "missing token: send 'Authorization: Bearer TOKEN' or 'X-Avatarcam-Token: TOKEN' "
                                   "(the token is in the api-token file in avatarcam's config folder)",
                              headers={"WWW-Authenticate": 'Bearer realm="avatarcam"'})
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
                return _error(401, "wrong token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return await handler(request)

        return auth

    # -- handlers ----------------------------------------------------------------------------------
    async def _status(self, request):
        return _ok(state=self.controller.status())

    async def _commands(self, request):
        from avatarcam.hotkeys import HOTKEYS

        hotkeys = [{"keys": list(h.keys), "command": h.command, "args": dict(h.args), "help": h.text} for h in HOTKEYS]
        return _ok(commands=[c.describe() for c in COMMANDS.values()], hotkeys=hotkeys)

    async def _command(self, request):
        body = await request.read()
        args = _parse_json(body) if body.strip() else {}
        if not isinstance(args, dict):
            raise CommandError(f"the request body must be a JSON object, got {type(args).__name__}")
        name = request.match_info.get("name")
        if name is None:
            name = args.pop("command", None)
            if not isinstance(name, str):
                raise CommandError(f"missing \"command\" in the body; commands: {', '.join(sorted(COMMANDS))}",
                                   commands=sorted(COMMANDS))
        return _ok(**self._run(name, args))

    def _run(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        self.controller.execute(name, args)
        return {"command": name, "state": self.controller.status()}

    async def _websocket(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(max_msg_size=self.config.max_body, heartbeat=30.0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    await ws.send_json({"ok": False, "status": 400, "error": "send JSON text messages"})
                continue
            await ws.send_json(self._ws_reply(msg.data))
        return ws

    def _ws_reply(self, text: str) -> dict[str, Any]:
        try:
            data = _parse_json(text.encode("utf-8", "replace"))
            if not isinstance(data, dict) or not isinstance(data.get("command"), str):
                raise CommandError('each message must be a JSON object like {"command": "freeze"}')
            name = data.pop("command")
            if name == "status":
                return {"ok": True, "state": self.controller.status()}
            return {"ok": True, **self._run(name, data)}
        except CommandError as exc:
            return {"ok": False, "status": exc.status, "error": str(exc), **exc.details}
        except Exception as exc:  # noqa: BLE001 - keep the socket and the server alive
            log.exception("control API websocket message failed")
            return {"ok": False, "status": 500, "error": f"internal error: {exc}"}


def is_loopback_name(host: str) -> bool:
    """Whether a request's Host names this machine (no DNS lookup: literal addresses and localhost)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise CommandError("the request body is nested too deeply") from None


def _ok(**data: Any):
    from aiohttp import web

    return web.json_response({"ok": True, **data})


def _error(status: int, message: str, *, headers: dict[str, str] | None = None, **details: Any):
    from aiohttp import web

    return web.json_response({"ok": False, "status": status, "error": message, **details}, status=status,
                             headers=headers)

"""The remote worker: runs an engine for :class:`~avatarcam.remote.client.RemoteEngine` clients.

One thread owns one ROUTER socket and does everything: it drains incoming messages, keeps the
newest pending frame of each client (an older pending one is answered ``skipped``: latest frame
wins, nobody builds a backlog), then renders one frame per client in round-robin order, so a
client that sends faster never gets more than its turn. Engine calls run on this one thread:
on a GPU box that serialises them, which is what one GPU wants anyway.

Each client session (a random id sent in ``hello``, so a client that reconnects on a new socket
gets its state back) has its own engine instance: calibration, temporal filters and prepared
avatars never leak between clients. Uploaded avatars are cached across clients by the hash of
their content, so a switch to an avatar any client used before costs one round trip.
"""
from __future__ import annotations

import collections
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from avatarcam.avatars.types import Avatar, AvatarFace
from avatarcam.engines import create_engine
from avatarcam.engines.base import Drive, Engine
from avatarcam.errors import AvatarcamError, EngineError
from avatarcam.frame import Frame
from avatarcam.geometry import Box
from avatarcam.remote import protocol as P
from avatarcam.remote.transport import endpoint, parse_address, router_socket

log = logging.getLogger(__name__)

PREPARED_PER_SESSION = 16  # prepared avatars an engine keeps per client (LRU)
CONTROL_RATE = 50.0  # non-frame messages per second per connection (burst: twice that)
POLL_MS = 100  # idle poll period: also the longest close() waits for the loop to notice


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Options of :class:`Worker`.

    ``bind``: ``HOST:PORT`` to listen on (port 0: any free port, see :attr:`Worker.address`).
    ``token``: shared secret every request must carry. ``engine`` / ``engine_options``: what is
    served; options a client sends are merged under these (the worker's win) when
    ``allow_client_options``, so the operator pins device and weights while clients choose e.g.
    the output size. ``max_clients``: concurrent sessions; ``session_idle_s`` frees the slot of a
    client that vanished without saying bye. ``max_message_bytes``: largest message (avatar
    uploads are the big ones). ``max_fps_per_client``: frames per second one client may send.
    ``avatar_cache_bytes``: decoded avatar photos kept across clients. ``curve_secret_key_file``:
    a CURVE ``*.key_secret`` file to encrypt all traffic (clients need the public key).
    """

    token: str
    bind: str = "127.0.0.1:5555"
    engine: str = "mesh"
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    allow_client_options: bool = True
    max_clients: int = 4
    max_message_bytes: int = 32 * 1024 * 1024
    max_fps_per_client: float = 120.0
    session_idle_s: float = 60.0
    avatar_cache_bytes: int = 1024 * 1024 * 1024
    curve_secret_key_file: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token.strip():
            raise ValueError(f"token must be a non-empty string, got {self.token!r}")
        parse_address(self.bind, allow_port_zero=True)
        if not isinstance(self.engine, str) or not self.engine:
            raise ValueError(f"engine must be an engine name, got {self.engine!r}")
        if not isinstance(self.engine_options, Mapping):
            raise ValueError(f"engine_options must be a mapping, got {type(self.engine_options).__name__}")
        if isinstance(self.max_clients, bool) or not isinstance(self.max_clients, int) or self.max_clients < 1:
            raise ValueError(f"max_clients must be an integer >= 1, got {self.max_clients!r}")
        if not 64 * 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise ValueError(f"max_message_bytes must be in [65536, 2**31 - 1], got {self.max_message_bytes!r}")
        if not (math.isfinite(self.max_fps_per_client) and self.max_fps_per_client > 0):
            raise ValueError(f"max_fps_per_client must be a finite number > 0, got {self.max_fps_per_client!r}")
        if not (math.isfinite(self.session_idle_s) and self.session_idle_s > 0):
            raise ValueError(f"session_idle_s must be a finite number > 0, got {self.session_idle_s!r}")
        if self.avatar_cache_bytes < 0:
            raise ValueError(f"avatar_cache_bytes must be >= 0, got {self.avatar_cache_bytes!r}")


class _TokenBucket:
    """``rate`` events per second on average, up to ``burst`` at once."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Session:
    """One client's state: its engine, its prepared avatars and its newest pending frame."""

    def __init__(self, *, session_id: str, identity: bytes, engine: Engine, options: dict[str, Any],
                 mode: str, codec: str, quality: int, max_fps: float, now: float) -> None:
        self.id = session_id
        self.identity = identity
        self.engine = engine
        self.options = options
        self.mode, self.codec, self.quality = mode, codec, quality
        self.prepared: collections.OrderedDict[str, tuple[Avatar, Any]] = collections.OrderedDict()
        self.pending: P.Message | None = None
        self.calibrate = False
        self.last_seen = now
        self.frames = _TokenBucket(max_fps, max(2.0, max_fps / 2), now)


class _AvatarStore:
    """Decoded avatars by content key, least recently used dropped beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, Avatar] = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> Avatar | None:
        avatar = self._items.get(key)
        if avatar is not None:
            self._items.move_to_end(key)
        return avatar

    def put(self, key: str, avatar: Avatar) -> None:
        if key in self._items:
            return
        self._items[key] = avatar
        self._bytes += avatar.image.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.image.nbytes

    def __len__(self) -> int:
        return len(self._items)


def _wire_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The effective options as the welcome reports them (informational: odd values as short text)."""
    def value(v: Any) -> Any:
        if isinstance(v, (list, tuple)) and len(v) <= 16 and all(_scalar(i) for i in v):
            return list(v)
        return v if _scalar(v) else str(v)[:256]

    def _scalar(v: Any) -> bool:
        if isinstance(v, float):
            return math.isfinite(v) and abs(v) <= 1e12
        if isinstance(v, int):
            return abs(v) <= 2**53
        return v is None or (isinstance(v, str) and len(v) <= 256)

    return {str(k)[:64]: value(v) for k, v in list(options.items())[:P.MAX_OPTIONS]}


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, AvatarcamError) else f"{type(exc).__name__}: {exc}"


class Worker:
    """Serves ``config.engine`` to remote clients. ``start()`` runs it on a thread (tests, embedding),
    ``serve_forever()`` in the calling thread (the CLI); ``close()`` stops and joins either.

    The engine is created once at start, so a worker that cannot run it (no weights, bad options)
    fails at once with the engine's own message instead of on the first client. ``engine_factory``
    (``name, **options -> Engine``) replaces :func:`avatarcam.engines.create_engine`, e.g. for
    engines that are not in the registry.
    """

    def __init__(self, *, config: WorkerConfig,
                 engine_factory: Callable[..., Engine] = create_engine) -> None:
        self.config = config
        self._factory = engine_factory
        self.instance = secrets.token_hex(8)  # tells clients a restarted worker from the old one
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._address: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._running = False
        self._stats_lock = threading.Lock()
        self._counters: collections.Counter[str] = collections.Counter()
        self._sessions: dict[str, _Session] = {}
        self._by_identity: dict[bytes, str] = {}
        self._buckets: dict[bytes, _TokenBucket] = {}
        self._avatars = _AvatarStore(config.avatar_cache_bytes)
        self._spare: Engine | None = None
        self._round = 0
        self._last_sweep = 0.0

    # ---------------------------------------------------------------- lifecycle

    @property
    def address(self) -> str:
        """``HOST:PORT`` actually bound (the real port when ``bind`` asked for port 0)."""
        if self._address is None:
            raise RuntimeError("the worker is not bound yet: call bind(), start() or serve_forever()")
        return self._address

    def bind(self) -> None:
        """Create the engine and bind the socket (idempotent): errors (no weights, port in use) raise here."""
        if self._sock is not None:
            return
        cfg = self.config
        try:
            self._spare = self._factory(cfg.engine, **dict(cfg.engine_options))
        except AvatarcamError:
            raise
        except Exception as exc:
            raise EngineError(f"the worker cannot create engine {cfg.engine!r} with options "
                              f"{dict(cfg.engine_options)}: {_describe(exc)}") from exc
        host, port = parse_address(cfg.bind, allow_port_zero=True)
        self._ctx = zmq.Context()
        try:
            sock = router_socket(self._ctx, max_message_bytes=cfg.max_message_bytes,
                                 curve_secret_key_file=cfg.curve_secret_key_file)
            if ":" in host:
                sock.setsockopt(zmq.IPV6, 1)
            sock.bind(endpoint(host, port or "*"))
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            self._ctx = None
            self._close_spare()
            raise EngineError(f"cannot listen on {cfg.bind} ({exc}): is another worker running on that port, "
                              "or is the address not one of this machine's? Try another --bind") from exc
        except BaseException:
            self._ctx.destroy(linger=0)
            self._ctx = None
            self._close_spare()
            raise
        last = sock.getsockopt_string(zmq.LAST_ENDPOINT)  # tcp://127.0.0.1:41234
        bound_port = int(last.rpartition(":")[2])
        self._address = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
        self._sock = sock

    def start(self) -> "Worker":
        """Bind and serve on a background thread; returns self. Bind errors raise here."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self.bind()
        self._thread = threading.Thread(target=self._run, name="avatarcam-worker", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve in the calling thread until :meth:`close` (from another thread) or Ctrl-C."""
        self.bind()
        self._run()

    def close(self) -> None:
        """Stop serving, join the thread, release engines and the socket. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        elif self._running:
            self._done.wait()
        else:
            self._shutdown()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters since start: messages, frames, results, skipped, errors by kind, clients, avatars."""
        with self._stats_lock:
            out = dict(self._counters)
        out["clients"] = len(self._sessions)
        out["avatars_cached"] = len(self._avatars)
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counters[key] += n

    def _close_spare(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def _shutdown(self) -> None:
        for s in list(self._sessions.values()):
            self._end_session(s, "worker closing")
        self._close_spare()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _run(self) -> None:
        self._running = True
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                busy = any(s.pending is not None for s in self._sessions.values())
                if poller.poll(0 if busy else POLL_MS):
                    self._drain()
                self._serve_round()
                now = time.monotonic()
                if now - self._last_sweep > 1.0:
                    self._sweep(now)
        finally:
            self._shutdown()
            self._running = False
            self._done.set()

    # ---------------------------------------------------------------- receiving

    def _drain(self, limit: int = 512) -> None:
        # Bounded, so a flood cannot starve the render step below.
        for _ in range(limit):
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(parts[0], parts[1:])
            except Exception as exc:  # a worker bug must cost one message, never the worker
                log.exception("internal error while handling a message")
                self._count("internal_errors")
                self._error(parts[0], -1, "internal", f"worker bug, please report: {_describe(exc)}")

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:  # the client's queue is full (it stopped reading): drop, it will resync
            self._count("replies_dropped")

    def _reply(self, identity: bytes, type_: str, seq: int, fields: dict[str, Any] | None = None,
               payloads: tuple[bytes, ...] = ()) -> None:
        self._send(identity, P.pack(type_, seq, fields, payloads))

    def _error(self, identity: bytes, seq: int, code: str, message: str, avatar: str | None = None) -> None:
        self._count("errors")
        fields: dict[str, Any] = {"code": code, "message": message[:2000]}
        if avatar is not None:
            fields["avatar"] = avatar
        self._reply(identity, "error", seq, fields)

    def _handle(self, identity: bytes, parts: list[bytes]) -> None:
        now = time.monotonic()
        self._count("messages")
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = _TokenBucket(CONTROL_RATE, 2 * CONTROL_RATE, now)
        try:
            msg = P.unpack(parts, allowed=P.REQUESTS, max_bytes=self.config.max_message_bytes)
        except P.ProtocolError as exc:
            self._count(f"bad_{exc.code}")
            if bucket.take(now):  # answer bad messages, but never faster than the control rate
                self._error(identity, exc.seq, exc.code, exc.message)
            return
        if not secrets.compare_digest(msg.token.encode(), self.config.token.encode()):
            self._count("auth_failed")
            if bucket.take(now):
                self._error(identity, msg.seq, "auth", "wrong token: use the token the worker was started with "
                            "(avatarcam serve --token, or AVATARCAM_TOKEN)")
            return
        if msg.type == "frame":
            self._on_frame(identity, msg, now)
            return
        if not bucket.take(now):
            self._count("rate_limited")
            return
        if msg.type == "hello":
            self._on_hello(identity, msg, now)
            return
        session = self._session_of(identity)
        if session is None:
            if msg.type != "bye":
                self._error(identity, msg.seq, "session", "no session for this connection: send hello "
                            "(the worker restarted or forgot an idle client)")
            return
        session.last_seen = now
        if msg.type == "bye":
            self._end_session(session, "client said bye")
        elif msg.type == "set_avatar":
            self._on_set_avatar(session, msg)
        elif msg.type == "upload_avatar":
            self._on_upload(session, msg)

    def _session_of(self, identity: bytes) -> _Session | None:
        sid = self._by_identity.get(identity)
        return None if sid is None else self._sessions.get(sid)

    # ---------------------------------------------------------------- sessions

    def _options_for(self, client_options: dict[str, Any]) -> dict[str, Any]:
        if not self.config.allow_client_options:
            return dict(self.config.engine_options)
        return {**client_options, **self.config.engine_options}

    def _new_engine(self, options: dict[str, Any]) -> Engine:
        if self._spare is not None and options == dict(self.config.engine_options):
            engine, self._spare = self._spare, None
            return engine
        return self._factory(self.config.engine, **options)

    def _on_hello(self, identity: bytes, msg: P.Message, now: float) -> None:
        f = msg.fields
        cfg = self.config
        if f["engine"] != cfg.engine:
            self._error(identity, msg.seq, "engine", f"this worker serves engine {cfg.engine!r}, not {f['engine']!r}: "
                        f"use --engine {cfg.engine} on the client, or start the worker with --engine {f['engine']}")
            return
        options = self._options_for(f["options"])
        session = self._sessions.get(f["session"])
        resumed = session is not None and session.options == options
        if session is not None and not resumed:
            self._end_session(session, "client changed engine options")
        if resumed:
            engine = session.engine
        else:
            self._sweep(now)
            if len(self._sessions) >= cfg.max_clients:
                self._count("busy")
                self._error(identity, msg.seq, "busy", f"the worker already serves {len(self._sessions)} clients "
                            f"(its limit, --max-clients {cfg.max_clients}): try again later or raise the limit")
                return
            try:
                engine = self._new_engine(options)
            except Exception as exc:
                log.warning("cannot create engine %s with %s: %s", cfg.engine, options, exc)
                self._error(identity, msg.seq, "engine", f"the worker cannot create engine {cfg.engine!r} with "
                            f"options {options}: {_describe(exc)}")
                return
        keypoints_ok = not getattr(engine, "reads_drive_pixels", True)
        if f["mode"] == "keypoints" and not keypoints_ok:
            if not resumed:
                engine.close()
            self._error(identity, msg.seq, "mode", f"engine {cfg.engine!r} (with these options) reads the driving "
                        "image, so it cannot run from keypoints alone: use --worker-mode frames")
            return
        if resumed:
            self._by_identity.pop(session.identity, None)
            session.identity = identity
            session.mode, session.codec, session.quality = f["mode"], f["codec"], f["quality"]
            session.pending = None
        else:
            session = _Session(session_id=f["session"], identity=identity, engine=engine, options=options,
                               mode=f["mode"], codec=f["codec"], quality=f["quality"],
                               max_fps=cfg.max_fps_per_client, now=now)
            self._sessions[session.id] = session
        self._by_identity[identity] = session.id
        session.last_seen = now
        self._count("sessions_resumed" if resumed else "sessions")
        log.info("client %s %s (%d/%d)", session.id[:8], "resumed" if resumed else "joined",
                 len(self._sessions), cfg.max_clients)
        crop = getattr(engine, "drive_crop_size", None)
        crop = crop if isinstance(crop, int) and not isinstance(crop, bool) and 8 <= crop <= P.MAX_FRAME_SIDE else None
        self._reply(identity, "welcome", msg.seq, {
            "session": session.id,
            "worker": self.instance,
            "resumed": resumed,
            "engine": cfg.engine,
            "options": _wire_options(options),
            "needs_landmarks": bool(getattr(engine, "needs_landmarks", False)),
            "keypoints": keypoints_ok,
            "crop_size": crop,
            "max_message_bytes": cfg.max_message_bytes,
            "max_fps": float(cfg.max_fps_per_client),
        })

    def _end_session(self, session: _Session, why: str) -> None:
        self._sessions.pop(session.id, None)
        if self._by_identity.get(session.identity) == session.id:
            del self._by_identity[session.identity]
        try:
            session.engine.close()
        except Exception:  # closing a broken engine must not take the worker down
            log.exception("engine close failed")
        log.info("client %s left: %s", session.id[:8], why)

    def _sweep(self, now: float) -> None:
        """Free the slots of clients that went silent, and forget idle connections' rate buckets."""
        self._last_sweep = now
        for s in list(self._sessions.values()):
            if now - s.last_seen > self.config.session_idle_s:
                self._end_session(s, f"idle for {now - s.last_seen:.0f} s")
        for ident, b in list(self._buckets.items()):
            if now - b.t > 60.0:
                del self._buckets[ident]

    # ---------------------------------------------------------------- avatars

    def _prepare(self, session: _Session, key: str, avatar: Avatar, seq: int) -> None:
        try:
            prepared = session.engine.prepare(avatar)
        except Exception as exc:
            log.warning("prepare failed for avatar %s: %s", avatar.name, exc)
            self._error(session.identity, seq, "prepare", f"the worker's engine cannot use avatar {avatar.name!r}: "
                        f"{_describe(exc)}", avatar=key)
            return
        session.prepared[key] = (avatar, prepared)
        while len(session.prepared) > PREPARED_PER_SESSION:
            session.prepared.popitem(last=False)
        self._reply(session.identity, "avatar_ready", seq, {"avatar": key})

    def _on_set_avatar(self, session: _Session, msg: P.Message) -> None:
        key = msg.fields["avatar"]
        if key in session.prepared:
            session.prepared.move_to_end(key)
            self._reply(session.identity, "avatar_ready", msg.seq, {"avatar": key})
            return
        avatar = self._avatars.get(key)
        if avatar is None:
            self._reply(session.identity, "need_upload", msg.seq, {"avatar": key})
        else:
            self._prepare(session, key, avatar, msg.seq)

    def _on_upload(self, session: _Session, msg: P.Message) -> None:
        f = msg.fields
        key = f["avatar"]
        self._count("uploads")
        try:
            if P.avatar_key(f, msg.payloads) != key:
                raise P.ProtocolError("schema", "upload_avatar: the avatar key is not the hash of its content")
            image = P.decode_image(msg.payloads[0], "png", f["width"], f["height"])
            points = P.unpack_points(msg.payloads[1], f["points"]) if f["points"] else np.zeros((0, 3), np.float32)
            if f["box"] is None and f["points"]:
                raise P.ProtocolError("schema", "upload_avatar: landmarks without a face box")
        except P.ProtocolError as exc:
            self._count(f"bad_{exc.code}")
            self._error(session.identity, msg.seq, exc.code, exc.message, avatar=key)
            return
        image.setflags(write=False)  # shared by every session's engine
        face = None if f["box"] is None else AvatarFace(landmarks=points, box=Box(*f["box"]))
        avatar = Avatar(name=f["name"], image=image, content_hash=f["content_hash"], face=face)
        self._avatars.put(key, avatar)
        self._prepare(session, key, avatar, msg.seq)

    # ---------------------------------------------------------------- frames

    def _on_frame(self, identity: bytes, msg: P.Message, now: float) -> None:
        session = self._session_of(identity)
        if session is None:
            self._error(identity, msg.seq, "session", "no session for this connection: send hello "
                        "(the worker restarted or forgot an idle client)")
            return
        session.last_seen = now
        self._count("frames")
        if msg.fields["encoding"] == "none" and session.mode != "keypoints":
            self._error(identity, msg.seq, "schema", "frame without pixels in a frames-mode session")
            return
        if not session.frames.take(now):
            self._count("rate_limited")
            self._reply(identity, "skipped", msg.seq, {
                "reason": "rate", "retry_after_ms": math.ceil(1000.0 / self.config.max_fps_per_client)})
            return
        if session.pending is not None:  # latest frame wins
            self._count("skipped")
            self._reply(identity, "skipped", session.pending.seq, {"reason": "superseded", "retry_after_ms": 0})
        session.calibrate = session.calibrate or msg.fields["calibrate"]
        session.pending = msg

    def _serve_round(self) -> None:
        """Render the pending frame of every client once, starting one client further each round."""
        ready = [s for s in self._sessions.values() if s.pending is not None]
        if not ready:
            return
        start = self._round % len(ready)
        self._round += 1
        for session in ready[start:] + ready[:start]:
            msg, session.pending = session.pending, None
            if msg is not None and session.id in self._sessions:
                self._render(session, msg)

    def _render(self, session: _Session, msg: P.Message) -> None:
        f = msg.fields
        key = f["avatar"]
        entry = session.prepared.get(key)
        if entry is None:
            self._error(session.identity, msg.seq, "avatar", f"avatar {key[:12]} is not set up in this session: "
                        "send set_avatar first", avatar=key)
            return
        avatar, prepared = entry
        try:
            if f["encoding"] == "none":
                image = np.zeros((f["height"], f["width"], 3), np.uint8)
                rest = msg.payloads
            else:
                image = P.decode_image(msg.payloads[0], f["encoding"], f["width"], f["height"])
                rest = msg.payloads[1:]
            landmarks = P.unpack_landmarks(f["landmarks"], rest[0] if rest else None)
        except P.ProtocolError as exc:
            self._count(f"bad_{exc.code}")
            self._error(session.identity, msg.seq, exc.code, exc.message)
            return
        drive = Drive(frame=Frame(image=image, index=f["index"], t_capture=f["t_capture"]),
                      box=Box(*f["box"]), landmarks=landmarks)
        calibrate, session.calibrate = session.calibrate, False
        t0 = time.perf_counter()
        try:
            if calibrate:
                session.engine.calibrate()
            out = session.engine.animate(prepared, drive)
        except Exception as exc:
            log.warning("engine failed on frame %d: %s", f["index"], exc, exc_info=not isinstance(exc, AvatarcamError))
            self._count("engine_errors")
            self._error(session.identity, msg.seq, "engine", f"engine {self.config.engine!r} failed: {_describe(exc)}")
            return
        worker_ms = (time.perf_counter() - t0) * 1000.0
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3):
            self._error(session.identity, msg.seq, "internal", f"engine returned {type(out).__name__} "
                        f"{getattr(out, 'shape', '')}, not an H x W x 3 uint8 image")
            return
        region = None
        payload = out
        if out.shape == avatar.image.shape:
            # Photo output: send only the rectangle that differs from the photo the client already has.
            changed = np.any(out != avatar.image, axis=2)
            rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
            if rows.size == 0:
                region = [0, 0, 1, 1]
            else:
                region = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
            x, y, w, h = region
            payload = out[y:y + h, x:x + w]
        data = P.encode_image(np.ascontiguousarray(payload), session.codec, session.quality)
        self._count("results")
        self._reply(session.identity, "result", msg.seq, {
            "avatar": key, "index": f["index"], "encoding": session.codec,
            "width": int(out.shape[1]), "height": int(out.shape[0]), "region": region, "worker_ms": worker_ms,
        }, (data,))

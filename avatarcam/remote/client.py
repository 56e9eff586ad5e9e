"""RemoteEngine: an :class:`~avatarcam.engines.base.Engine` that renders on a remote worker.

Live use (``pipelined=True``): ``animate`` never waits a round trip. Each call collects the
replies that have arrived, sends the new driving frame if fewer than ``max_inflight`` are
unanswered (else that frame is dropped: latest frame wins, no backlog), and returns the newest
result received. Only the first frame of an avatar may wait, up to ``timeout_s``. Whatever
happens to the worker or the network, ``animate`` returns an image: the last good result, or
the driver's own crop before there is one, and :attr:`RemoteEngine.status` says what is wrong.
The client reconnects by itself (a fresh socket, ``hello``, the avatar again when the worker
lost it).

Offline rendering (``pipelined=False`` or :meth:`RemoteEngine.animate_sync`): one request and
its reply per frame, every frame in order, so the video equals a local render; a worker that
cannot be reached within ``setup_timeout_s`` raises :class:`~avatarcam.errors.EngineError`
(a hole in a rendered video is worse than a clear stop).

No method may be called from two threads at once on the socket; an internal lock serialises
``prepare`` (e.g. an avatar switch from the hotkey thread) against ``animate``.
"""
from __future__ import annotations

import collections
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

import avatarcam
from avatarcam.avatars.types import Avatar
from avatarcam.engines.base import Drive, Engine
from avatarcam.errors import AvatarError, ConfigError, EngineError
from avatarcam.frame import check_rgb_image
from avatarcam.remote import protocol as P
from avatarcam.remote.transport import dealer_socket, endpoint, parse_address, read_server_public_key

log = logging.getLogger(__name__)

WARNING_SHOW_S = 5.0  # how long a transient problem stays in the status line
RETRY_S = 2.0  # pause before asking again after auth / busy / config refusals
CLIENT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # largest reply accepted (a full-photo PNG result)


@dataclass(frozen=True, eq=False)
class RemoteAvatar:
    """What :meth:`RemoteEngine.prepare` returns: the avatar as it travels, keyed by its content hash.
    ``image`` is the avatar photo (``H x W x 3`` uint8 RGB): results that change only the face
    region are pasted into it."""

    key: str
    name: str
    image: np.ndarray
    upload: P.Upload


@dataclass(frozen=True, eq=False)
class _Result:
    seq: int
    key: str
    index: int
    image: np.ndarray


def _wire_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Engine options as msgpack-safe values (paths as text, tuples as lists); ConfigError otherwise."""
    out: dict[str, Any] = {}
    for k, v in dict(options or {}).items():
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    try:
        P.SCHEMAS["hello"]["options"][0](out)
    except ValueError as exc:
        raise ConfigError(f"engine options {options} cannot be sent to a worker: {exc}") from None
    return out


class RemoteEngine(Engine):
    """Runs engine ``engine`` (with ``engine_options``) on the worker at ``address`` (``HOST:PORT``).

    ``token``: the worker's shared secret. ``mode``: ``"frames"`` sends the driving image (the
    face crop when the worker's engine declares ``drive_crop_size``, else the whole frame),
    ``"keypoints"`` sends only landmarks, box and frame size (engines with
    ``reads_drive_pixels = False``, e.g. mesh). ``codec``: ``"jpeg"`` (``jpeg_quality``) or
    ``"png"`` (lossless, for bit-exact renders) for images both ways. ``timeout_s``: a frame
    unanswered this long means the worker is gone (reconnect); ``setup_timeout_s``: the same for
    hello / avatar upload (engine creation on the worker can be slow). ``max_inflight``: frames
    sent and not yet answered. ``curve_server_key``: the worker's CURVE public key (Z85 text or
    its ``server.key`` file) when it runs with ``--curve-keys``. ``fallback_size``: side of the
    driver crop shown before the first result.
    """

    name = "remote"

    def __init__(
        self,
        *,
        address: str,
        token: str,
        engine: str = "mesh",
        engine_options: Mapping[str, Any] | None = None,
        jpeg_quality: int = 85,
        mode: str = "frames",
        codec: str = "jpeg",
        timeout_s: float = 3.0,
        setup_timeout_s: float = 30.0,
        pipelined: bool = True,
        max_inflight: int = 2,
        curve_server_key: str | bytes | None = None,
        fallback_size: int = 512,
    ) -> None:
        self._host, self._port = parse_address(address)
        self.address = address
        if not isinstance(token, str) or not token:
            raise ConfigError("the worker token is empty: pass --token (or set AVATARCAM_TOKEN) with the token "
                              "the worker was started with")
        if mode not in P.MODES:
            raise ConfigError(f"worker mode must be one of {P.MODES}, got {mode!r}")
        if codec not in P.CODECS:
            raise ConfigError(f"codec must be one of {P.CODECS}, got {codec!r}")
        if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if not (math.isfinite(setup_timeout_s) and setup_timeout_s >= timeout_s):
            raise ConfigError(f"setup_timeout_s must be >= timeout_s ({timeout_s}), got {setup_timeout_s!r}")
        if not 1 <= max_inflight <= 4:
            raise ConfigError(f"max_inflight must be in 1..4, got {max_inflight!r}")
        self.token = token
        self.engine = engine
        self.engine_options = _wire_options(engine_options)
        self.mode, self.codec, self.jpeg_quality = mode, codec, jpeg_quality
        self.timeout_s, self.setup_timeout_s = float(timeout_s), float(setup_timeout_s)
        self.pipelined, self.max_inflight, self.fallback_size = pipelined, max_inflight, fallback_size
        if isinstance(curve_server_key, str):
            curve_server_key = read_server_public_key(curve_server_key)
        self._curve_key = curve_server_key
        # The tracker runs on this machine: it is needed when the remote engine (looked up locally,
        # not instantiated) wants landmarks, and always in keypoints mode.
        self.needs_landmarks = mode == "keypoints" or _engine_needs_landmarks(engine)

        self._ctx = zmq.Context()
        self._lock = threading.RLock()
        self._session = secrets.token_hex(16)  # kept across reconnects: the worker resumes our state
        self._sock: zmq.Socket | None = None
        self._seq = 0
        self._pending: dict[int, tuple[str, float, str | None]] = {}  # seq -> (type, sent at, avatar key)
        self._welcome: dict[str, Any] | None = None
        self._worker_instance: str | None = None
        self._phase = "connecting"  # connecting | connected | down | auth | busy | error
        self._problem = ""
        self._retry_at = 0.0
        self._avatars: dict[str, RemoteAvatar] = {}
        self._avatar_state: dict[str, str] = {}  # key -> asked | uploading | ready | failed
        self._avatar_problem: dict[str, str] = {}
        self._current: str | None = None
        self._latest: _Result | None = None
        self._frame_errors: dict[int, str] = {}
        self._waited: set[str] = set()
        self._calibrate = False
        self._rate_until = 0.0
        self._t_start = time.perf_counter()
        self._last_rx: float | None = None
        self._warning = ("", 0.0)
        self._rtt: collections.deque[float] = collections.deque(maxlen=256)
        self._worker_ms: collections.deque[float] = collections.deque(maxlen=256)
        self._counts = collections.Counter[str]()
        self._closed = False

    # ---------------------------------------------------------------- public API

    def connect(self, timeout_s: float | None = None) -> None:
        """Wait until the worker accepted this client; raise :class:`EngineError` with the reason
        (wrong token, engine/mode refused, client limit, no answer) otherwise. Optional: the CLI
        calls it to fail early; ``animate`` connects by itself."""
        timeout_s = self.setup_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            deadline = time.perf_counter() + timeout_s
            while True:
                now = time.perf_counter()
                self._step(now)
                if self._welcome is not None:
                    return
                if self._phase in ("auth", "busy", "error"):
                    raise EngineError(self._refusal())
                if now >= deadline:
                    raise EngineError(self._no_answer(timeout_s))
                self._pump(min(0.05, deadline - now))

    def prepare(self, avatar: Avatar) -> RemoteAvatar:
        """Encode ``avatar`` for upload (lossless PNG + landmarks + box) and register it with the
        worker (uploaded only if the worker has not seen this content). Never waits for the worker."""
        image = check_rgb_image(avatar.image, "avatar image")
        h, w = image.shape[:2]
        if max(h, w) > P.MAX_AVATAR_SIDE:
            raise AvatarError(f"avatar {avatar.name!r} is {w}x{h}, larger than a worker accepts "
                              f"({P.MAX_AVATAR_SIDE} px a side): use a smaller photo")
        face = avatar.face
        n = 0 if face is None else int(face.landmarks.shape[0])
        if n > P.MAX_POINTS:
            raise AvatarError(f"avatar {avatar.name!r} has {n} landmarks, a worker accepts {P.MAX_POINTS}")
        fields = {
            "name": avatar.name[:256], "content_hash": avatar.content_hash[:128], "width": w, "height": h,
            "box": None if face is None else P.box_fields(face.box), "points": n,
        }
        payloads = (P.encode_image(image, "png"),) + ((P.pack_points(face.landmarks),) if n else ())
        key = P.avatar_key(fields, payloads)
        prepared = RemoteAvatar(key=key, name=avatar.name, image=image, upload=P.Upload(fields, payloads))
        with self._lock:
            self._avatars[key] = prepared
            try:
                self._step(time.perf_counter())
                self._ask(key)
            except Exception as exc:  # registering early is an optimisation: animate retries
                log.warning("could not register avatar %s with the worker yet: %s", avatar.name, exc)
        return prepared

    def animate(self, prepared: RemoteAvatar, drive: Drive) -> np.ndarray:
        """The newest rendered frame (``H x W x 3`` uint8 RGB) after sending ``drive`` (pipelined),
        or, with ``pipelined=False``, exactly the render of ``drive`` (see :meth:`animate_sync`).

        Pipelined, this never raises: on trouble it returns the last good result, or the driver
        crop (``fallback_size``) before the first one, and :attr:`status` explains."""
        if not self.pipelined:
            return self.animate_sync(prepared, drive)
        with self._lock:
            try:
                now = time.perf_counter()
                self._current = prepared.key
                self._avatars.setdefault(prepared.key, prepared)
                self._step(now)
                self._submit(prepared, drive, now, count_drop=True)
                if prepared.key not in self._waited and not self._have_result(prepared.key):
                    self._waited.add(prepared.key)  # only the first frame of an avatar may wait
                    self._wait_first(prepared, drive)
            except Exception as exc:  # a live call must keep its picture whatever breaks here
                log.exception("remote engine error")
                self._warn(f"client error: {type(exc).__name__}: {exc}")
            latest = self._latest
        return latest.image.copy() if latest is not None else drive.crop(self.fallback_size)

    def animate_sync(self, prepared: RemoteAvatar, drive: Drive) -> np.ndarray:
        """Render exactly ``drive``: one request, wait for its reply (reconnecting as needed).

        Raises :class:`EngineError` when the worker refuses (token, engine, avatar, a failing
        engine) or gives no result within ``setup_timeout_s``."""
        key = prepared.key
        with self._lock:
            self._current = key
            self._avatars.setdefault(key, prepared)
            deadline = time.perf_counter() + self.setup_timeout_s
            seq: int | None = None
            while True:
                now = time.perf_counter()
                self._step(now)
                if self._phase in ("auth", "busy", "error"):
                    raise EngineError(self._refusal())
                if self._avatar_state.get(key) == "failed":
                    raise EngineError(self._avatar_problem.get(key, f"the worker refused avatar {prepared.name!r}"))
                if seq is not None:
                    if self._latest is not None and self._latest.seq == seq:
                        return self._latest.image.copy()
                    if seq in self._frame_errors:
                        raise EngineError(f"the worker failed on frame {drive.frame.index}: {self._frame_errors[seq]}")
                    if seq not in self._pending:  # skipped (rate) or lost in a reconnect: send again
                        seq = None
                if seq is None:
                    seq = self._submit(prepared, drive, now, count_drop=False)
                if now >= deadline:
                    raise EngineError(f"no result for frame {drive.frame.index} from the worker at {self.address} "
                                      f"within {self.setup_timeout_s:.0f} s ({self.status})")
                self._pump(min(0.05, deadline - now))

    def calibrate(self) -> None:
        """The next frame sent is the neutral reference (the flag travels with that frame)."""
        with self._lock:
            self._calibrate = True

    @property
    def status(self) -> str:
        """One line for the preview: ``connected``, ``connecting to ...``, ``reconnecting: worker not
        answering for 3.2 s``, ``auth failed: wrong token ...``, ``error: ...`` (+ a recent warning)."""
        now = time.perf_counter()
        phase = self._phase
        if phase == "connected":
            text = "connected"
            recent = list(self._rtt)[-30:]
            if recent and float(np.median(recent)) > 250.0:
                text += f" (slow network: rtt {float(np.median(recent)):.0f} ms)"
        elif phase == "connecting":
            text = f"connecting to {self.address} ({now - self._t_start:.1f} s)"
        elif phase == "down":
            since = self._last_rx if self._last_rx is not None else self._t_start
            text = f"reconnecting: worker not answering for {now - since:.1f} s"
        elif phase == "auth":
            text = f"auth failed: wrong token (the worker at {self.address} rejected it)"
        elif phase == "busy":
            text = f"worker busy: {self._problem}"
        else:
            text = f"error: {self._problem}"
        if self._current is not None and self._avatar_state.get(self._current) == "failed":
            text += f"; {self._avatar_problem.get(self._current, 'avatar refused')}"
        warning, t = self._warning
        if warning and now - t < WARNING_SHOW_S:
            text += f"; {warning}"
        return text

    def stats(self) -> dict[str, Any]:
        """Counters for the stats overlay: ``status``, ``rtt_ms_p50``/``rtt_ms_p95`` (send to result,
        None before any), ``worker_ms_p50`` (engine time on the worker), ``sent``, ``received``,
        ``dropped`` (not sent, skipped by the worker or lost), ``bytes_sent``, ``bytes_received``,
        ``in_flight``."""
        rtt = np.array(self._rtt) if self._rtt else None
        wms = np.array(self._worker_ms) if self._worker_ms else None
        c = self._counts
        return {
            "status": self.status,
            "rtt_ms_p50": None if rtt is None else float(np.percentile(rtt, 50)),
            "rtt_ms_p95": None if rtt is None else float(np.percentile(rtt, 95)),
            "worker_ms_p50": None if wms is None else float(np.percentile(wms, 50)),
            "sent": c["sent"], "received": c["received"], "dropped": c["dropped"],
            "bytes_sent": c["bytes_sent"], "bytes_received": c["bytes_received"],
            "in_flight": sum(1 for t, _, _ in self._pending.values() if t == "frame"),
        }

    def close(self) -> None:
        """Say bye (frees the worker's slot at once) and release the socket. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._sock is not None:
                if self._welcome is not None:
                    try:
                        self._sock.send_multipart(P.pack("bye", self._next_seq(), token=self.token), zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
                self._sock.close(linger=200)  # long enough for the bye on a live connection
                self._sock = None
            self._ctx.term()

    # ---------------------------------------------------------------- connection upkeep

    def _step(self, now: float) -> None:
        """Read what arrived, detect a silent worker, (re)send hello when due."""
        if self._closed:
            raise EngineError("the remote engine is closed")
        if self._sock is None:
            self._new_socket()
        self._pump(0.0)
        if self._pending:
            typ, sent, _ = min(self._pending.values(), key=lambda p: p[1])
            limit = self.timeout_s if typ == "frame" else self.setup_timeout_s
            if now - sent > limit:
                self._counts["dropped"] += sum(1 for t, _, _ in self._pending.values() if t == "frame")
                self._warn(f"no reply for {now - sent:.1f} s: new connection")
                if self._phase == "connected":
                    self._phase = "down"
                self._new_socket()
        if self._welcome is None and now >= self._retry_at and not self._hello_pending():
            self._send_hello(now)

    def _new_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        sock = dealer_socket(self._ctx, max_message_bytes=CLIENT_MAX_MESSAGE_BYTES,
                             curve_server_key=self._curve_key)
        if ":" in self._host:
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(endpoint(self._host, self._port))
        self._sock = sock
        self._pending.clear()
        self._welcome = None
        # Replies to set_avatar / upload_avatar on the old socket are lost: ask again after hello.
        for key, state in list(self._avatar_state.items()):
            if state in ("asked", "uploading"):
                del self._avatar_state[key]

    def _hello_pending(self) -> bool:
        return any(t == "hello" for t, _, _ in self._pending.values())

    def _send_hello(self, now: float) -> None:
        seq = self._send("hello", {
            "session": self._session, "engine": self.engine, "options": self.engine_options, "mode": self.mode,
            "codec": self.codec, "quality": self.jpeg_quality, "client": f"avatarcam {avatarcam.__version__}",
        })
        if seq is None:  # no connection yet (or any more): try again shortly
            self._retry_at = now + 0.05

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, type_: str, fields: dict[str, Any] | None = None, payloads: tuple[bytes, ...] = (),
              key: str | None = None) -> int | None:
        """Send one request without blocking; its seq, or None when there is no live connection."""
        seq = self._next_seq()
        frames = P.pack(type_, seq, fields, payloads, token=self.token)
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            if self._phase == "connected":
                self._phase = "down"
            return None
        self._counts["bytes_sent"] += sum(len(f) for f in frames)
        self._pending[seq] = (type_, time.perf_counter(), key)
        return seq

    def _pump(self, timeout_s: float) -> None:
        """Dispatch every reply already here, waiting up to ``timeout_s`` for the first one."""
        if self._sock is None or not self._sock.poll(max(0, int(timeout_s * 1000))):
            return
        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(parts)

    def _warn(self, text: str) -> None:
        self._warning = (text, time.perf_counter())

    def _refusal(self) -> str:
        if self._phase == "auth":
            return (f"the worker at {self.address} rejected the token: pass the token the worker was started "
                    "with (--token, or the AVATARCAM_TOKEN environment variable)")
        return self._problem

    def _no_answer(self, waited: float) -> str:
        hint = ("is --worker-key the public key of the worker's --curve-keys?" if self._curve_key is not None
                else "if the worker runs with --curve-keys, pass its public key with --worker-key")
        return (f"no answer from the worker at {self.address} within {waited:.0f} s: is `avatarcam serve` running "
                f"there, is the address right and the port open in its firewall? ({hint})")

    # ---------------------------------------------------------------- replies

    def _dispatch(self, parts: list[bytes]) -> None:
        now = time.perf_counter()
        self._counts["bytes_received"] += sum(len(p) for p in parts)
        try:
            msg = P.unpack(parts, allowed=P.REPLIES, max_bytes=CLIENT_MAX_MESSAGE_BYTES)
        except P.ProtocolError as exc:
            self._counts["malformed"] += 1
            self._warn(f"malformed reply from the worker ignored ({exc.message})")
            return
        self._last_rx = now
        entry = self._pending.pop(msg.seq, None)
        handler = getattr(self, f"_on_{msg.type}")
        try:
            handler(msg, entry, now)
        except P.ProtocolError as exc:
            self._counts["malformed"] += 1
            self._warn(f"malformed {msg.type} from the worker ignored ({exc.message})")

    def _on_welcome(self, msg: P.Message, entry: Any, now: float) -> None:
        f = msg.fields
        if f["session"] != self._session:
            raise P.ProtocolError("schema", "welcome for another session")
        if not f["resumed"] or f["worker"] != self._worker_instance:
            self._avatar_state.clear()  # a new session or a restarted worker knows none of our avatars
            self._avatar_problem.clear()
        self._welcome = f
        self._worker_instance = f["worker"]
        self._phase, self._problem = "connected", ""
        self.needs_landmarks = self.needs_landmarks or f["needs_landmarks"]
        if self._current is not None:
            self._ask(self._current)

    def _ask(self, key: str) -> None:
        """Tell the worker which avatar comes next (it answers ready, or asks for the upload)."""
        if self._welcome is not None and key not in self._avatar_state:
            if self._send("set_avatar", {"avatar": key}, key=key) is not None:
                self._avatar_state[key] = "asked"

    def _on_need_upload(self, msg: P.Message, entry: Any, now: float) -> None:
        key = msg.fields["avatar"]
        avatar = self._avatars.get(key)
        if avatar is None or self._welcome is None:
            return
        limit = self._welcome["max_message_bytes"]
        if avatar.upload.nbytes > limit:
            self._avatar_state[key] = "failed"
            self._avatar_problem[key] = (f"avatar {avatar.name!r} is {avatar.upload.nbytes / 1e6:.1f} MB as PNG, over "
                                         f"the worker's message limit of {limit / 1e6:.1f} MB: use a smaller photo")
            return
        if self._send("upload_avatar", {"avatar": key, **avatar.upload.fields}, avatar.upload.payloads,
                      key=key) is not None:
            self._avatar_state[key] = "uploading"
        else:
            self._avatar_state.pop(key, None)

    def _on_avatar_ready(self, msg: P.Message, entry: Any, now: float) -> None:
        self._avatar_state[msg.fields["avatar"]] = "ready"

    def _on_result(self, msg: P.Message, entry: Any, now: float) -> None:
        f = msg.fields
        w, h = f["width"], f["height"]
        region = f["region"]
        if region is None:
            image = P.decode_image(msg.payloads[0], f["encoding"], w, h)
        else:
            avatar = self._avatars.get(f["avatar"])
            x, y, rw, rh = region
            if avatar is None or avatar.image.shape != (h, w, 3) or x + rw > w or y + rh > h:
                raise P.ProtocolError("schema", "result region does not fit the avatar photo")
            image = avatar.image.copy()
            image[y:y + rh, x:x + rw] = P.decode_image(msg.payloads[0], f["encoding"], rw, rh)
        if entry is not None:
            self._rtt.append((now - entry[1]) * 1000.0)
        self._worker_ms.append(f["worker_ms"])
        self._counts["received"] += 1
        if self._latest is None or msg.seq > self._latest.seq:
            self._latest = _Result(msg.seq, f["avatar"], f["index"], image)

    def _on_skipped(self, msg: P.Message, entry: Any, now: float) -> None:
        self._counts["dropped"] += 1
        if msg.fields["reason"] == "rate":
            self._rate_until = now + msg.fields["retry_after_ms"] / 1000.0
            self._warn("the worker's frame rate limit is slowing this client")

    def _on_error(self, msg: P.Message, entry: Any, now: float) -> None:
        code, text = msg.fields["code"], msg.fields["message"]
        typ = entry[0] if entry is not None else None
        key = msg.fields.get("avatar")
        self._counts["errors"] += 1
        if typ == "frame":
            self._counts["dropped"] += 1
        if code == "auth":
            self._refused("auth", text, now)
        elif code in ("busy", "version", "mode") or (code == "engine" and typ == "hello"):
            self._refused("busy" if code == "busy" else "error", text, now)
        elif code == "session":
            if self._welcome is not None:  # the worker restarted or dropped us: start over
                self._welcome = None
                self._phase = "down" if self._phase == "connected" else self._phase
                self._warn("worker lost our session: reconnecting")
            if not self._hello_pending():
                self._send_hello(now)
        elif code == "avatar" and key is not None:
            self._avatar_state.pop(key, None)  # forgotten on the worker: ask again
        elif code == "rate":
            self._rate_until = now + 0.5
            self._warn("rate limited by the worker")
        elif code != "prepare":  # schema / too_large / internal / engine failure on one frame
            self._warn(f"worker: {text}")
        akey = entry[2] if entry is not None else key
        if typ in ("set_avatar", "upload_avatar") and akey is not None:
            if code in ("prepare", "schema", "too_large"):  # sending it again would fail again
                self._avatar_state[akey] = "failed"
                self._avatar_problem[akey] = text
            else:  # lost to a reconnect, the rate limit, ...: ask again with the next frame
                self._avatar_state.pop(akey, None)
        if typ == "frame" and code in ("engine", "schema", "too_large", "internal"):
            self._frame_errors[msg.seq] = f"{code}: {text}"
            while len(self._frame_errors) > 64:
                self._frame_errors.pop(next(iter(self._frame_errors)))

    def _refused(self, phase: str, text: str, now: float) -> None:
        self._phase, self._problem = phase, text
        self._welcome = None
        self._retry_at = now + RETRY_S
        for seq, (t, _, _) in list(self._pending.items()):
            if t == "frame":
                del self._pending[seq]

    # ---------------------------------------------------------------- frames

    def _have_result(self, key: str) -> bool:
        return self._latest is not None and self._latest.key == key

    def _submit(self, prepared: RemoteAvatar, drive: Drive, now: float, *, count_drop: bool) -> int | None:
        """Send ``drive`` when the connection, the avatar, the in-flight limit and the rate allow."""
        key = prepared.key
        self._ask(key)
        in_flight = sum(1 for t, _, _ in self._pending.values() if t == "frame")
        if (self._welcome is None or self._avatar_state.get(key) != "ready" or in_flight >= self.max_inflight
                or now < self._rate_until):
            if count_drop:
                self._counts["dropped"] += 1
            return None
        fields, payloads = self._frame_message(key, drive)
        seq = self._send("frame", fields, payloads, key=key)
        if seq is None:
            if count_drop:
                self._counts["dropped"] += 1
            return None
        self._calibrate = False
        self._counts["sent"] += 1
        return seq

    def _wait_first(self, prepared: RemoteAvatar, drive: Drive) -> None:
        deadline = time.perf_counter() + self.timeout_s
        while True:
            now = time.perf_counter()
            if self._have_result(prepared.key) or now >= deadline or self._phase in ("auth", "busy", "error"):
                return
            if self._avatar_state.get(prepared.key) == "failed":
                return
            self._pump(min(0.02, deadline - now))
            now = time.perf_counter()
            self._step(now)
            if not any(t == "frame" for t, _, _ in self._pending.values()):
                self._submit(prepared, drive, now, count_drop=False)

    def _frame_message(self, key: str, drive: Drive) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        frame = drive.frame
        image: np.ndarray | None = None
        if self.mode == "keypoints":
            (w, h), box = frame.size, P.box_fields(drive.box)
            meta, points = P.pack_landmarks(drive.landmarks)
        else:
            crop = self._welcome["crop_size"]
            if crop:
                # The engine reads only this crop: send it, with the landmarks mapped into it.
                image, w, h, box = drive.crop(crop), crop, crop, [crop / 2.0, crop / 2.0, float(crop)]
                s = crop / drive.box.side
                meta, points = P.pack_landmarks(drive.landmarks, scale=s, dx=-drive.box.x0 * s,
                                                dy=-drive.box.y0 * s, image_size=(crop, crop))
            else:
                image, (w, h), box = frame.image, frame.size, P.box_fields(drive.box)
                meta, points = P.pack_landmarks(drive.landmarks)
        fields = {
            "avatar": key, "index": int(frame.index), "t_capture": float(frame.t_capture), "width": w, "height": h,
            "encoding": "none" if image is None else self.codec, "box": box, "landmarks": meta,
            "calibrate": self._calibrate,
        }
        payloads = []
        if image is not None:
            payloads.append(P.encode_image(image, self.codec, self.jpeg_quality))
        if points is not None:
            payloads.append(points)
        return fields, tuple(payloads)


def _engine_needs_landmarks(name: str) -> bool:
    from avatarcam.engines import engine_class

    try:
        return bool(engine_class(name).needs_landmarks)
    except Exception:  # engine code not installed here: run the tracker to be safe
        return True

"""The wire format between :class:`RemoteEngine` and the worker: versioned, explicit, no pickle.

A message is a ZeroMQ multipart message ``[header, *payloads]``:

- ``header``: a msgpack map with ``v`` (:data:`PROTOCOL_VERSION`), ``type``, ``seq`` (the
  request's number; replies echo it), ``token`` (requests only) and the typed fields of that
  type. Only msgpack's plain types are accepted (nil, bool, int, float, str, bin, array, map);
  every field is checked for type and range, unknown fields are refused.
- ``payloads``: raw bytes whose number and meaning the header fixes: encoded images (PNG or
  JPEG) and landmark arrays (little-endian float32, ``N x 3``, faces one after another).

Requests (client -> worker): ``hello``, ``set_avatar``, ``upload_avatar``, ``frame``, ``bye``.
Replies (worker -> client): ``welcome``, ``need_upload``, ``avatar_ready``, ``result``,
``skipped``, ``error``. Every request is answered exactly once, except ``bye``.

Bump :data:`PROTOCOL_VERSION` whenever a field changes meaning; both sides refuse other versions
with an error that names both numbers.
"""
from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import msgpack
import numpy as np

from avatarcam.geometry import Box
from avatarcam.landmarks.types import FaceLandmarks, LandmarkResult

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOADS = 2
MAX_FRAME_SIDE = 4096  # driving frames and results
MAX_AVATAR_SIDE = 8192
MAX_FACES = 8
MAX_POINTS = 1000  # per face (MediaPipe: 478)
MAX_OPTIONS = 32
MAX_SEQ = 2**62

MODES = ("frames", "keypoints")
CODECS = ("jpeg", "png")
ENCODINGS = ("jpeg", "png", "none")  # "none": keypoints mode, the frame carries no pixels

REQUESTS = ("hello", "set_avatar", "upload_avatar", "frame", "bye")
REPLIES = ("welcome", "need_upload", "avatar_ready", "result", "skipped", "error")

#: Error codes of ``error`` replies (the client decides what to do from the code alone).
ERROR_CODES = (
    "version",    # other protocol version
    "schema",     # malformed message (bad field, type, range, payload count, image)
    "too_large",  # over the worker's message size limit
    "auth",       # wrong token
    "rate",       # over the per-client message rate
    "busy",       # the worker serves its maximum number of clients
    "session",    # no session for this client: send hello (the worker may have restarted)
    "mode",       # keypoints mode asked for an engine that reads the driving pixels
    "engine",     # wrong engine name, engine cannot be created, or animate failed
    "avatar",     # the frame names an avatar this session has not set up
    "prepare",    # the engine refused the avatar (e.g. no face)
    "internal",   # a bug in the worker; the message says what
)


class ProtocolError(Exception):
    """A message that breaks the schema. ``code`` is one of :data:`ERROR_CODES`; ``seq`` is the
    message's sequence number when it could be read (-1 otherwise)."""

    def __init__(self, code: str, message: str, seq: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq


@dataclass(frozen=True)
class Message:
    """A decoded, validated message. ``fields`` holds the typed fields (not ``v``/``type``/``seq``/
    ``token``); ``payloads`` the raw binary parts in the order the schema gives."""

    type: str
    seq: int
    fields: dict[str, Any]
    payloads: tuple[bytes, ...] = ()
    token: str | None = None


# --------------------------------------------------------------------------------------------
# Field validators: each takes the raw msgpack value and returns it normalised, or raises
# ValueError with what is wrong (turned into a ProtocolError naming the field).


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(x: Any) -> int:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"expected an integer, got {type(x).__name__}")
        if not lo <= x <= hi:
            raise ValueError(f"{x} is outside [{lo}, {hi}]")
        return x

    return check


def _float(lo: float = -1e9, hi: float = 1e9) -> Callable[[Any], float]:
    def check(x: Any) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"expected a number, got {type(x).__name__}")
        x = float(x)
        if not (math.isfinite(x) and lo <= x <= hi):
            raise ValueError(f"{x} is not finite or outside [{lo}, {hi}]")
        return x

    return check


def _bool(x: Any) -> bool:
    if not isinstance(x, bool):
        raise ValueError(f"expected true/false, got {type(x).__name__}")
    return x


def _str(max_len: int, *, choices: Sequence[str] | None = None, pattern: str | None = None,
         ) -> Callable[[Any], str]:
    rx = re.compile(pattern) if pattern else None

    def check(x: Any) -> str:
        if not isinstance(x, str):
            raise ValueError(f"expected a string, got {type(x).__name__}")
        if len(x) > max_len:
            raise ValueError(f"string of {len(x)} characters, at most {max_len} allowed")
        if choices is not None and x not in choices:
            raise ValueError(f"{x!r} is not one of {list(choices)}")
        if rx is not None and not rx.fullmatch(x):
            raise ValueError(f"{x!r} is not of the form {pattern}")
        return x

    return check


def _nullable(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(x: Any) -> Any:
        return None if x is None else inner(x)

    return check


def _float_list(n: int, lo: float = -1e9, hi: float = 1e9) -> Callable[[Any], tuple[float, ...]]:
    item = _float(lo, hi)

    def check(x: Any) -> tuple[float, ...]:
        if not isinstance(x, list) or len(x) != n:
            raise ValueError(f"expected a list of {n} numbers")
        return tuple(item(v) for v in x)

    return check


def _int_list(n: int, lo: int, hi: int) -> Callable[[Any], tuple[int, ...]]:
    item = _int(lo, hi)

    def check(x: Any) -> tuple[int, ...]:
        if not isinstance(x, list) or len(x) != n:
            raise ValueError(f"expected a list of {n} integers")
        return tuple(item(v) for v in x)

    return check


_OPTION_NAME = _str(64, pattern=r"[A-Za-z_][A-Za-z0-9_]*")


def _option_scalar(x: Any) -> Any:
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, int):
        return _int(-(2**53), 2**53)(x)
    if isinstance(x, float):
        return _float(-1e12, 1e12)(x)
    if isinstance(x, str):
        return _str(256)(x)
    raise ValueError(f"option values must be null, bool, int, float or str, got {type(x).__name__}")


def _options(x: Any) -> dict[str, Any]:
    """Engine options: a flat map of names to scalars or short lists of scalars (lists -> tuples)."""
    if not isinstance(x, dict):
        raise ValueError(f"expected a map, got {type(x).__name__}")
    if len(x) > MAX_OPTIONS:
        raise ValueError(f"{len(x)} options, at most {MAX_OPTIONS} allowed")
    out: dict[str, Any] = {}
    for k, v in x.items():
        _OPTION_NAME(k)
        if isinstance(v, list):
            if len(v) > 16:
                raise ValueError(f"option {k}: list of {len(v)} values, at most 16 allowed")
            out[k] = tuple(_option_scalar(i) for i in v)
        else:
            out[k] = _option_scalar(v)
    return out


def _faces(x: Any) -> tuple[tuple[int, float], ...]:
    if not isinstance(x, list) or len(x) > MAX_FACES:
        raise ValueError(f"expected a list of at most {MAX_FACES} faces")
    out = []
    for f in x:
        if not isinstance(f, list) or len(f) != 2:
            raise ValueError("each face must be [number of points, score]")
        out.append((_int(1, MAX_POINTS)(f[0]), _float()(f[1])))
    return tuple(out)


_LANDMARK_FIELDS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "image_size": (_int_list(2, 1, MAX_AVATAR_SIDE), True),
    "timestamp_ms": (_int(-(2**62), 2**62), True),
    "faces": (_faces, True),
}


def _landmarks(x: Any) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise ValueError(f"expected a map, got {type(x).__name__}")
    return _check_fields(x, _LANDMARK_FIELDS, "landmarks.")


_KEY = _str(64, pattern=r"[0-9a-f]{64}")
_SESSION = _str(64, pattern=r"[0-9a-f]{16,64}")
_NAME = _str(256)
_BOX = _float_list(3, -1e6, 1e6)

# type -> {field: (validator, required)}
SCHEMAS: dict[str, dict[str, tuple[Callable[[Any], Any], bool]]] = {
    # ---- requests
    "hello": {
        "session": (_SESSION, True),
        "engine": (_str(64), True),
        "options": (_options, True),
        "mode": (_str(16, choices=MODES), True),
        "codec": (_str(8, choices=CODECS), True),
        "quality": (_int(1, 100), True),
        "client": (_str(64), False),
    },
    "set_avatar": {"avatar": (_KEY, True)},
    "upload_avatar": {
        "avatar": (_KEY, True),
        "name": (_NAME, True),
        "content_hash": (_str(128), True),
        "width": (_int(1, MAX_AVATAR_SIDE), True),
        "height": (_int(1, MAX_AVATAR_SIDE), True),
        "box": (_nullable(_BOX), True),  # None: no face known
        "points": (_int(0, MAX_POINTS), True),
    },
    "frame": {
        "avatar": (_KEY, True),
        "index": (_int(-(2**62), 2**62), True),
        "t_capture": (_float(-1e12, 1e12), True),
        "width": (_int(1, MAX_FRAME_SIDE), True),
        "height": (_int(1, MAX_FRAME_SIDE), True),
        "encoding": (_str(8, choices=ENCODINGS), True),
        "box": (_BOX, True),
        "landmarks": (_nullable(_landmarks), True),
        "calibrate": (_bool, True),
    },
    "bye": {},
    # ---- replies
    "welcome": {
        "session": (_SESSION, True),
        "worker": (_str(64), True),
        "resumed": (_bool, True),
        "engine": (_str(64), True),
        "options": (_options, True),
        "needs_landmarks": (_bool, True),
        "keypoints": (_bool, True),
        "crop_size": (_nullable(_int(8, MAX_FRAME_SIDE)), True),
        "max_message_bytes": (_int(1, 2**40), True),
        "max_fps": (_float(0.0, 1e6), True),
    },
    "need_upload": {"avatar": (_KEY, True)},
    "avatar_ready": {"avatar": (_KEY, True)},
    "result": {
        "avatar": (_KEY, True),
        "index": (_int(-(2**62), 2**62), True),
        "encoding": (_str(8, choices=CODECS), True),
        "width": (_int(1, MAX_AVATAR_SIDE), True),
        "height": (_int(1, MAX_AVATAR_SIDE), True),
        # [x, y, w, h]: the output is the avatar photo with this rectangle replaced by the payload
        "region": (_nullable(_int_list(4, 0, MAX_AVATAR_SIDE)), True),
        "worker_ms": (_float(0.0, 1e9), True),
    },
    "skipped": {
        "reason": (_str(16, choices=("superseded", "rate")), True),
        "retry_after_ms": (_int(0, 60_000), True),
    },
    "error": {
        "code": (_str(16, choices=ERROR_CODES), True),
        "message": (_str(2000), True),
        "avatar": (_nullable(_KEY), False),
    },
}


def _check_fields(raw: Mapping[str, Any], schema: Mapping[str, tuple[Callable[[Any], Any], bool]],
                  prefix: str = "") -> dict[str, Any]:
    unknown = set(raw) - set(schema)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(map(str, unknown))}")
    out: dict[str, Any] = {}
    for name, (check, required) in schema.items():
        if name not in raw:
            if required:
                raise ValueError(f"missing field {prefix}{name!r}")
            continue
        try:
            out[name] = check(raw[name])
        except ValueError as exc:
            raise ValueError(f"field {prefix}{name!r}: {exc}") from None
    return out


def expected_payloads(type_: str, fields: Mapping[str, Any]) -> int:
    """How many binary parts follow the header of a message of this type."""
    if type_ == "upload_avatar":
        return 1 + (fields["points"] > 0)
    if type_ == "frame":
        lm = fields["landmarks"]
        return (fields["encoding"] != "none") + (lm is not None and len(lm["faces"]) > 0)
    if type_ == "result":
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# Packing and unpacking


def pack(type_: str, seq: int, fields: Mapping[str, Any] | None = None, payloads: Sequence[bytes] = (),
         token: str | None = None) -> list[bytes]:
    """Build the multipart frames of one message (the sender's own fields are trusted)."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": type_, "seq": seq}
    if token is not None:
        header["token"] = token
    if fields:
        header.update(fields)
    return [msgpack.packb(header, use_bin_type=True), *payloads]


def unpack(parts: Sequence[bytes], *, allowed: Sequence[str], max_bytes: int) -> Message:
    """Decode and validate one message whose type must be in ``allowed``.

    Raises :class:`ProtocolError` (with the message's ``seq`` when it could be read) for anything
    that is not exactly a message of the schema: too many parts, too large, not msgpack, another
    protocol version, unknown type or fields, values out of range, wrong payload count or size.
    """
    if not parts:
        raise ProtocolError("schema", "empty message")
    if len(parts) > 1 + MAX_PAYLOADS:
        raise ProtocolError("schema", f"{len(parts)} message parts, at most {1 + MAX_PAYLOADS} allowed")
    total = sum(len(p) for p in parts)
    if total > max_bytes:
        raise ProtocolError("too_large", f"message of {total} bytes, the limit is {max_bytes}")
    if len(parts[0]) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {len(parts[0])} bytes, the limit is {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            parts[0], raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_HEADER_BYTES, max_bin_len=0, max_array_len=4096, max_map_len=256, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("schema", f"header is not a msgpack map ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("schema", f"header must be a map, got {type(header).__name__}")
    seq = header.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) and -1 <= seq <= MAX_SEQ else -1
    version = header.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {version!r}, this side speaks version "
                            f"{PROTOCOL_VERSION}: install the same avatarcam version on both machines", seq)
    type_ = header.pop("type", None)
    if type_ not in allowed:
        raise ProtocolError("schema", f"unexpected message type {type_!r} (expected one of {list(allowed)})", seq)
    if header.pop("seq", None) != seq or seq < (-1 if type_ == "error" else 0):
        raise ProtocolError("schema", "field 'seq' must be an integer in [0, 2**62]", seq)
    token = header.pop("token", None)
    if type_ in REQUESTS and not isinstance(token, str):
        raise ProtocolError("auth", "no token in the request", seq)
    try:
        fields = _check_fields(header, SCHEMAS[type_])
    except ValueError as exc:
        raise ProtocolError("schema", f"{type_}: {exc}", seq) from None
    n = expected_payloads(type_, fields)
    if len(parts) - 1 != n:
        raise ProtocolError("schema", f"{type_}: {len(parts) - 1} payload part(s), expected {n}", seq)
    return Message(type_, seq, fields, tuple(bytes(p) for p in parts[1:]), token)


# --------------------------------------------------------------------------------------------
# Payload codecs


def encode_image(image: np.ndarray, codec: str, quality: int = 85) -> bytes:
    """Encode an ``H x W x 3`` uint8 RGB image as PNG (lossless) or JPEG (``quality`` 1..100)."""
    if codec == "jpeg":
        # libjpeg assumes BGR for its colour transform: convert so chroma subsampling hits chroma.
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        # PNG is lossless and channel-agnostic: the RGB bytes travel as they are, decoded as stored.
        # Level 1: several times faster than the default for about 5 % more bytes.
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} image as {codec}")
    return buf.tobytes()


def decode_image(data: bytes, encoding: str, width: int, height: int) -> np.ndarray:
    """Decode PNG/JPEG bytes that must be a ``height x width`` image; returns ``H x W x 3`` uint8 RGB.

    The declared size is checked against the file header *before* decoding, so a small file that
    claims a huge image never gets its pixel buffer allocated. Raises :class:`ProtocolError`.
    """
    from PIL import Image  # only its header parser: cv2 decodes (faster), after the size check

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except Exception as exc:  # Pillow raises many types for garbage; all mean "not an image"
        raise ProtocolError("schema", f"payload is not a {encoding} image ({type(exc).__name__})") from None
    if fmt != {"jpeg": "JPEG", "png": "PNG"}[encoding] or size != (width, height):
        raise ProtocolError("schema", f"payload is a {fmt} of {size[0]}x{size[1]}, "
                            f"the header says {encoding} of {width}x{height}")
    flat = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(flat, cv2.IMREAD_COLOR)
    if image is None or image.shape != (height, width, 3):
        raise ProtocolError("schema", f"corrupt {encoding} payload")
    if encoding == "jpeg":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def pack_points(points: np.ndarray) -> bytes:
    """``N x 3`` points -> little-endian float32 bytes."""
    return np.ascontiguousarray(points, dtype="<f4").tobytes()


def unpack_points(data: bytes, n: int) -> np.ndarray:
    """Bytes of ``n`` points -> ``n x 3`` float32 (native order), all finite. Raises ProtocolError."""
    if len(data) != n * 12:
        raise ProtocolError("schema", f"landmark payload of {len(data)} bytes, expected {n * 12} for {n} points")
    points = np.frombuffer(data, dtype="<f4").reshape(n, 3).astype(np.float32)
    if not np.isfinite(points).all():
        raise ProtocolError("schema", "landmark payload has NaN or infinite values")
    return points


def pack_landmarks(result: LandmarkResult | None, *, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0,
                   image_size: tuple[int, int] | None = None) -> tuple[dict[str, Any] | None, bytes | None]:
    """A :class:`LandmarkResult` as (header field, payload). Points are mapped ``p * scale +
    (dx, dy, 0)`` (z scaled too) when the frame is sent as a crop; ``image_size`` replaces the
    result's own then. The payload is None when there is no face."""
    if result is None:
        return None, None
    faces = result.faces[:MAX_FACES]
    meta = {
        "image_size": list(image_size or result.image_size),
        "timestamp_ms": int(result.timestamp_ms),
        "faces": [[int(f.points.shape[0]), float(f.score)] for f in faces],
    }
    if not faces:
        return meta, None
    points = np.concatenate([f.points for f in faces]).astype(np.float32)
    if scale != 1.0 or dx or dy:
        points = points * np.float32(scale) + np.array([dx, dy, 0.0], dtype=np.float32)
    return meta, pack_points(points)


def unpack_landmarks(meta: Mapping[str, Any] | None, data: bytes | None) -> LandmarkResult | None:
    if meta is None:
        return None
    faces = meta["faces"]
    counts = [n for n, _ in faces]
    points = unpack_points(data or b"", sum(counts)) if faces else np.zeros((0, 3), np.float32)
    out, start = [], 0
    for n, score in faces:
        out.append(FaceLandmarks(points=points[start:start + n], score=score))
        start += n
    return LandmarkResult(tuple(out), tuple(meta["image_size"]), meta["timestamp_ms"])


def box_fields(box: Box) -> list[float]:
    return [float(box.cx), float(box.cy), float(box.side)]


def avatar_key(fields: Mapping[str, Any], payloads: Sequence[bytes]) -> str:
    """The worker's cache key of an uploaded avatar: sha256 over its fields and payloads.

    Computed by the client and checked by the worker on upload, so one client cannot put other
    pixels under a key another client will ask for (the key is the content, not a claim).
    """
    h = hashlib.sha256()
    canonical = {k: fields[k] for k in ("name", "content_hash", "width", "height", "box", "points")}
    h.update(msgpack.packb(canonical, use_bin_type=True))
    for p in payloads:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


@dataclass(frozen=True)
class Upload:
    """An avatar as it travels: the ``upload_avatar`` fields (without ``avatar``) and payloads."""

    fields: dict[str, Any]
    payloads: tuple[bytes, ...] = field(default=())

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.payloads) + 1024

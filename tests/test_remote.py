"""The remote worker on loopback: exact renders, faults, abuse, several clients, the CLI hooks."""
from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from avatarcam.avatars.types import Avatar
from avatarcam.engines import create_engine
from avatarcam.engines.base import Drive, Engine
from avatarcam.errors import ConfigError, EngineError
from avatarcam.frame import Frame
from avatarcam.geometry import Box
from avatarcam.landmarks.types import FaceLandmarks, LandmarkResult
from avatarcam.remote import RemoteEngine, Worker, WorkerConfig
from avatarcam.remote import protocol as P
from avatarcam.remote.cli import add_serve_parser, add_worker_args, engine_from_args, worker_config_from_args
from avatarcam.remote.transport import create_server_keys

TOKEN = "test-token"
HAS_MESH = importlib.util.find_spec("avatarcam.engines.mesh") is not None


# ------------------------------------------------------------------------------------------ fixtures


def _read_frames(path: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, bgr = cap.read()
        assert ok, f"cannot read {path}"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def frames(data_dir) -> list[np.ndarray]:
    """12 frames of a real driving video, 700x700 RGB."""
    return _read_frames(data_dir / "driving_talking_woman_retalking4.mp4", 12)


def _photo(data_dir: Path, name: str) -> Avatar:
    image = cv2.cvtColor(cv2.imread(str(data_dir / name)), cv2.COLOR_BGR2RGB)
    return Avatar(name=Path(name).stem, image=image, content_hash=name.encode().hex()[:64])


@pytest.fixture(scope="module")
def obama(data_dir) -> Avatar:
    return _photo(data_dir, "avatar_obama_photo.jpg")


@pytest.fixture(scope="module")
def einstein(data_dir) -> Avatar:
    return _photo(data_dir, "avatar_einstein_bw_photo.jpg")


def _drives(frames: list[np.ndarray]) -> list[Drive]:
    """A box that moves, grows and leaves the frame at the end (border replication)."""
    out = []
    for i, image in enumerate(frames):
        h, w = image.shape[:2]
        out.append(Drive(frame=Frame(image=image, index=i, t_capture=100.0 + i / 30),
                         box=Box(w / 2 + 9.5 * i, h / 2 - 4.25 * i, 300 + 17 * i)))
    return out


@pytest.fixture()
def start_worker():
    """Start workers on free loopback ports; all are closed at teardown."""
    started: list[Worker] = []

    def start(**kw) -> Worker:
        factory = kw.pop("engine_factory", None)
        config = WorkerConfig(**{"token": TOKEN, "bind": "127.0.0.1:0", "engine": "passthrough",
                                 "engine_options": {"size": 256}, **kw})
        worker = Worker(config=config, **({"engine_factory": factory} if factory else {})).start()
        started.append(worker)
        return worker

    yield start
    for w in started:
        w.close()


@pytest.fixture()
def clients():
    made: list[RemoteEngine] = []

    def make(worker: Worker | str, **kw) -> RemoteEngine:
        address = worker if isinstance(worker, str) else worker.address
        args = {"token": TOKEN, "engine": "passthrough", "engine_options": {"size": 256}, **kw}
        c = RemoteEngine(address=address, **args)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class MixEngine(Engine):
    """A test engine whose output depends on the avatar, the driver and its own calibration count."""

    name = "mix"

    def __init__(self, *, size: int = 96, delay_s: float = 0.0) -> None:
        self.size, self.delay_s, self.calibrations = size, delay_s, 0

    def prepare(self, avatar: Avatar) -> np.ndarray:
        return avatar.crop(self.size)

    def animate(self, prepared: np.ndarray, drive: Drive) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return prepared // 2 + drive.crop(self.size) // 2 + np.uint8(self.calibrations)

    def calibrate(self) -> None:
        self.calibrations += 1


def mix_factory(name: str, **options) -> Engine:
    assert name == "mix"
    return MixEngine(**options)


def _wait(predicate, timeout_s: float, step=None) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if step is not None:
            step()
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ------------------------------------------------------------------------------------------ protocol


def _hello_fields(**over):
    f = {"session": "ab" * 16, "engine": "mesh", "options": {"size": 256, "pair": [1, 2]}, "mode": "frames",
         "codec": "jpeg", "quality": 85}
    f.update(over)
    return f


def test_protocol_round_trip_keeps_values_exactly():
    lm = LandmarkResult((FaceLandmarks(np.random.default_rng(0).normal(300, 50, (478, 3)).astype(np.float32), 0.9),),
                        (700, 700), 1234)
    meta, points = P.pack_landmarks(lm)
    fields = {"avatar": "0" * 64, "index": 7, "t_capture": 12345.678901234, "width": 700, "height": 700,
              "encoding": "png", "box": [350.5, 349.25, 300.0], "landmarks": meta, "calibrate": True}
    image = np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    parts = P.pack("frame", 3, fields, (P.encode_image(image, "png"), points), token=TOKEN)
    msg = P.unpack(parts, allowed=P.REQUESTS, max_bytes=10**7)
    assert (msg.type, msg.seq, msg.token) == ("frame", 3, TOKEN)
    assert msg.fields["t_capture"] == 12345.678901234 and msg.fields["box"] == (350.5, 349.25, 300.0)
    assert np.array_equal(P.decode_image(msg.payloads[0], "png", 700, 700), image)
    back = P.unpack_landmarks(msg.fields["landmarks"], msg.payloads[1])
    assert back.image_size == (700, 700) and back.timestamp_ms == 1234
    assert np.array_equal(back.faces[0].points, lm.faces[0].points) and back.faces[0].score == pytest.approx(0.9)
    hello = P.unpack(P.pack("hello", 1, _hello_fields(), token=TOKEN), allowed=P.REQUESTS, max_bytes=10**6)
    assert hello.fields["options"] == {"size": 256, "pair": (1, 2)}


def _raw_header(**over) -> bytes:
    h = {"v": P.PROTOCOL_VERSION, "type": "hello", "seq": 5, "token": TOKEN, **_hello_fields()}
    h.update(over)
    return msgpack.packb({k: v for k, v in h.items() if v is not ...}, use_bin_type=True)


@pytest.mark.parametrize("parts, code", [
    ([b"\x93garbage"], "schema"),
    ([b"\x91" * 50_000], "schema"),  # nesting bomb
    ([msgpack.packb([1, 2, 3])], "schema"),
    ([_raw_header(v=2)], "version"),
    ([_raw_header(type="welcome")], "schema"),
    ([_raw_header(token=...)], "auth"),
    ([_raw_header(mode="video")], "schema"),
    ([_raw_header(quality=0)], "schema"),
    ([_raw_header(quality=True)], "schema"),
    ([_raw_header(engine=b"mesh")], "schema"),
    ([_raw_header(extra=1)], "schema"),
    ([_raw_header(session="XYZ")], "schema"),
    ([_raw_header(options={"size": {"nested": 1}})], "schema"),
    ([_raw_header(seq=-5)], "schema"),
    ([_raw_header(), b"unexpected payload"], "schema"),
    ([_raw_header(), b"x" * 600_000, b"y" * 600_000], "too_large"),
    ([_raw_header(), b"", b"", b""], "schema"),
])
def test_protocol_rejects_malformed_messages(parts, code):
    with pytest.raises(P.ProtocolError) as info:
        P.unpack(parts, allowed=P.REQUESTS, max_bytes=1024 * 1024)
    assert info.value.code == code


def test_protocol_rejects_bad_payloads():
    image = np.zeros((32, 48, 3), np.uint8)
    png = P.encode_image(image, "png")
    with pytest.raises(P.ProtocolError, match="48x32"):
        P.decode_image(png, "png", 4000, 4000)  # the header's size must match: no huge allocation
    with pytest.raises(P.ProtocolError):
        P.decode_image(png, "jpeg", 48, 32)
    with pytest.raises(P.ProtocolError):
        P.decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "png", 48, 32)
    with pytest.raises(P.ProtocolError, match="expected 36"):
        P.unpack_points(b"\0" * 30, 3)
    with pytest.raises(P.ProtocolError, match="NaN"):
        P.unpack_points(np.full((3, 3), np.nan, "<f4").tobytes(), 3)


# ------------------------------------------------------------------------------------------ exact renders


def test_render_through_worker_equals_local_passthrough(start_worker, clients, frames, obama):
    worker = start_worker()
    local = create_engine("passthrough", size=256)
    remote = clients(worker, codec="png", pipelined=False)
    remote.connect(10)
    prepared = remote.prepare(obama)
    drives = _drives(frames)
    for d in drives:
        assert np.array_equal(remote.animate(prepared, d), local.animate(None, d)), d.frame.index
    s = remote.stats()
    assert s["sent"] == s["received"] == len(drives) and s["dropped"] == 0 and s["rtt_ms_p50"] > 0
    assert worker.stats()["results"] == len(drives)

    # JPEG: close, and in the right colours (a channel swap would be far off on skin tones).
    jpeg = clients(worker, codec="jpeg", jpeg_quality=90, pipelined=False)
    p2 = jpeg.prepare(obama)
    for d in drives[:4]:
        diff = np.abs(jpeg.animate(p2, d).astype(np.int16) - local.animate(None, d).astype(np.int16))
        assert diff.mean() < 3.0
    assert jpeg.stats()["bytes_sent"] < remote.stats()["bytes_sent"] / 4


def _mesh_inputs(data_dir: Path, tmp_path: Path, frames: list[np.ndarray]):
    from avatarcam.avatars.library import load_avatar
    from avatarcam.landmarks.tracker import create_tracker

    avatar = load_avatar(data_dir / "avatar_east_asian_woman.jpg", cache_dir=tmp_path / "cache")
    drives = []
    with create_tracker(mode="video") as tracker:
        for i, image in enumerate(frames):
            lm = tracker.detect(image, timestamp_ms=40 * i)
            h, w = image.shape[:2]
            drives.append(Drive(frame=Frame(image=image, index=i, t_capture=50.0 + 0.04 * i),
                                box=Box.centered(w, h), landmarks=lm))
    assert all(d.landmarks.face is not None for d in drives)
    return avatar, drives


@pytest.mark.skipif(not HAS_MESH, reason="avatarcam.engines.mesh is not in this tree yet")
@pytest.mark.parametrize("mode", ["frames", "keypoints"])
def test_render_through_worker_equals_local_mesh(start_worker, clients, frames, data_dir, tmp_path, mode):
    options = {"device": "cpu", "output": "photo"}
    local = create_engine("mesh", **options)
    if mode == "keypoints" and getattr(local, "reads_drive_pixels", True):
        pytest.skip("MeshEngine does not declare reads_drive_pixels = False (for mouth_fill='synthetic') yet, "
                    "so the worker rightly refuses keypoints mode")
    avatar, drives = _mesh_inputs(data_dir, tmp_path, frames)
    worker = start_worker(engine="mesh", engine_options={"device": "cpu"})
    remote = clients(worker, engine="mesh", engine_options={"output": "photo"}, codec="png", mode=mode,
                     pipelined=False)
    remote.connect(30)
    prepared_local, prepared_remote = local.prepare(avatar), remote.prepare(avatar)
    moved, full_png = 0, 0
    for d in drives:
        expected = local.animate(prepared_local, d)
        got = remote.animate(prepared_remote, d)
        assert got.shape == expected.shape == avatar.image.shape
        assert np.array_equal(got, expected), f"frame {d.frame.index} differs"
        moved += not np.array_equal(got, avatar.image)
        full_png += len(P.encode_image(expected, "png"))
    assert moved > 0  # the engine did animate the photo, so the comparison means something
    # Photo output travels as the changed rectangle only.
    assert remote.stats()["bytes_received"] < full_png


def test_crop_mode_sends_only_the_crop_the_engine_reads(start_worker, clients, frames, obama):
    seen: list[Drive] = []

    class CropReader(MixEngine):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.drive_crop_size = self.size  # this engine reads the driver only through drive.crop(size)

        def animate(self, prepared, drive):
            seen.append(drive)
            return super().animate(prepared, drive)

    worker = start_worker(engine="mix", engine_options={}, engine_factory=lambda name, **o: CropReader(**o))
    remote = clients(worker, engine="mix", engine_options={}, codec="png", pipelined=False)
    local = MixEngine()
    prepared, q = remote.prepare(obama), local.prepare(obama)
    remote.animate(prepared, _drives(frames)[0])  # uploads the avatar
    sent_before = remote.stats()["bytes_sent"]
    points = np.random.default_rng(3).uniform(200, 500, (478, 3)).astype(np.float32)
    for d in _drives(frames)[:4]:
        d = Drive(frame=d.frame, box=d.box, landmarks=LandmarkResult((FaceLandmarks(points, 0.8),), (700, 700), 5))
        assert np.array_equal(remote.animate(prepared, d), local.animate(q, d))
        got = seen[-1]
        assert got.frame.image.shape == (96, 96, 3) and got.box == Box(48.0, 48.0, 96.0)
        s = 96 / d.box.side
        expect = points * s - np.array([d.box.x0 * s, d.box.y0 * s, 0], np.float32)
        assert np.allclose(got.landmarks.faces[0].points, expect, atol=1e-3)
        assert got.landmarks.image_size == (96, 96) and got.frame.t_capture == d.frame.t_capture
    per_frame = (remote.stats()["bytes_sent"] - sent_before) / 4
    assert per_frame < len(P.encode_image(frames[0], "png")) / 10  # the crop, not the 700x700 frame


def test_avatar_the_engine_refuses_gives_a_clear_error(start_worker, clients, frames, obama):
    from avatarcam.errors import NoFaceError

    class NeedsFace(MixEngine):
        def prepare(self, avatar):
            if avatar.face is None:
                raise NoFaceError(f"avatar {avatar.name!r} has no face: pick a photo with a face")
            return super().prepare(avatar)

    worker = start_worker(engine="mix", engine_options={}, engine_factory=lambda name, **o: NeedsFace(**o))
    d = _drives(frames)[0]
    live = clients(worker, engine="mix", engine_options={}, timeout_s=1.0)
    assert np.array_equal(live.animate(live.prepare(obama), d), d.crop(512))
    assert "has no face" in live.status
    offline = clients(worker, engine="mix", engine_options={}, pipelined=False)
    with pytest.raises(EngineError, match="has no face"):
        offline.animate(offline.prepare(obama), d)


def test_keypoints_mode_refused_for_an_engine_that_reads_pixels(start_worker, clients):
    worker = start_worker()
    remote = clients(worker, mode="keypoints")
    with pytest.raises(EngineError, match="keypoints"):
        remote.connect(5)


# ------------------------------------------------------------------------------------------ live use and faults


def test_pipelined_animate_keeps_at_most_two_in_flight(start_worker, clients, frames, obama):
    worker = start_worker(engine="mix", engine_options={"delay_s": 0.03}, engine_factory=mix_factory)
    remote = clients(worker, engine="mix", engine_options={}, codec="png", max_inflight=2)
    prepared = remote.prepare(obama)
    local = MixEngine(size=96)
    expected = [local.animate(local.prepare(obama), d) for d in _drives(frames)]
    outputs = []
    for i in range(60):
        d = _drives(frames)[i % len(frames)]
        outputs.append(remote.animate(prepared, d))
        assert remote.stats()["in_flight"] <= 2
        time.sleep(0.005)
    s = remote.stats()
    assert s["received"] >= 5 and s["dropped"] > 0 and s["sent"] <= 60 + 2
    # Every output is a real render of some driving frame, exactly.
    assert all(any(np.array_equal(o, e) for e in expected) for o in outputs)
    assert remote.status == "connected"


def test_slow_worker_or_network_shows_in_status(start_worker, clients, frames, obama):
    worker = start_worker(engine="mix", engine_options={"delay_s": 0.3}, engine_factory=mix_factory)
    remote = clients(worker, engine="mix", engine_options={}, timeout_s=2.0)
    prepared = remote.prepare(obama)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.5:
        remote.animate(prepared, _drives(frames)[0])
        time.sleep(0.02)
    assert remote.stats()["rtt_ms_p50"] > 250
    assert remote.status.startswith("connected (slow network: rtt"), remote.status


def test_worker_killed_and_restarted_mid_stream(start_worker, clients, frames, obama):
    worker = start_worker()
    address = worker.address
    local = create_engine("passthrough", size=256)
    drives = _drives(frames)
    remote = clients(address, codec="png", timeout_s=0.5)
    prepared = remote.prepare(obama)
    for d in drives[:5]:
        remote.animate(prepared, d)
        time.sleep(0.01)
    assert _wait(lambda: remote.stats()["received"] >= 3, 5, step=lambda: remote.animate(prepared, drives[4]))
    assert remote.status.startswith("connected")

    worker.close()
    time.sleep(0.1)
    last_good = remote.animate(prepared, drives[5])
    assert any(np.array_equal(last_good, local.animate(None, d)) for d in drives[:5])
    t_down = time.perf_counter()
    while time.perf_counter() - t_down < 1.0:
        out = remote.animate(prepared, drives[5])  # never raises, keeps the last picture
        assert np.array_equal(out, last_good)
        time.sleep(0.02)
    assert remote.status.startswith("reconnecting: worker not answering for"), remote.status
    received = remote.stats()["received"]

    restarted = start_worker(bind=address)
    target = local.animate(None, drives[6])
    assert _wait(lambda: np.array_equal(remote.animate(prepared, drives[6]), target), 10), remote.status
    assert remote.status.startswith("connected") and remote.stats()["received"] > received
    assert restarted.stats()["uploads"] == 1  # the new worker got the avatar again


def test_wrong_token_gives_clear_status_and_nothing_is_processed(start_worker, clients, frames, obama):
    worker = start_worker()
    with pytest.raises(EngineError, match="rejected the token"):
        clients(worker, token="not-the-token").connect(5)
    remote = clients(worker, token="not-the-token", timeout_s=0.3)
    prepared = remote.prepare(obama)
    d = _drives(frames)[0]
    out = remote.animate(prepared, d)
    assert np.array_equal(out, d.crop(512))  # passthrough fallback: the driver's own crop
    assert remote.status.startswith("auth failed: wrong token")
    stats = worker.stats()
    assert stats["auth_failed"] >= 2 and stats.get("frames", 0) == 0 and stats.get("sessions", 0) == 0


def test_garbage_and_oversized_messages_never_stop_the_worker(start_worker, clients, frames, obama):
    worker = start_worker(max_message_bytes=1024 * 1024)
    local = create_engine("passthrough", size=256)
    drives = _drives(frames)
    good = clients(worker, codec="png", pipelined=False)
    prepared = good.prepare(obama)
    assert np.array_equal(good.animate(prepared, drives[0]), local.animate(None, drives[0]))

    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://{worker.address}")

    def ask(parts, timeout_ms=2000):
        raw.send_multipart(parts)
        if not raw.poll(timeout_ms):
            return None
        return P.unpack(raw.recv_multipart(), allowed=P.REPLIES, max_bytes=10**6)

    header = lambda **kw: msgpack.packb({"v": 1, "seq": 9, "token": TOKEN, **kw}, use_bin_type=True)  # noqa: E731
    frame_fields = {"type": "frame", "avatar": "0" * 64, "index": 0, "t_capture": 0.0, "width": 8, "height": 8,
                    "encoding": "png", "box": [4, 4, 8], "landmarks": None, "calibrate": False}
    cases = [
        ([b"garbage"], "schema"),
        ([b"\x91" * 60_000], "schema"),  # nesting bomb under the header limit
        ([header(type="hello")], "schema"),  # missing fields
        ([msgpack.packb({"v": 7, "type": "hello", "seq": 1})], "version"),
        ([header(**frame_fields), b"not a png"], "session"),  # valid shape but no hello: no session
        ([header(**frame_fields), b"x" * 600_000, b"y" * 600_000], "too_large"),
        ([header(**{**frame_fields, "token": "nope"}), b"z"], "auth"),
    ]
    for i, (parts, code) in enumerate(cases):
        reply = ask(parts)
        assert reply is not None and reply.type == "error" and reply.fields["code"] == code, (i, reply)
        assert np.array_equal(good.animate(prepared, drives[i + 1]), local.animate(None, drives[i + 1]))

    # A single part over MAXMSGSIZE: ZeroMQ drops that connection before buffering it; no reply.
    assert ask([b"x" * (2 * 1024 * 1024)], timeout_ms=300) is None
    # Bytes that are not even ZMTP, on a plain TCP socket.
    host, port = worker.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(os.urandom(4096))
    # A session on the raw socket, then a frame whose image is garbage: answered, worker unharmed.
    hello = ask([header(type="hello", **_hello_fields(engine="passthrough", session="cd" * 16, options={}))])
    assert hello is not None and hello.type == "welcome"
    bad_image = {**frame_fields, "avatar": prepared.key}
    ask([header(type="set_avatar", avatar=prepared.key)])
    reply = ask([header(**bad_image), b"\x89PNG\r\n\x1a\n" + os.urandom(64)])
    assert reply.type == "error" and reply.fields["code"] == "schema", reply
    raw.close()
    ctx.term()

    for d in drives[8:]:
        assert np.array_equal(good.animate(prepared, d), local.animate(None, d))
    stats = worker.stats()
    assert stats["bad_schema"] >= 3 and stats["bad_version"] == 1 and stats["bad_too_large"] == 1
    assert stats["auth_failed"] == 1 and stats.get("internal_errors", 0) == 0


def test_malformed_and_missing_replies_from_a_fake_worker(clients, frames, obama):
    """A peer that answers hello with garbage, then one that welcomes but never renders."""
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    try:
        remote = clients(f"127.0.0.1:{port}", timeout_s=0.4, setup_timeout_s=0.8)
        prepared = remote.prepare(obama)
        d = _drives(frames)[0]
        t0 = time.perf_counter()
        while not fake.poll(20):  # the client (re)sends hello from its calls
            remote.animate(prepared, d)
            assert time.perf_counter() - t0 < 5
        ident, *_ = fake.recv_multipart()
        fake.send_multipart([ident, b"\xc1 not msgpack"])
        time.sleep(0.05)
        assert np.array_equal(remote.animate(prepared, d), d.crop(512))
        assert "malformed reply" in remote.status

        # Now welcome it properly and acknowledge the avatar, but never answer frames.
        def serve_setup(deadline=5.0):
            t = time.perf_counter()
            while time.perf_counter() - t < deadline:
                if not fake.poll(50):
                    remote.animate(prepared, d)
                    continue
                ident, header, *_ = fake.recv_multipart()
                h = msgpack.unpackb(header)
                if h["type"] == "hello":
                    fake.send_multipart([ident, *P.pack("welcome", h["seq"], {
                        "session": h["session"], "worker": "fake", "resumed": False, "engine": "passthrough",
                        "options": {}, "needs_landmarks": False, "keypoints": False, "crop_size": None,
                        "max_message_bytes": 10**7, "max_fps": 30.0})])
                elif h["type"] in ("set_avatar", "upload_avatar"):
                    fake.send_multipart([ident, *P.pack("avatar_ready", h["seq"], {"avatar": h["avatar"]})])
                elif h["type"] == "frame":
                    return True
            return False

        assert serve_setup()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            assert np.array_equal(remote.animate(prepared, d), d.crop(512))
            time.sleep(0.02)
        assert remote.status.startswith("reconnecting: worker not answering"), remote.status
    finally:
        fake.close()
        ctx.term()


# ------------------------------------------------------------------------------------------ several clients


def test_two_clients_get_their_own_avatar_and_calibration(start_worker, clients, frames, obama, einstein):
    worker = start_worker(engine="mix", engine_options={}, engine_factory=mix_factory)
    a = clients(worker, engine="mix", engine_options={}, codec="png", pipelined=False)
    b = clients(worker, engine="mix", engine_options={}, codec="png", pipelined=False)
    pa, pb = a.prepare(obama), b.prepare(einstein)
    la, lb = MixEngine(), MixEngine()
    qa, qb = la.prepare(obama), lb.prepare(einstein)
    for i, d in enumerate(_drives(frames)):
        if i in (3, 7):  # only client A calibrates: B's engine state must not change
            a.calibrate()
            la.calibrate()
        ra, rb = a.animate(pa, d), b.animate(pb, d)
        assert np.array_equal(ra, la.animate(qa, d)) and np.array_equal(rb, lb.animate(qb, d)), i
        assert not np.array_equal(ra, rb)
    assert worker.stats()["clients"] == 2 and worker.stats()["uploads"] == 2


def test_clients_are_served_fairly(start_worker, clients, frames, obama, einstein):
    worker = start_worker(engine="mix", engine_options={"delay_s": 0.02}, engine_factory=mix_factory)
    a = clients(worker, engine="mix", engine_options={})
    b = clients(worker, engine="mix", engine_options={})
    pa, pb = a.prepare(obama), b.prepare(einstein)
    drives = _drives(frames)
    a.animate(pa, drives[0])
    b.animate(pb, drives[0])
    t0, i = time.perf_counter(), 0
    while time.perf_counter() - t0 < 1.5:
        a.animate(pa, drives[i % 12])  # A asks three times as often as B
        if i % 3 == 0:
            b.animate(pb, drives[i % 12])
        i += 1
        time.sleep(0.004)
    ra, rb = a.stats()["received"], b.stats()["received"]
    assert ra >= 10 and rb >= 10 and rb >= 0.5 * ra, (ra, rb)


def test_client_limit_is_enforced_and_freed_on_close(start_worker, clients):
    worker = start_worker(max_clients=1)
    first = clients(worker)
    first.connect(5)
    second = clients(worker)
    with pytest.raises(EngineError, match="max-clients 1"):
        second.connect(5)
    assert second.status.startswith("worker busy")
    first.close()
    third = clients(worker)
    third.connect(5)
    assert worker.stats()["clients"] == 1 and worker.stats()["busy"] >= 1


def test_frame_rate_limit_slows_a_client_without_losing_frames(start_worker, clients, frames, obama):
    worker = start_worker(max_fps_per_client=3.0)  # a burst of 2, then one frame per 1/3 s
    local = create_engine("passthrough", size=256)
    remote = clients(worker, codec="png", pipelined=False)
    prepared = remote.prepare(obama)
    for d in _drives(frames)[:5]:
        assert np.array_equal(remote.animate(prepared, d), local.animate(None, d))
    assert worker.stats()["rate_limited"] >= 1


@pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE support")
def test_curve_encryption(start_worker, clients, frames, obama, tmp_path):
    secret = create_server_keys(tmp_path / "keys")
    worker = start_worker(curve_secret_key_file=str(secret))
    local = create_engine("passthrough", size=256)
    d = _drives(frames)[2]
    remote = clients(worker, codec="png", pipelined=False, curve_server_key=str(tmp_path / "keys" / "server.key"))
    assert np.array_equal(remote.animate(remote.prepare(obama), d), local.animate(None, d))
    with pytest.raises(EngineError, match="--worker-key"):
        clients(worker).connect(1.0)  # plaintext client against an encrypted worker
    other = create_server_keys(tmp_path / "other")
    with pytest.raises(EngineError, match="no answer"):
        clients(worker, curve_server_key=str(other.parent / "server.key")).connect(1.0)  # someone else's key


# ------------------------------------------------------------------------------------------ CLI hooks


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_refuses_public_bind_without_token_and_empty_tokens(monkeypatch):
    monkeypatch.delenv("AVATARCAM_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="without a token"):
        worker_config_from_args(_serve_args("--bind", "0.0.0.0:5555"))
    with pytest.raises(ConfigError, match="empty"):
        worker_config_from_args(_serve_args("--bind", "127.0.0.1:5555", "--token", ""))
    config, generated = worker_config_from_args(_serve_args("--bind", "127.0.0.1:0", "--engine", "passthrough",
                                                            "--engine-option", "size=128", "--max-clients", "2"))
    assert generated and len(config.token) >= 20 and config.engine_options == {"size": 128}
    assert config.max_clients == 2
    monkeypatch.setenv("AVATARCAM_TOKEN", "from-env")
    config, generated = worker_config_from_args(_serve_args("--bind", "0.0.0.0:5555"))
    assert config.token == "from-env" and not generated
    with pytest.raises(ConfigError):
        worker_config_from_args(_serve_args("--bind", "nohostport"))


def test_engine_from_args(start_worker, monkeypatch):
    monkeypatch.delenv("AVATARCAM_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    add_worker_args(parser)
    assert engine_from_args(parser.parse_args([]), "passthrough", {"size": 256}) is None
    with pytest.raises(ConfigError, match="token"):
        engine_from_args(parser.parse_args(["--worker", "127.0.0.1:5555"]), "passthrough")
    worker = start_worker()
    args = parser.parse_args(["--worker", worker.address, "--jpeg-quality", "70", "--lossless"])
    monkeypatch.setenv("AVATARCAM_TOKEN", TOKEN)
    args.command = "render"  # offline rendering: one synchronous round trip per frame
    engine = engine_from_args(args, "passthrough", {"size": 256})
    try:
        assert isinstance(engine, RemoteEngine) and engine.status == "connected"
        assert not engine.pipelined and engine.codec == "png" and engine.jpeg_quality == 70
    finally:
        engine.close()
    args.command = "run"
    with engine_from_args(args, "passthrough", {"size": 256}) as live:
        assert live.pipelined
    with RemoteEngine(address=worker.address, token=TOKEN, engine_options={"p": Path("/x"), "t": (1, 2)}) as e:
        assert e.engine_options == {"p": "/x", "t": [1, 2]}  # converted for the wire, nothing sent yet
    with pytest.raises(ConfigError, match="cannot be sent"):
        RemoteEngine(address=worker.address, token=TOKEN, engine_options={"f": object()})
    bad = parser.parse_args(["--worker", worker.address, "--token", "wrong"])
    with pytest.raises(EngineError, match="token"):
        engine_from_args(bad, "passthrough", {"size": 256}, connect_timeout_s=5)


def test_worker_config_checks():
    with pytest.raises(ValueError, match="token"):
        WorkerConfig(token="")
    with pytest.raises(ValueError, match="max_clients"):
        WorkerConfig(token="t", max_clients=0)
    with pytest.raises(ValueError):
        WorkerConfig(token="t", bind="localhost")
    with pytest.raises(EngineError, match="cannot create engine"):
        Worker(config=WorkerConfig(token="t", bind="127.0.0.1:0", engine="passthrough",
                                   engine_options={"bogus": 1})).start()


def test_no_threads_left_after_close(start_worker, clients, frames, obama):
    worker = start_worker()
    remote = clients(worker)
    remote.animate(remote.prepare(obama), _drives(frames)[0])
    remote.close()
    worker.close()
    assert not [t for t in threading.enumerate() if t.name == "avatarcam-worker"]

"""Avatar switching while rendering: no stall, a short cross-fade, never an empty, black or torn frame;
per-avatar settings follow switches and restarts; overlays stay in the preview."""
import logging
import random
import threading
import time

import numpy as np
import pytest

from avatarcam.controls import ControlsConfig
from avatarcam.frame import OutputFrame, PreviewLayers
from avatarcam.settings import AvatarSettings, SettingsStore
from avatarcam.sinks.window import draw_layers

from conftest import avatarcam_threads
from live_harness import (FPS, FlatEngine, SpyPassthrough, VideoFrames, flat_avatar, live_config, reference_compose,
                          running, wait_for)

RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)
# The 64 x 64 avatar letterboxed into 160 x 90: a 90 x 90 square at x 35..124, black bars beside it.
PICTURE, BARS = (slice(2, 88), slice(37, 123)), (slice(None), np.r_[0:33, 127:160])


def colour_of(frame: OutputFrame) -> np.ndarray:
    """The frame's one colour; fails on a torn (two-coloured) or badly framed picture."""
    picture = frame.image[PICTURE].reshape(-1, 3).astype(int)
    spread = picture.max(axis=0) - picture.min(axis=0)
    assert spread.max() <= 2, f"torn frame {frame.source_index}: colours {picture.min(0)}..{picture.max(0)}"
    assert frame.image[BARS].max() == 0, "the letterbox bars must stay black"
    return picture.mean(axis=0)


def blend_weight(c: np.ndarray, old, new) -> float | None:
    """t with c == (1 - t) old + t new (within rounding), else None."""
    old, new = np.array(old, float), np.array(new, float)
    d = new - old
    t = float(np.dot(c - old, d) / np.dot(d, d))
    if -0.01 <= t <= 1.01 and np.abs(old + t * d - c).max() <= 2.0:
        return min(max(t, 0.0), 1.0)
    return None


@pytest.fixture()
def flat_live(driving_video):
    avatars = [flat_avatar("red", RED), flat_avatar("green", GREEN), flat_avatar("blue", BLUE),
               flat_avatar("broken", (90, 90, 90))]
    engine = FlatEngine(prepare_s=0.4, animate_s=0.005, broken=["broken"])
    config = live_config(driving_video, follow=False, engine="flat")
    with running(config, engine=engine, avatars=avatars, controls=ControlsConfig(persist=False, crossfade_s=0.2),
                 keep=None) as live:
        live.engine = engine
        yield live
    assert avatarcam_threads() == []


def test_switch_streams_the_old_avatar_while_preparing_then_crossfades(flat_live):
    live, c = flat_live, flat_live.controller
    mark = live.sink.count
    t0 = time.perf_counter()
    c.execute("avatar", {"index": 2})
    assert time.perf_counter() - t0 < 0.05, "the command must not wait for the preparation"
    assert c.status()["avatar"]["switching_to"] == "green"
    wait_for(lambda: c.status()["avatar"]["showing"] == "green", what="green installed")
    frames = live.since(mark) + live.frames_after(live.sink.count, 10, fresh=False)
    assert "avatarcam-prepare" in live.engine.prepare_threads
    weights = []
    for f in frames:
        t = blend_weight(colour_of(f), RED, GREEN)
        assert t is not None, f"frame {f.source_index} is neither red, green nor a blend of them"
        weights.append(t)
    assert weights == sorted(weights), "the fade must only go forward"
    red = sum(w == 0 for w in weights)
    fading = sum(0 < w < 1 for w in weights)
    assert red >= 0.3 * FPS * 0.7, f"only {red} red frames while green was prepared for 0.4 s"
    assert 1 <= fading <= 0.2 * FPS + 3, f"{fading} cross-fade frames for a 0.2 s fade"
    assert weights[-1] == 1.0
    # no stall: the old avatar kept coming fresh while the new one was prepared
    run = longest = 0
    for f in frames:
        run = run + 1 if f.repeated else 0
        longest = max(longest, run)
    assert longest <= 3, f"{longest} repeated frames in a row: the stream stalled"


def test_switching_back_to_a_prepared_avatar_is_instant(flat_live):
    live, c = flat_live, flat_live.controller
    c.execute("avatar", {"index": 2})
    wait_for(lambda: c.status()["avatar"]["showing"] == "green", what="green installed")
    live.frames_after(live.sink.count, 6)
    mark = live.sink.count
    c.execute("avatar", {"index": 1})  # red: prepared at start
    assert c.status()["avatar"]["switching_to"] is None
    frames = live.frames_after(mark, 12)
    weights = [blend_weight(colour_of(f), GREEN, RED) for f in frames]
    assert None not in weights
    first_change = next(i for i, w in enumerate(weights) if w > 0)
    assert first_change <= 2, f"the switch showed only after {first_change} fresh frames"
    assert weights[-1] == 1.0


def test_rapid_random_switching_never_shows_a_torn_black_or_empty_frame(flat_live):
    live, c = flat_live, flat_live.controller
    mark = live.sink.count
    rng = random.Random(6)
    errors = []

    def press() -> None:
        try:
            for _ in range(40):
                c.execute("avatar", {"index": rng.randint(1, 3)})
                time.sleep(rng.uniform(0.01, 0.12))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    presser = threading.Thread(target=press)
    presser.start()
    presser.join(30)
    frames = live.since(mark) + live.frames_after(live.sink.count, 8)
    assert not errors and live.error is None
    assert len(frames) > 40
    palette = np.array([RED, GREEN, BLUE], float)
    shown = set()
    for f in frames:
        assert f.image.shape == (90, 160, 3) and f.image.dtype == np.uint8
        c_ = colour_of(f)  # not torn, bars black
        # any mix of the three avatars (a fade may start from a fade): channels within the palette's
        # range and summing to theirs; black or a half-made frame fails both
        assert c_.sum() == pytest.approx(palette.sum(axis=1)[0], abs=6), c_
        assert (c_ >= 28).all() and (c_ <= 202).all(), c_
        for name, colour in zip("rgb", palette):
            if np.abs(c_ - colour).max() <= 1:
                shown.add(name)
    assert len(shown) >= 2
    final = live.frames_after(live.sink.count, 10)[-1]
    expected = palette[c.state.avatar]
    np.testing.assert_allclose(colour_of(final), expected, atol=1)


def test_an_avatar_that_cannot_be_prepared_keeps_the_current_one(flat_live, caplog):
    live, c = flat_live, flat_live.controller
    with caplog.at_level(logging.WARNING):
        c.execute("avatar", {"name": "broken"})
        wait_for(lambda: c.last_error is not None, what="the error")
    assert "'broken' could not be prepared" in c.status()["last_error"]
    assert c.state.avatar == 0 and c.status()["avatar"]["showing"] == "red"
    frames = live.frames_after(live.sink.count, 5)
    assert all(np.allclose(colour_of(f), RED, atol=1) for f in frames)
    assert any("could not be prepared" in line for line in frames[-1].overlay)


def test_settings_follow_the_avatar_across_switches_and_restarts(tmp_path, driving_video):
    avatars = [flat_avatar("one", RED), flat_avatar("two", GREEN)]
    config = live_config(driving_video, follow=False)
    controls = ControlsConfig(settings_dir=str(tmp_path), crossfade_s=0.0)
    engine = SpyPassthrough(size=96)
    with running(config, engine=engine, avatars=avatars, controls=controls) as live:
        c, proc = live.controller, live.session.processor
        c.execute("zoom", {"step": 1})
        c.execute("mirror_output", {"on": True})
        c.execute("move", {"x": 0.1, "y": -0.05})
        c.execute("calibrate")
        wait_for(lambda: engine.get_calibration() is not None, what="calibrated")
        neutral = int(engine.get_calibration()["neutral"][0])
        c.execute("avatar", {"index": 2})
        wait_for(lambda: proc.avatar is avatars[1], what="avatar two")
        live.settle()
        assert (c.state.zoom, c.state.offset, c.state.mirror_output) == (1.0, (0.0, 0.0), False)
        assert proc.compositor.mirror is False
        c.execute("zoom", {"value": 1.5})
        c.execute("avatar", {"index": 1})
        wait_for(lambda: proc.avatar is avatars[0], what="avatar one again")
        live.settle()
        assert c.state.zoom == pytest.approx(1.1) and c.state.offset == (0.1, -0.05) and c.state.mirror_output
        out = live.settle()[-1]
        assert proc.compositor.mirror is True
        side = min(410, 412) / 1.1
        assert proc.last_box.side == pytest.approx(side) and proc.last_box.cx == pytest.approx(205 + 0.1 * side)
        assert engine.restored and int(engine.restored[-1]["neutral"][0]) == neutral
        assert out.image.shape == (90, 160, 3)
    # a restart: a new session and engine start from what was saved
    engine2 = SpyPassthrough(size=96)
    with running(config, engine=engine2, avatars=avatars, controls=controls) as live:
        c = live.controller
        assert c.state.zoom == pytest.approx(1.1) and c.state.mirror_output and c.state.offset == (0.1, -0.05)
        live.settle()
        assert engine2.restored and int(engine2.restored[0]["neutral"][0]) == neutral
        c.execute("next_avatar")
        wait_for(lambda: live.session.processor.avatar is avatars[1], what="avatar two")
        live.settle()
        assert c.state.zoom == pytest.approx(1.5)


def test_settings_store_round_trip_and_bad_files(tmp_path, caplog):
    store = SettingsStore(folder=tmp_path / "s")
    assert store.load("abc").zoom is None  # nothing saved yet
    cal = {"kp": np.arange(6, dtype=np.float32).reshape(3, 2), "area": np.array(2.5)}
    store.save("abc", AvatarSettings(zoom=1.3, offset=(0.1, 0.2), mirror_output=True, calibration=cal))
    got = store.load("abc")
    assert (got.zoom, got.offset, got.mirror_output) == (1.3, (0.1, 0.2), True)
    np.testing.assert_array_equal(got.calibration["kp"], cal["kp"])
    store.save("abc", AvatarSettings(zoom=1.0))
    assert store.load("abc").calibration is None and not (tmp_path / "s" / "abc.npz").exists()
    (tmp_path / "s" / "bad.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert store.load("bad").zoom is None
    assert "unreadable avatar settings" in caplog.text
    with pytest.raises(ValueError, match="content_hash"):
        store.load("../../etc/passwd")
    blocked = tmp_path / "file"
    blocked.write_text("x")
    SettingsStore(folder=blocked / "sub").save("abc", AvatarSettings(zoom=1.2))  # a warning, not a crash
    assert "could not save avatar settings" in caplog.text


def test_overlays_never_reach_the_virtual_camera(driving_video, recording_backend):
    from avatarcam.sinks.memory import MemorySink
    from avatarcam.sinks.virtualcam import VirtualCameraSink

    frames = VideoFrames(driving_video)
    vcam = VirtualCameraSink(width=160, height=90, fps=FPS, backend="avatarcam-test")
    memory = MemorySink()
    config = live_config(driving_video)
    from avatarcam.live import LiveSession

    session = LiveSession(config=config, engine_factory=lambda o: SpyPassthrough(size=96), sinks=[memory, vcam],
                          avatars=[flat_avatar("one", RED)], controls=ControlsConfig(persist=False, crossfade_s=0))
    try:
        for command in ("passthrough", "overlay", "help", "stats", "mirror_preview"):
            session.controller.execute(command, {"on": True})
        session.run(duration=1.0)
    finally:
        session.close()
        vcam.close()
    sent = recording_backend.instances[-1].frames
    assert len(sent) == memory.count > 10
    drawn = 0
    for out, raw in zip(memory.frames, sent):
        assert out.preview is not None and out.preview.mirror and out.preview.panel and out.overlay
        clean = raw.reshape(90, 160, 3)
        np.testing.assert_array_equal(clean, out.image)
        if out.source_index >= 0:  # past the start-up placeholder
            np.testing.assert_array_equal(clean, reference_compose(frames[out.source_index]))
            preview = draw_layers(out.image, out.preview)[:, :, ::-1]  # what the window shows (as RGB)
            assert not np.array_equal(preview, out.image)
            drawn += 1
    assert drawn > 5


def test_preview_layers_are_drawn_on_a_copy():
    image = np.full((40, 60, 3), 100, np.uint8)
    before = image.copy()
    ghost = np.zeros_like(image)
    layers = PreviewLayers(ghost=ghost, ghost_alpha=0.5,
                           points=((np.array([[5.0, 5.0]], np.float32), (255, 0, 0)),), mirror=True)
    bgr = draw_layers(image, layers)
    np.testing.assert_array_equal(image, before)
    assert bgr[20, 30].tolist() == [50, 50, 50]  # half the ghost
    assert bgr[5, 60 - 1 - 5].tolist() == [0, 0, 255]  # the red point, mirrored (BGR)


def test_mesh_engine_switching_keeps_whole_frames(driving_video, avatar_photo, tmp_path):
    mesh = pytest.importorskip("avatarcam.engines.mesh", reason="the mesh engine is not in this tree yet")
    from avatarcam.avatars.library import load_avatar

    avatars = [load_avatar(avatar_photo, cache_dir=tmp_path), load_avatar(
        avatar_photo.parent / "avatar_jobs_glasses_photo.jpg", cache_dir=tmp_path)]
    config = live_config(driving_video, engine="mesh", size=128)
    from avatarcam.app import engine_options

    engine = mesh.MeshEngine(**engine_options(config))
    with running(config, engine=engine, avatars=avatars, controls=ControlsConfig(persist=False)) as live:
        mark = live.sink.count
        for i in (2, 1, 2):
            live.controller.execute("avatar", {"index": i})
            # The session shows its own copy, fitted to the 160 x 90 output (see app.fit_avatar).
            wait_for(lambda: live.session.processor.avatar.content_hash == avatars[i - 1].content_hash,
                     timeout=30, what="mesh switch")
            live.frames_after(live.sink.count, 4)
        frames = live.since(mark)
    for f in frames:
        picture = f.image[:, 35:125]
        assert picture.mean() > 20 and picture.std() > 5, "an empty or black frame"
    shown = live.session.processor.avatar
    assert shown.image.shape[0] < avatars[0].image.shape[0], "the 930-pixel photo was not fitted to the output"


def test_untouched_avatars_leave_no_settings_behind(tmp_path, driving_video):
    avatars = [flat_avatar("one", RED), flat_avatar("two", GREEN)]
    controls = ControlsConfig(settings_dir=str(tmp_path / "s"), crossfade_s=0.0)
    with running(live_config(driving_video, follow=False), engine=SpyPassthrough(size=96), avatars=avatars,
                 controls=controls) as live:
        live.controller.execute("avatar", {"index": 2})
        wait_for(lambda: live.session.processor.avatar is avatars[1], what="avatar two")
        live.controller.execute("freeze", {"on": True})  # not a per-avatar setting
        live.frames_after(live.sink.count, 3, fresh=False)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())

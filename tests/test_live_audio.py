"""The live session with audio on a real (user-space) PulseAudio server: the delay follows the
measured video latency, and the microphone drives the avatar's mouth when no face is tracked."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from avatarcam.audio import AudioConfig
from avatarcam.config import AppConfig, CaptureConfig, EngineConfig, OutputConfig, SinkConfig
from avatarcam.controls import ControlsConfig
from avatarcam.engines.passthrough import PassthroughEngine
from avatarcam.live import LiveSession
from avatarcam.sinks.memory import MemorySink

from test_audio import MIC, OUT, SR, _chirp, _play, _wait_for_blocks, pulse  # noqa: F401 - pytest fixture

from conftest import avatarcam_threads


class ExpressionSpy(PassthroughEngine):
    """Passthrough that records the synthetic expression each driving frame carried."""

    def __init__(self) -> None:
        super().__init__(size=64)
        self.seen: list[tuple[float, object]] = []

    def animate(self, prepared, drive):
        self.seen.append((time.monotonic(), drive.expression))
        return super().animate(prepared, drive)


class SlowPassthrough(PassthroughEngine):
    """A passthrough that takes 90 ms a frame, so the video latency is well above the audio path's own."""

    def animate(self, prepared, drive):
        time.sleep(0.09)
        return super().animate(prepared, drive)


def _config(source: str, latency: str = "high", **audio) -> AppConfig:
    return AppConfig(
        capture=CaptureConfig(source=source, loop=True),
        engine=EngineConfig(name="passthrough", size=64),
        output=OutputConfig(width=160, height=120, fps=25),
        sinks=SinkConfig(kinds=("null",)),
        audio=AudioConfig(enabled=True, input_device=MIC, output_device=OUT, latency=latency, **audio),
    )


def test_auto_delay_follows_the_measured_video_latency(pulse, driving_video, avatar_photo):
    config = dataclasses.replace(_config(str(driving_video), latency="low"), avatars=dataclasses.replace(
        AppConfig().avatars, avatar=str(avatar_photo)))
    with LiveSession(config=config, engine_factory=lambda cfg: SlowPassthrough(size=64), sinks=[MemorySink(maxlen=4)],
                     controls=ControlsConfig(persist=False)) as session:
        assert session.audio is not None, "audio did not start on the PulseAudio server"
        _wait_for_blocks(session.audio)
        session.run(duration=3.5)
        latency = session.pipeline.stats.snapshot().latency_ms[0] / 1000.0
        applied = session.audio.delay_s
        stream = session.audio.stream_latency_s
    # the added delay is the video latency less what the audio path already delays by itself
    assert latency > stream + 0.03, "the test needs a video latency above the audio stream's own"
    assert abs(applied - max(latency - stream, 0.0)) < 0.03, (applied, latency, stream)
    assert avatarcam_threads() == []


def test_voice_drives_the_mouth_when_no_face_is_seen(pulse, tmp_path, avatar_photo):
    import cv2

    noface = tmp_path / "noface.png"
    cv2.imwrite(str(noface), np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    config = dataclasses.replace(_config(str(noface), delay=0.0, voice_mode="fallback"),
                                 avatars=dataclasses.replace(AppConfig().avatars, avatar=str(avatar_photo)))
    spy = ExpressionSpy()
    with LiveSession(config=config, engine_factory=lambda cfg: spy, sinks=[MemorySink(maxlen=4)],
                     controls=ControlsConfig(persist=False)) as session:
        _wait_for_blocks(session.audio)
        quiet_until = time.monotonic() + 1.0
        signal = np.concatenate([np.zeros(SR // 2, np.float32), np.tile(_chirp(0.05, 0.6), 20),
                                 np.zeros(SR, np.float32)])
        player = _play(signal, MIC, tmp_path / "burst.raw")
        session.run(duration=3.5)
        player.wait(10)
    mouths = [(t, e.mouth_open) for t, e in spy.seen if e is not None]
    assert len(mouths) > 0.9 * len(spy.seen), "no face is tracked, so every frame should carry the voice expression"
    before = [m for t, m in mouths if t < quiet_until - 0.6]
    assert before and max(before) < 0.05
    assert max(m for _, m in mouths) > 0.5, "the mouth never opened while the microphone carried sound"

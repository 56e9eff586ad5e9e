"""Audio: delay line, delay smoothing, voice mouth, idle motion, devices, and the real pass-through.

The pass-through tests run a real PulseAudio server in user space with two null sinks
(``scripts/ci_audio.sh`` installs and starts it; the ``pulse`` fixture starts the daemon and loads
the sinks itself when it can, and skips with the reason when it cannot):

  avatarcam_mic  the test plays a chirp burst into it; the pass-through records its monitor
  avatarcam_out  the pass-through plays into it; the test records its monitor
"""
from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from avatarcam.audio import (AudioConfig, AudioPassthrough, DelayLine, DelaySmoother, IdleMotion,
                             SyntheticDriver, SyntheticExpression, VoiceMouth, audio_status, rms_dbfs)
from avatarcam.audio import devices as devices_mod
from avatarcam.audio import passthrough as passthrough_mod
from avatarcam.errors import AudioError

SR = 48000
MIC, OUT = "avatarcam_mic", "avatarcam_out"


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, word", [
    ({"delay": "later"}, "later"),
    ({"delay": -0.1}, "-0.1"),
    ({"delay": 2.0, "max_delay_s": 1.0}, "2.0"),
    ({"voice_mode": "loud"}, "loud"),
    ({"samplerate": 1000}, "1000"),
    ({"blocksize": 0}, "blocksize"),
    ({"gate_db": -20.0, "open_db": -30.0}, "open_db"),
    ({"attack_s": 0}, "attack_s"),
    ({"input_device": ""}, "input_device"),
    ({"output_device": -1}, "-1"),
    ({"latency": "fast"}, "fast"),
    ({"stall_s": 0.1}, "stall_s"),
    ({"stall_s": -1}, "stall_s"),
])
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AudioConfig(**kwargs)


def test_config_delay_modes():
    assert AudioConfig().fixed_delay_s is None
    assert AudioConfig(delay=0.2).fixed_delay_s == pytest.approx(0.2)
    assert AudioConfig(delay=0).fixed_delay_s == 0.0


# ---------------------------------------------------------------------------------------------
# delay line (pure)
# ---------------------------------------------------------------------------------------------
def _index_signal(start: int, n: int) -> np.ndarray:
    """Samples that carry their own index (exact in float64 up to 2**53)."""
    return np.arange(start, start + n, dtype=np.float64)[:, None]


@pytest.mark.parametrize("delay", [0, 1, 479, 480, 4800, 48000])
def test_delay_line_exact_with_irregular_blocks(delay):
    line = DelayLine(max_delay=48000, max_block=1000, dtype=np.float64, delay=delay)
    rng = np.random.default_rng(1)
    pos = 0
    for _ in range(200):
        n = int(rng.integers(1, 3000))  # includes blocks larger than max_block (split internally)
        out = line.process(_index_signal(pos, n))
        expected = np.arange(pos - delay, pos - delay + n, dtype=np.float64)
        expected[expected < 0] = 0  # the ring starts silent (index 0 is also silence-valued)
        np.testing.assert_array_equal(out[:, 0], expected)
        pos += n


def test_delay_line_one_hour_does_not_drift():
    """An hour at 48 kHz in mixed block sizes: every output sample is exactly input - delay."""
    delay = 9600  # 200 ms
    line = DelayLine(max_delay=SR, max_block=SR, dtype=np.float64, delay=delay)
    sizes = [SR, 480, 24000, 441, SR - 921]  # 2 s per cycle
    total = 3600 * SR
    pos, worst = 0, 0.0
    while pos < total:
        for n in sizes:
            out = line.process(_index_signal(pos, n))
            if pos >= delay:
                worst = max(worst, float(np.max(np.abs(out[:, 0] - np.arange(pos - delay, pos - delay + n)))))
            pos += n
    assert pos == total
    assert line.written == total
    assert worst == 0.0
    # A change after an hour still lands on the exact new delay once the crossfade is over.
    line.set_delay(4800)
    line.process(_index_signal(pos, SR))
    pos += SR
    out = line.process(_index_signal(pos, 480))
    np.testing.assert_array_equal(out[:, 0], np.arange(pos - 4800, pos - 4800 + 480))


def _sine_through(line: DelayLine, seconds: float, change_at: float | None, new_delay: int, block: int = 480):
    n_total = int(seconds * SR)
    x = (0.8 * np.sin(2 * np.pi * 440 * np.arange(n_total) / SR)).astype(np.float32)[:, None]
    y = np.zeros_like(x)
    for start in range(0, n_total, block):
        if change_at is not None and start == int(change_at * SR):
            line.set_delay(new_delay)
        line.process(x[start:start + block], y[start:start + block])
    return x[:, 0], y[:, 0]


def test_delay_change_is_smooth_and_lands_exactly():
    line = DelayLine(max_delay=SR, crossfade=1440, delay=2400)
    x, y = _sine_through(line, 1.0, change_at=0.5, new_delay=7331)
    steady = np.abs(np.diff(x, 2)).max()  # what the sine itself produces: (2 pi 440 / SR)^2 * 0.8
    d2 = np.abs(np.diff(y[2400:], 2)).max()
    assert d2 <= 1.3 * steady, f"max |second difference| {d2:.5f} vs sine's own {steady:.5f}"
    # After the crossfade (30 ms) the output is the input delayed by exactly the new delay.
    after = int(0.5 * SR) + 1440
    np.testing.assert_allclose(y[after:], x[after - 7331:len(x) - 7331], atol=1e-6)
    np.testing.assert_allclose(y[2400:int(0.5 * SR)], x[:int(0.5 * SR) - 2400], atol=1e-6)


def test_delay_change_without_crossfade_would_click():
    """The smoothness check above can fail: a one-sample 'crossfade' is a jump."""
    line = DelayLine(max_delay=SR, crossfade=1, delay=2400)
    x, y = _sine_through(line, 1.0, change_at=0.5, new_delay=7331)
    steady = np.abs(np.diff(x, 2)).max()
    assert np.abs(np.diff(y[2400:], 2)).max() > 10 * steady


def test_delay_change_during_crossfade_waits():
    line = DelayLine(max_delay=SR, crossfade=1440, delay=0, dtype=np.float64)
    pos = 0
    line.set_delay(1000)
    line.process(_index_signal(pos, 480)); pos += 480
    assert line.delay == 1000 and line.fading
    line.set_delay(3000)  # arrives mid-fade: must not start a second fade on top
    line.process(_index_signal(pos, 480)); pos += 480
    assert line.delay == 1000
    line.process(_index_signal(pos, 480)); pos += 480  # fade of 1440 samples ends here
    out = line.process(_index_signal(pos, 480)); pos += 480
    assert line.delay == 3000 and line.fading
    for _ in range(4):
        out = line.process(_index_signal(pos, 480)); pos += 480
    np.testing.assert_array_equal(out[:, 0], np.arange(pos - 480 - 3000, pos - 3000))


def test_delay_smoother_hysteresis_and_tracking():
    rng = np.random.default_rng(3)
    smoother = DelaySmoother(weight=0.1, hysteresis_s=0.010, max_s=1.0, offset_s=0.02)
    moves = []
    for i in range(600):  # 20 s of 30 fps latency figures: 140 ms +- 4 ms noise, then 220 ms
        latency = (0.14 if i < 300 else 0.22) + rng.normal(0, 0.004)
        new = smoother.update(latency)
        if new is not None:
            moves.append((i, new))
    first_phase = [m for m in moves if m[0] < 300]
    assert first_phase[0][1] == pytest.approx(0.12, abs=0.015)  # latency minus the audio path's own
    assert len(first_phase) <= 2, f"hunting on noise: {first_phase}"
    assert smoother.applied == pytest.approx(0.20, abs=0.012)
    assert len(moves) - len(first_phase) <= 10  # a step of 80 ms takes a few 10 ms moves, not 300
    assert smoother.update(float("nan")) is None


def test_passthrough_auto_delay_follows_video_latency_and_fixed_ignores_it():
    """Without opening a stream: "auto" turns latency figures into a delay; a fixed delay stays."""
    auto = AudioPassthrough(config=AudioConfig(delay="auto", max_delay_s=0.5))
    assert auto.delay_samples == 0
    auto.set_target_delay(0.150)
    assert auto.delay_samples == round(0.150 * SR)
    auto.set_target_delay(0.155)  # within the 10 ms hysteresis: no move
    assert auto.delay_samples == round(0.150 * SR)
    for _ in range(100):
        auto.set_target_delay(0.900)  # clamped to max_delay_s
    assert auto.delay_samples == round(0.5 * SR)
    fixed = AudioPassthrough(config=AudioConfig(delay=0.08))
    fixed.set_target_delay(0.3)
    assert fixed.delay_samples == round(0.08 * SR)
    fixed.set_delay(0.1)
    assert fixed.delay_samples == round(0.1 * SR)
    with pytest.raises(ValueError, match="-1"):
        fixed.set_delay(-1)


# ---------------------------------------------------------------------------------------------
# voice mouth and idle motion (pure)
# ---------------------------------------------------------------------------------------------
def _blocks(level_db: float, seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    n = int(seconds * SR) // 480
    amp = 10 ** (level_db / 20)
    return [(amp * rng.standard_normal(480)).astype(np.float32) for _ in range(n)]


def test_rms_dbfs():
    t = np.arange(SR) / SR
    assert rms_dbfs((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)) == pytest.approx(-9.03, abs=0.05)
    assert rms_dbfs(np.zeros((480, 2), np.float32)) == -120.0


def test_voice_mouth_gate_attack_release():
    rng = np.random.default_rng(0)
    mouth = VoiceMouth(gate_db=-45, open_db=-15, attack_s=0.03, release_s=0.15)
    for b in _blocks(-60, 1.0, rng):  # room noise under the gate: mouth stays shut
        assert mouth.update(b) == 0.0
    trace = [mouth.update(b) for b in _blocks(-12, 0.3, rng)]  # loud speech
    # One-pole attack: 63 % of the way after one time constant (30 ms = 3 blocks).
    assert 0.5 < trace[2] < 0.75
    assert trace[-1] > 0.99
    release = [mouth.update(b) for b in _blocks(-60, 0.6, rng)]
    assert 0.25 < release[14] < 0.45  # 150 ms later: e^-1 of the way back
    assert release[-1] < 0.05
    assert all(a >= b for a, b in zip(release, release[1:]))
    mid = VoiceMouth(gate_db=-45, open_db=-15, attack_s=0.001, release_s=0.001)
    assert mid.update(_blocks(-30, 0.01, rng)[0]) == pytest.approx(0.5, abs=0.05)


def test_idle_motion_blinks_and_head():
    idle = IdleMotion(seed=7, blink_interval_s=4.0, yaw_deg=3.0, pitch_deg=2.0, roll_deg=1.5)
    t = np.arange(0, 600, 1 / 30)  # ten minutes at 30 fps
    samples = np.array([idle.sample(float(x)) for x in t])
    blink = samples[:, 0]
    assert blink.min() == 0.0 and blink.max() == 1.0
    onsets = t[1:][(blink[1:] > 0.5) & (blink[:-1] <= 0.5)]
    gaps = np.diff(onsets)
    assert 100 <= len(onsets) <= 220, len(onsets)  # ~4 s apart, some doubles
    assert gaps.min() > 0.3 and np.std(gaps) > 0.5  # irregular, as people blink
    assert (blink > 0.5).mean() < 0.05  # eyes open most of the time
    head = samples[:, 1:]
    peaks = np.abs(head).max(axis=0)
    assert np.all(peaks <= [3.5 * 1.5, 2.0 * 1.5 + 0.5, 1.5 * 1.5 + 0.5]) and np.all(peaks > 0.3)
    assert np.abs(np.diff(head, axis=0)).max() < 0.2  # smooth: under 0.2 degrees per frame
    again = IdleMotion(seed=7)
    assert again.sample(123.4) == idle.sample(123.4)  # deterministic, any order


def test_synthetic_driver_modes():
    voice = VoiceMouth(attack_s=0.001)
    driver = SyntheticDriver(voice=voice, idle=IdleMotion(seed=1), voice_mode="fallback")
    driver.push_level(-10.0)
    expr = driver.current(1.0)
    assert isinstance(expr, SyntheticExpression) and expr.mouth_open > 0.99
    assert driver.applies(face_tracked=False) and not driver.applies(face_tracked=True)
    always = SyntheticDriver(voice=voice, idle=IdleMotion(seed=1), voice_mode="always")
    assert always.applies(face_tracked=True)
    off = SyntheticDriver(voice=voice, idle=IdleMotion(seed=1), voice_mode="off")
    assert off.current(1.0).mouth_open == 0.0 and off.applies(face_tracked=False)
    with pytest.raises(ValueError, match="loud"):
        SyntheticDriver(voice=voice, idle=IdleMotion(), voice_mode="loud")


# ---------------------------------------------------------------------------------------------
# missing PortAudio (pure: simulated)
# ---------------------------------------------------------------------------------------------
def test_missing_portaudio_gives_clear_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    ok, message = audio_status()
    assert not ok
    assert "PortAudio library not found" in message and "libportaudio2" in message
    with pytest.raises(AudioError, match="libportaudio2"):
        devices_mod.list_audio_devices()
    with pytest.raises(AudioError, match="libportaudio2"):
        AudioPassthrough(config=AudioConfig(delay=0.1)).start()


class _StandInStream:
    """A PortAudio duplex stream stand-in, given to AudioPassthrough through its sounddevice import.
    Each opening takes the next behaviour from ``plan``: ``silent`` opens and starts but never calls
    back (the stalled ALSA start, an unplugged microphone), ``fails`` cannot be opened, ``runs``
    calls back every 5 ms from its own thread."""

    def __init__(self, plan: list[str], opened: list, **kwargs) -> None:
        self.behaviour = plan.pop(0) if plan else "runs"
        if self.behaviour == "fails":
            raise RuntimeError("Error opening Stream: Device unavailable")
        self.callback = kwargs["callback"]
        self.latency = (0.01, 0.02)
        self.started = self.aborted = self.closed = False
        self._halt = threading.Event()
        opened.append(self)

    def start(self) -> None:
        self.started = True
        if self.behaviour == "runs":
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        block = np.zeros((480, 1), np.float32)
        out = np.zeros_like(block)
        while not self._halt.wait(0.005):
            self.callback(block, out, 480, None, None)

    def abort(self) -> None:
        self.aborted = True
        self._halt.set()

    def close(self) -> None:
        self.closed = True
        self._halt.set()

    @property
    def active(self) -> bool:
        return self.started and not (self.aborted or self.closed)


@pytest.fixture
def stand_in_audio(monkeypatch):
    """(plan, opened): AudioPassthrough opens :class:`_StandInStream` streams following ``plan``."""
    plan: list[str] = []
    opened: list[_StandInStream] = []
    fake = SimpleNamespace(Stream=lambda **kw: _StandInStream(plan, opened, **kw))
    monkeypatch.setattr(passthrough_mod, "import_sounddevice", lambda: fake)
    monkeypatch.setattr(passthrough_mod, "resolve_device", lambda spec, kind: devices_mod.ResolvedDevice(None))
    monkeypatch.setattr(passthrough_mod, "FIRST_CALLBACK_GRACE_S", 0.3)
    return plan, opened


def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avatarcam-audio-watchdog"]


def test_a_stalled_stream_is_reopened_and_a_failed_reopen_is_retried(stand_in_audio, caplog):
    plan, opened = stand_in_audio
    plan += ["silent", "fails", "runs"]
    audio = AudioPassthrough(config=AudioConfig(delay=0.1, stall_s=0.3)).start()
    try:
        t_end = time.monotonic() + 10.0
        while audio.blocks < 20:
            assert time.monotonic() < t_end, f"no audio after the stall: {audio.restarts} restarts, {audio.blocks} blocks"
            time.sleep(0.01)
        assert audio.restarts == 2  # the silent stream, then the failed reopening
        assert len(opened) == 2
        assert opened[0].aborted and opened[0].closed
        assert audio.running and opened[1].active
        messages = [r.getMessage() for r in caplog.records if r.name == "avatarcam.audio.passthrough"]
        assert any("no sound from the stream" in m for m in messages)
        assert any("Device unavailable" in m and "Retrying" in m for m in messages)
    finally:
        audio.close()
    assert opened[1].closed and not audio.running
    assert _watchdogs() == []


def test_a_running_stream_is_left_alone_and_the_watchdog_can_be_off(stand_in_audio):
    plan, opened = stand_in_audio
    plan += ["runs"]
    with AudioPassthrough(config=AudioConfig(delay=0.1, stall_s=0.3)) as audio:
        time.sleep(1.2)
        assert audio.blocks > 50 and audio.restarts == 0 and len(opened) == 1
    plan += ["silent"]
    with AudioPassthrough(config=AudioConfig(delay=0.1, stall_s=0)) as audio:
        assert _watchdogs() == []
        time.sleep(0.6)
        assert audio.blocks == 0 and audio.restarts == 0 and len(opened) == 2
    assert opened[1].closed


# ---------------------------------------------------------------------------------------------
# the real audio stack
# ---------------------------------------------------------------------------------------------
def _pactl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="session")
def pulse():
    """A running PulseAudio server with the two null sinks, seen by PortAudio as device 'pulse'."""
    if shutil.which("pactl") is None or shutil.which("pulseaudio") is None:
        pytest.skip("PulseAudio is not installed: run scripts/ci_audio.sh (apt-get install pulseaudio pulseaudio-utils libportaudio2)")
    mp = pytest.MonkeyPatch()
    loaded: list[str] = []
    started = False
    try:
        if _pactl("info").returncode != 0 and not os.environ.get("XDG_RUNTIME_DIR"):
            # Headless root has no login session; the server lives in the same default place
            # scripts/ci_audio.sh uses.
            runtime = Path(f"/run/user/{os.getuid()}")
            runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
            mp.setenv("XDG_RUNTIME_DIR", str(runtime))
        if _pactl("info").returncode != 0:
            subprocess.run(["pulseaudio", "--daemonize=yes", "--system=false", "--exit-idle-time=-1"],
                           capture_output=True, timeout=20)
            started = True
            for _ in range(50):
                if _pactl("info").returncode == 0:
                    break
                time.sleep(0.1)
            else:
                pytest.skip("no PulseAudio server answers and `pulseaudio --daemonize` did not start one "
                            f"({_pactl('info').stderr.strip()}); run scripts/ci_audio.sh")
        sinks = _pactl("list", "short", "sinks").stdout
        for sink in (MIC, OUT):
            if f"\t{sink}\t" not in sinks:
                r = _pactl("load-module", "module-null-sink", f"sink_name={sink}", "rate=48000")
                if r.returncode != 0:
                    pytest.skip(f"cannot load a null sink: {r.stderr.strip()}")
                loaded.append(r.stdout.strip())
        try:
            import sounddevice as sd
        except OSError as exc:
            pytest.skip(f"PortAudio is missing ({exc}): apt-get install libportaudio2")
        if not any(d["name"] == "pulse" for d in sd.query_devices()):
            # PortAudio scanned devices before the server was reachable: scan again.
            sd._terminate()
            sd._initialize()
        if not any(d["name"] == "pulse" for d in sd.query_devices()):
            pytest.skip("PortAudio has no 'pulse' device: apt-get install libasound2-plugins")
        yield sd
    finally:
        if started:  # leave the machine as we found it
            subprocess.run(["pulseaudio", "--kill"], capture_output=True, timeout=20)
        else:
            for module in loaded:
                _pactl("unload-module", module)
        mp.undo()


def _chirp(seconds: float = 0.05, amp: float = 0.5) -> np.ndarray:
    """A Hann-windowed 300 Hz - 6 kHz linear chirp: a burst with one sharp correlation peak."""
    t = np.arange(int(seconds * SR)) / SR
    f0, f1 = 300.0, 6000.0
    return (amp * np.hanning(len(t)) * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds)))).astype(np.float32)


_PA_FORMAT = ["--raw", "--format=float32le", f"--rate={SR}", "--channels=1", "--latency-msec=200"]


class _Recorder:
    """``parec`` recording a PulseAudio source to a raw file: a native client with its own steady
    buffer, so the recording runs on the server's clock without gaps."""

    def __init__(self, source: str, path: Path) -> None:
        self._path = path
        self._file = open(path, "wb")
        self._proc = subprocess.Popen(["parec", f"--device={source}", *_PA_FORMAT], stdout=self._file,
                                      stderr=subprocess.PIPE)

    def stop(self) -> np.ndarray:
        self._proc.terminate()
        _, err = self._proc.communicate(timeout=10)
        self._file.close()
        data = np.fromfile(self._path, dtype=np.float32)
        assert data.size, f"parec recorded nothing: {err.decode(errors='replace').strip()}"
        return data


def _play(signal: np.ndarray, sink: str, path: Path) -> subprocess.Popen:
    """Start ``pacat`` playing ``signal`` (float32 mono) into ``sink``."""
    signal.astype(np.float32).tofile(path)
    return subprocess.Popen(["pacat", "--verbose", "--playback", f"--device={sink}", *_PA_FORMAT, str(path)],
                            stderr=subprocess.PIPE)


def _arrival(recording: np.ndarray, burst: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
    """Index in ``recording[lo:hi]`` where ``burst`` starts, and the normalised correlation there."""
    seg = recording[lo:hi + len(burst)].astype(np.float64)
    corr = np.correlate(seg, burst.astype(np.float64), "valid")
    k = int(np.argmax(corr))
    energy = np.sqrt(np.sum(seg[k:k + len(burst)] ** 2) * np.sum(burst.astype(np.float64) ** 2))
    return lo + k, float(corr[k] / energy) if energy > 0 else 0.0


def _find_bursts(recording: np.ndarray, burst: np.ndarray, count: int) -> list[tuple[int, float]]:
    """The ``count`` strongest occurrences of ``burst`` (at least 0.2 s apart) in time order, as
    (start index, normalised correlation)."""
    rec = recording.astype(np.float64)
    ref = burst.astype(np.float64)
    corr = np.correlate(rec, ref, "valid")
    found = []
    masked = corr.copy()
    for _ in range(count):
        k = int(np.argmax(masked))
        energy = np.sqrt(np.sum(rec[k:k + len(ref)] ** 2) * np.sum(ref ** 2))
        found.append((k, float(corr[k] / energy) if energy > 0 else 0.0))
        masked[max(0, k - int(0.2 * SR)):k + int(0.2 * SR)] = -np.inf
    return sorted(found)


def _bursts(burst: np.ndarray, times: list[float], seconds: float) -> np.ndarray:
    signal = np.zeros(int(seconds * SR), np.float32)
    for t0 in times:
        signal[int(t0 * SR):int(t0 * SR) + len(burst)] = burst
    return signal


def _wait_for_blocks(audio: AudioPassthrough, blocks: int = 20, timeout: float = 25.0) -> None:
    """Wait until the stream's callback runs steadily. PortAudio's ALSA duplex start over the
    PulseAudio plugin takes about 2 s here before the first callback."""
    t_end = time.monotonic() + timeout
    while audio.blocks < blocks:
        assert time.monotonic() < t_end, f"the pass-through stream made only {audio.blocks} callbacks in {timeout} s"
        time.sleep(0.01)


def test_pulse_device_is_listed(pulse):
    from avatarcam.audio import describe_audio_devices, list_audio_devices
    names = [d.name for d in list_audio_devices()]
    assert "pulse" in names
    assert audio_status()[0]
    text = describe_audio_devices()
    assert "sink:   avatarcam_out" in text and "source: avatarcam_mic.monitor" in text


def test_unknown_device_is_a_clear_error(pulse):
    with pytest.raises(AudioError, match="avatarcam devices"):
        AudioPassthrough(config=AudioConfig(delay=0.1, output_device="no_such_sink_xyz")).start()


def test_tone_reaches_only_the_named_sink(pulse, tmp_path):
    """Without the pass-through a chirp played into avatarcam_mic shows on its monitor, never on
    avatarcam_out's: so what the next test records there came through AudioPassthrough."""
    burst = _chirp()
    mic_rec, out_rec = _Recorder(f"{MIC}.monitor", tmp_path / "mic.raw"), _Recorder(f"{OUT}.monitor", tmp_path / "out.raw")
    time.sleep(0.2)
    player = _play(_bursts(burst, [0.1], 0.4), MIC, tmp_path / "play.raw")
    assert player.wait(timeout=10) == 0, player.stderr.read()
    time.sleep(0.2)
    mic, out = mic_rec.stop(), out_rec.stop()
    assert _arrival(mic, burst, 0, len(mic) - len(burst))[1] > 0.99
    assert np.abs(out).max() < 1e-3


def test_stalled_stream_on_pulseaudio_is_reopened_and_plays_again(pulse):
    """A real stall: the output sink suspended under a running duplex stream stops its callbacks;
    the watchdog aborts that ALSA stream and opens a new one, which plays once the sink is back."""
    audio = AudioPassthrough(config=AudioConfig(enabled=True, input_device=MIC, output_device=OUT, delay=0.1,
                                                stall_s=1.0)).start()
    try:
        _wait_for_blocks(audio)
        assert _pactl("suspend-sink", OUT, "1").returncode == 0
        try:
            t_end = time.monotonic() + 10.0
            while audio.restarts < 1:
                assert time.monotonic() < t_end, "the watchdog did not reopen the stalled stream"
                time.sleep(0.05)
        finally:
            assert _pactl("suspend-sink", OUT, "0").returncode == 0
        before = audio.blocks
        _wait_for_blocks(audio, blocks=before + 20)
        assert audio.running
    finally:
        audio.close()
    assert [t for t in threading.enumerate() if t.name == "avatarcam-audio-watchdog"] == []


def test_passthrough_delay_and_voice_mouth_on_pulseaudio(pulse, tmp_path):
    """Chirps go avatarcam_mic -> AudioPassthrough (avatarcam_mic.monitor -> avatarcam_out) -> recorded
    from avatarcam_out.monitor. The delay starts at the configured 200 ms and is switched while the
    stream runs (in silence, so nothing replays) to 0, 350 and 0 ms, one chirp each. Player and
    recorder run on the server's clock with fixed buffers, so the lag from a chirp's place in the
    played signal to its place in the recording is the fixed latency of the chain plus the added
    delay; the two 0 ms chirps give the fixed part (and must agree: a glitch anywhere shows there),
    and the others minus it must equal their delays. The voice mouth is fed by the pass-through's
    own input blocks."""
    burst = _chirp()
    plan = [(0.3, 0.20), (1.1, 0.0), (2.2, 0.35), (3.2, 0.0)]  # (chirp time in the signal, delay in force)
    switches = [(0.9, 0.0), (1.8, 0.35), (3.0, 0.0)]  # (time after the player starts, new delay)
    signal = _bursts(burst, [t0 for t0, _ in plan], 3.6)
    voice = VoiceMouth(samplerate=SR, blocksize=480)
    trace: list[tuple[float, float]] = []

    def on_level(level: float) -> None:
        trace.append((level, voice.push_level(level)))

    cfg = AudioConfig(enabled=True, input_device=f"{MIC}.monitor", output_device=OUT, delay=0.2,
                      latency=0.2, max_delay_s=0.5)  # deep buffers ride out a busy CPU
    attempts = []
    for attempt in range(3):  # a scheduling hiccup on a busy machine shifts a stream: measure again
        trace.clear()
        voice.reset()
        recorder = _Recorder(f"{OUT}.monitor", tmp_path / f"out{attempt}.raw")
        with AudioPassthrough(config=cfg, on_level=on_level) as audio:
            _wait_for_blocks(audio)
            assert audio.delay_s == pytest.approx(0.2)
            xruns_before = audio.xruns
            player = _play(signal, MIC, tmp_path / "play.raw")
            t_start = time.monotonic()
            for t_switch, delay in switches:
                time.sleep(max(0.0, t_start + t_switch - time.monotonic()))
                audio.set_delay(delay)
            assert player.wait(timeout=10) == 0, player.stderr.read()
            time.sleep(0.4)
            xruns = audio.xruns - xruns_before
        recording = recorder.stop()
        player_glitch = b"underrun" in player.stderr.read().split(b"Got EOF")[0]
        found = _find_bursts(recording, burst, len(plan))  # in time order = plan order
        lags = [at - int(t0 * SR) for (at, _), (t0, _) in zip(found, plan)]
        corrs = [c for _, c in found]
        clean = xruns == 0 and not player_glitch and lags[1] == lags[3] and min(corrs) > 0.99
        attempts.append((lags, corrs, xruns, player_glitch, list(trace)))
        print(f"\nattempt {attempt}: lags {lags} samples, correlations {[round(c, 4) for c in corrs]}, "
              f"pass-through xruns {xruns}, player underrun {player_glitch}")
        if clean:
            break
    lags, corrs, xruns, player_glitch, trace_now = attempts[-1]
    base = lags[1]
    added_ms = [(lags[i] - base) / SR * 1000 for i in (0, 2)]
    print(f"audio delay: added {added_ms[0]:.3f} ms (want 200), {added_ms[1]:.3f} ms (want 350); "
          f"the two 0 ms baselines differ by {(lags[3] - lags[1]) / SR * 1000:.3f} ms; attempts {len(attempts)}")
    assert min(corrs) > 0.95, corrs  # each chirp arrives whole
    assert abs(lags[3] - lags[1]) / SR * 1000 < 2.0, lags
    assert abs(added_ms[0] - 200) < 2.0 and abs(added_ms[1] - 350) < 2.0, added_ms

    # Voice mouth on the pass-through's input: shut before the first chirp, open with it, shut after.
    levels = np.array([lvl for lvl, _ in trace_now])
    mouth = np.array([m for _, m in trace_now])
    heard = np.flatnonzero(levels > voice.gate_db)
    assert len(heard) >= 3, "the chirp never reached the pass-through's input"
    onset = heard[0]
    assert mouth[:onset].max() == 0.0  # below the gate (silence in the null sink) the mouth stays shut
    assert mouth[onset:onset + 6].max() > 0.5  # open within 60 ms of the chirp
    first_end = heard[heard < onset + 20][-1]
    assert mouth[first_end + 50] < 0.05  # and shut again 500 ms after it

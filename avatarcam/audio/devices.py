"""Audio devices: listing, health check, and turning a configured device into something to open.

``sounddevice`` is imported lazily inside functions: it raises OSError at import when the PortAudio
library is missing, and that must never stop the video. Every failure here becomes an
:class:`~avatarcam.errors.AudioError` whose message says what to install or choose, and
:func:`audio_status` never raises at all.

PulseAudio / PipeWire endpoints: PortAudio (through ALSA) only sees one ``pulse`` device, which
plays to the server's default sink and records from its default source. A configured name that is
no PortAudio device but a PulseAudio sink or source (``pactl list short sinks``/``sources``), or
any name written ``pulse:NAME``, opens that ``pulse`` device with ``PULSE_SINK`` / ``PULSE_SOURCE``
set to the name for the moment the stream is opened (libpulse reads them when the stream
connects), so each stream reaches its own endpoint without changing the system defaults. A sink
name given as an input means that sink's monitor (``NAME.monitor``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator

from avatarcam.errors import AudioError

PULSE_PREFIX = "pulse:"
# PULSE_SINK/PULSE_SOURCE are process-wide; serialise the moments they are set.
_ENV_LOCK = threading.Lock()


def portaudio_install_hint() -> str:
    """What to install for PortAudio on this OS."""
    if sys.platform.startswith("linux"):
        return ("install the PortAudio library: `sudo apt install libportaudio2` (Debian/Ubuntu), "
                "`sudo dnf install portaudio` (Fedora) or `sudo pacman -S portaudio` (Arch)")
    if sys.platform == "darwin":
        return "reinstall sounddevice (`pip install --force-reinstall sounddevice`, its wheel bundles PortAudio) or `brew install portaudio`"
    if sys.platform.startswith("win"):
        return "reinstall sounddevice (`pip install --force-reinstall sounddevice`, its wheel bundles PortAudio)"
    return "install the PortAudio library with your package manager"


def import_sounddevice() -> ModuleType:
    """Import sounddevice, or raise :class:`AudioError` saying how to get PortAudio."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise AudioError(f"audio is unavailable: {exc}; {portaudio_install_hint()}. The video keeps running without audio.") from exc
    except ImportError as exc:
        raise AudioError(f"audio is unavailable: the sounddevice package is not installed ({exc}); "
                         "run `pip install sounddevice`. The video keeps running without audio.") from exc
    return sounddevice


@dataclass(frozen=True)
class AudioDevice:
    """One PortAudio device. ``inputs``/``outputs``: channel counts; ``default_in``/``default_out``:
    whether it is the default input/output device."""

    name: str
    index: int
    inputs: int
    outputs: int
    default_in: bool
    default_out: bool
    hostapi: str


def list_audio_devices() -> list[AudioDevice]:
    """All PortAudio devices. Raises :class:`AudioError` when PortAudio is missing or fails."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in, default_out = sd.default.device
    except Exception as exc:  # PortAudioError and friends: a broken audio stack, not a bug of ours
        raise AudioError(f"cannot list audio devices: {exc}. Check that your sound server is running.") from exc
    return [
        AudioDevice(name=d["name"], index=i, inputs=int(d["max_input_channels"]),
                    outputs=int(d["max_output_channels"]), default_in=i == default_in,
                    default_out=i == default_out, hostapi=hostapis[d["hostapi"]]["name"])
        for i, d in enumerate(devices)
    ]


def pulse_endpoints() -> tuple[list[str], list[str]]:
    """(sink names, source names) of the running PulseAudio/PipeWire server; empty without ``pactl``
    or a server."""
    if shutil.which("pactl") is None:
        return [], []
    result = []
    for kind in ("sinks", "sources"):
        try:
            out = subprocess.run(["pactl", "list", "short", kind], capture_output=True, text=True, timeout=5, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return [], []
        result.append([line.split("\t")[1] for line in out.splitlines() if line.count("\t") >= 1])
    return result[0], result[1]


def audio_status() -> tuple[bool, str]:
    """(ok, message): whether audio can run here and, if not, what to do. Never raises."""
    try:
        devices = list_audio_devices()
    except AudioError as exc:
        return False, str(exc)
    ins = sum(d.inputs > 0 for d in devices)
    outs = sum(d.outputs > 0 for d in devices)
    if not ins or not outs:
        missing = " and ".join(w for w, n in (("input", ins), ("output", outs)) if not n)
        return False, (f"no audio {missing} device found ({len(devices)} devices in all). Connect a microphone "
                       "or start a sound server (PulseAudio/PipeWire); the video keeps running without audio.")
    return True, f"audio ok: {ins} input and {outs} output devices"


def describe_audio_devices() -> str:
    """A human-readable listing for ``avatarcam devices`` (never raises)."""
    try:
        devices = list_audio_devices()
    except AudioError as exc:
        return f"Audio: {exc}"
    lines = ["Audio devices (index: name [host API] in/out channels):"]
    for d in devices:
        marks = "".join((" <default in>" if d.default_in else "", " <default out>" if d.default_out else ""))
        lines.append(f"  {d.index:3d}: {d.name} [{d.hostapi}] in={d.inputs} out={d.outputs}{marks}")
    if not devices:
        lines.append("  (none)")
    sinks, sources = pulse_endpoints()
    if sinks or sources:
        lines.append("PulseAudio/PipeWire endpoints (usable as device names, e.g. output_device = avatarcam_out):")
        lines.extend(f"  sink:   {s}" for s in sinks)
        lines.extend(f"  source: {s}" for s in sources)
    return "\n".join(lines)


@dataclass(frozen=True)
class ResolvedDevice:
    """A device ready to open: the PortAudio ``index`` (None: default) and, for a PulseAudio endpoint
    reached through the ``pulse`` device, its ``pulse_name``."""

    index: int | None
    pulse_name: str | None = None


def _pulse_device_index(sd: ModuleType, kind: str) -> int | None:
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    for i, d in enumerate(sd.query_devices()):
        if d["name"] == "pulse" and d[channels] > 0:
            return i
    return None


def resolve_device(spec: str | int | None, kind: str) -> ResolvedDevice:
    """Turn a configured device (index, PortAudio name part, PulseAudio name, ``pulse:NAME`` or None)
    into a :class:`ResolvedDevice` for ``kind`` ``"input"`` or ``"output"``. Raises :class:`AudioError`."""
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    sd = import_sounddevice()
    if spec is None:
        return ResolvedDevice(None)
    if isinstance(spec, int):
        try:
            sd.query_devices(spec, kind)
        except (ValueError, sd.PortAudioError) as exc:
            raise AudioError(f"audio {kind} device {spec} is unusable: {exc}. Run `avatarcam devices` to list devices.") from exc
        return ResolvedDevice(spec)
    if not spec.startswith(PULSE_PREFIX):
        try:
            return ResolvedDevice(int(sd.query_devices(spec, kind)["index"]))
        except (ValueError, sd.PortAudioError):
            pass  # not a PortAudio device: maybe a PulseAudio endpoint
    name = spec[len(PULSE_PREFIX):] if spec.startswith(PULSE_PREFIX) else spec
    index = _pulse_device_index(sd, kind)
    sinks, sources = pulse_endpoints()
    if kind == "input" and name in sinks and name not in sources:
        name += ".monitor"
    known = name in (sources if kind == "input" else sinks)
    if index is None or not (known or spec.startswith(PULSE_PREFIX)):
        raise AudioError(f"no audio {kind} device matches {spec!r}. Run `avatarcam devices` to list devices "
                         "and PulseAudio endpoints (for a virtual cable, load one with "
                         "`pactl load-module module-null-sink sink_name=avatarcam_out`).")
    return ResolvedDevice(index, name)


@contextmanager
def pulse_routing(input_device: ResolvedDevice, output_device: ResolvedDevice) -> Iterator[None]:
    """Set ``PULSE_SOURCE``/``PULSE_SINK`` for the devices' PulseAudio names while a stream opens,
    then restore the environment."""
    wanted = {"PULSE_SOURCE": input_device.pulse_name, "PULSE_SINK": output_device.pulse_name}
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in wanted}
        try:
            for key, value in wanted.items():
                if value is not None:
                    os.environ[key] = value
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

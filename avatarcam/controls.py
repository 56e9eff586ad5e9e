"""Live controls: a small live state and the commands that change it.

Every command is a method of :class:`Controller` registered in :data:`COMMANDS` by the
:func:`command` decorator (name, help text, typed parameters). Hotkeys (:mod:`avatarcam.hotkeys`)
and the control API (:mod:`avatarcam.control_api`) both go through :meth:`Controller.execute`
by command name, so they cannot drift apart, and arguments are checked in one place.

Commands are quick and never block the caller: avatar switches are prepared in the background
by the :class:`~avatarcam.processing.FrameProcessor`, engine-touching changes are queued to its
thread, and output-side changes (freeze, "be right back") are picked up by the pipeline on the
next output frame. The state is a frozen :class:`LiveState`, replaced whole on each change.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.errors import AvatarcamError, ConfigError
from avatarcam.frame import PreviewLayers
from avatarcam.geometry import fit_into
from avatarcam.settings import AvatarSettings, SettingsStore

if TYPE_CHECKING:
    from avatarcam.pipeline import Pipeline
    from avatarcam.processing import FrameProcessor

log = logging.getLogger(__name__)

ZOOM_RANGE = (0.2, 5.0)  # as CropConfig allows
OFFSET_LIMIT = 1.0  # crop sides, as DriverCrop allows


@dataclass(frozen=True)
class ControlsConfig:
    """Live-control settings.

    ``settings_dir``: where per-avatar settings are kept (None: the per-user config folder);
    ``persist``: remember calibration, crop and mirror per avatar across restarts.
    ``crossfade_s``: blend time of an avatar switch / passthrough toggle (0 = cut).
    ``zoom_step``: factor per zoom key press; ``move_step``: crop move per key press (crop sides).
    ``brb_image``: picture for "be right back" (None: a generated card saying ``brb_text``).
    ``mirror_preview``: start with the preview mirrored (like a mirror; the output is unaffected).
    """

    settings_dir: str | None = None
    persist: bool = True
    crossfade_s: float = 0.2
    zoom_step: float = 1.1
    move_step: float = 0.02
    brb_image: str | None = None
    brb_text: str = "Be right back"
    mirror_preview: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.crossfade_s <= 5.0:
            raise ConfigError(f"controls crossfade_s must be in [0, 5] seconds, got {self.crossfade_s}")
        if not 1.0 < self.zoom_step <= 2.0:
            raise ConfigError(f"controls zoom_step must be in (1, 2], got {self.zoom_step}")
        if not 0.0 < self.move_step <= 0.5:
            raise ConfigError(f"controls move_step must be in (0, 0.5] crop sides, got {self.move_step}")


class CommandError(AvatarcamError, ValueError):
    """A command that cannot be carried out as asked; ``status`` is the matching HTTP code."""

    def __init__(self, message: str, *, status: int = 400, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


# -- the command table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A command parameter. ``kind``: "bool", "int", "number" or "string" (JSON types)."""

    name: str
    kind: str
    help: str


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    params: tuple[Param, ...]
    run: Callable[..., None]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help,
                "params": [{"name": p.name, "type": p.kind, "help": p.help} for p in self.params]}


COMMANDS: dict[str, Command] = {}

_ON = Param("on", "bool", "true / false; leave out to toggle")


def command(help: str, *params: Param) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a :class:`Controller` method as a command under its own name."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        COMMANDS[fn.__name__] = Command(fn.__name__, help, params, fn)
        return fn

    return register


def _checked(value: Any, param: Param, command_name: str) -> Any:
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "string": isinstance(value, str) and 0 < len(value) <= 256,
    }[param.kind]
    if not ok:
        raise CommandError(f"parameter {param.name!r} of {command_name!r} must be a {param.kind}, "
                           f"got {type(value).__name__} {value!r:.40}")
    return float(value) if param.kind == "number" else value


def check_args(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``args`` for command ``name``; returns the keyword arguments (None values dropped).
    Raises :class:`CommandError` (unknown command or parameter, wrong type)."""
    spec = COMMANDS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise CommandError(f"unknown command {name!r:.60}; commands: {', '.join(sorted(COMMANDS))}",
                           commands=sorted(COMMANDS))
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise CommandError(f"the arguments of {name!r} must be a JSON object, got {type(args).__name__}")
    known = {p.name: p for p in spec.params}
    unknown = [k for k in args if k not in known]
    if unknown:
        takes = ", ".join(known) or "no parameters"
        raise CommandError(f"{name!r} has no parameter {str(unknown[0])!r:.40}; it takes: {takes}")
    return {k: _checked(v, known[k], name) for k, v in args.items() if v is not None}


# -- state ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveState:
    """What the user can change live. ``avatar``: 0-based index of the selected avatar in
    :attr:`Controller.avatars` (-1 when it is not in the list any more, after a reload)."""

    avatar: int = 0
    passthrough: bool = False
    freeze: bool = False
    brb: bool = False
    blur: bool = False
    mirror_preview: bool = False
    mirror_output: bool = False
    zoom: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    best_frame: bool = False
    stats: bool = False
    overlay: bool = False
    help: bool = False
    calibrations: int = 0
    reloads: int = 0


def be_right_back_card(width: int, height: int, text: str = "Be right back") -> np.ndarray:
    """A calm ``height x width x 3`` uint8 RGB card with ``text`` centred (the default BRB image)."""
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array([38, 50, 72], np.float32), np.array([16, 20, 30], np.float32)
    card = np.ascontiguousarray(np.broadcast_to(top + (bottom - top) * ramp, (height, width, 3)).astype(np.uint8))
    font = cv2.FONT_HERSHEY_DUPLEX
    scale = 1.0
    tw, th = cv2.getTextSize(text, font, scale, 2)[0]
    scale = min(width * 0.7 / max(tw, 1), height * 0.15 / max(th, 1))
    thick = max(1, round(scale * 1.5))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    cv2.putText(card, text, ((width - tw) // 2, (height + th) // 2), font, scale, (235, 235, 240), thick, cv2.LINE_AA)
    return card


def load_still(path: str | Path, width: int, height: int) -> np.ndarray:
    """The picture at ``path`` letterboxed to ``width x height`` (RGB uint8). Raises ConfigError."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ConfigError(f"the 'be right back' image {path} cannot be read: give a JPEG or PNG file "
                          "(controls.brb_image), or leave it unset for the built-in card")
    return np.ascontiguousarray(fit_into(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), width, height, "letterbox"))


def engine_option(engine: Any, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]] | None:
    """(get, set) for an engine option: a settable attribute, or a field of a frozen ``options``
    dataclass (replaced whole). None when the engine has no such option."""
    prop = getattr(type(engine), name, None)
    if isinstance(prop, property) and prop.fset is not None:
        return (lambda: getattr(engine, name)), (lambda v: setattr(engine, name, v))
    options = getattr(engine, "options", None)
    if dataclasses.is_dataclass(options) and name in {f.name for f in dataclasses.fields(options)}:
        return ((lambda: getattr(engine.options, name)),
                (lambda v: setattr(engine, "options", dataclasses.replace(engine.options, **{name: v}))))
    return None


class Controller:
    """Owns the :class:`LiveState` and carries out commands on the live loop's parts.

    ``avatars``: the switchable avatars (hotkeys 1-9 are their 1-based positions); ``reload``
    returns a fresh list (the avatar folder scanned again). ``settings``: per-avatar persistence
    (None: nothing is remembered). ``base_zoom`` / ``base_offset`` / ``mirror_output``: the
    configured defaults that "reset" returns to. ``still``: the "be right back" picture at the output
    size (default: :func:`be_right_back_card`).
    """

    def __init__(self, *, processor: "FrameProcessor", pipeline: "Pipeline", avatars: Sequence[Avatar],
                 reload: Callable[[], Sequence[Avatar]] | None = None, settings: SettingsStore | None = None,
                 config: ControlsConfig = ControlsConfig(), base_zoom: float = 1.0,
                 base_offset: tuple[float, float] = (0.0, 0.0), mirror_output: bool = False,
                 still: np.ndarray | None = None) -> None:
        if not avatars:
            raise ValueError("the controller needs at least one avatar")
        self.processor, self.pipeline, self.config = processor, pipeline, config
        self.engine = processor.engine
        self.settings = settings
        self._reload_fn = reload
        self._avatars: tuple[Avatar, ...] = tuple(avatars)
        self.base_zoom, self.base_offset, self.base_mirror = base_zoom, tuple(base_offset), mirror_output
        width, height = processor.compositor.width, processor.compositor.height
        if still is None and width is not None and height is not None:
            still = (load_still(config.brb_image, width, height) if config.brb_image
                     else be_right_back_card(width, height, config.brb_text))
        self.still = still
        self._lock = threading.RLock()
        self._messages: collections.deque[tuple[float, str]] = collections.deque(maxlen=3)
        self._reloader: threading.Thread | None = None
        self._recalibrated: set[str] = set()  # content hashes whose calibration may still change
        self.last_error: str | None = None
        processor.on_error = self._on_error
        processor.on_prepare_error = self._on_prepare_error
        best = engine_option(self.engine, "find_best_frame")
        current = processor.avatar
        index = next((i for i, a in enumerate(self._avatars) if current is not None
                      and a.content_hash == current.content_hash), -1 if current is not None else 0)
        self._state = LiveState(avatar=index, mirror_preview=config.mirror_preview, mirror_output=mirror_output,
                                zoom=base_zoom, offset=self.base_offset, stats=pipeline.show_stats,
                                best_frame=bool(best[0]()) if best else False, overlay=processor.overlay)
        if current is not None:
            # The starting avatar's remembered settings apply from the first frame.
            self._apply_settings(self._load(current))

    # -- state ---------------------------------------------------------------------------------------
    @property
    def state(self) -> LiveState:
        return self._state

    @property
    def avatars(self) -> tuple[Avatar, ...]:
        return self._avatars

    def _set(self, **changes: Any) -> LiveState:
        with self._lock:
            self._state = dataclasses.replace(self._state, **changes)
            return self._state

    def _toggle(self, field: str, on: bool | None) -> bool:
        value = not getattr(self._state, field) if on is None else bool(on)
        self._set(**{field: value})
        return value

    def notify(self, message: str, seconds: float = 2.5) -> None:
        """Show ``message`` in the preview for ``seconds`` (and log it)."""
        log.info("%s", message)
        self._messages.append((time.monotonic() + seconds, message))

    def _on_error(self, message: str) -> None:
        self.last_error = message
        self.notify(message, 5.0)

    def _on_prepare_error(self, avatar: Avatar, message: str) -> None:
        """The selection goes back to what is on screen, so next / previous continue from there."""
        self._on_error(message)
        with self._lock:
            selected = self._avatars[self._state.avatar] if self._state.avatar >= 0 else None
            showing = self.processor.avatar
            if selected is avatar and self.processor.pending is None and showing is not None:
                self._set(avatar=next((i for i, a in enumerate(self._avatars) if a is showing), -1))

    # -- dispatch ----------------------------------------------------------------------------------
    def execute(self, name: str, args: Mapping[str, Any] | None = None) -> LiveState:
        """Run command ``name`` with ``args`` (see :data:`COMMANDS`); returns the new state.
        Raises :class:`CommandError` for unknown commands, bad arguments or impossible requests."""
        kwargs = check_args(name, args)
        with self._lock:
            COMMANDS[name].run(self, **kwargs)
            return self._state

    # -- per-avatar settings -----------------------------------------------------------------------
    def _load(self, avatar: Avatar) -> AvatarSettings:
        if self.settings is None or not self.config.persist:
            return AvatarSettings()
        return self.settings.load(avatar.content_hash)

    def _apply_settings(self, saved: AvatarSettings) -> None:
        """Make ``saved`` (or the configured defaults) current; engine parts run on the processing thread."""
        zoom = min(max(saved.zoom, ZOOM_RANGE[0]), ZOOM_RANGE[1]) if saved.zoom is not None else self.base_zoom
        offset = saved.offset if saved.offset is not None else self.base_offset
        offset = tuple(min(max(v, -OFFSET_LIMIT), OFFSET_LIMIT) for v in offset)
        mirror = saved.mirror_output if saved.mirror_output is not None else self.base_mirror
        self._set(zoom=zoom, offset=offset, mirror_output=mirror)
        self.processor.set_crop(zoom, offset)
        self.processor.set_mirror(mirror)
        if saved.calibration is not None:
            calibration = saved.calibration
            self.processor.submit(lambda: self.engine.set_calibration(calibration))

    def _persist(self, avatar: Avatar | None, *, changed: bool = True) -> None:
        """Save ``avatar``'s settings (call on the processing thread, or when it is stopped).
        ``changed=False``: only when it was calibrated since the last save (best-frame search goes on
        improving the calibration after the first save); nothing is written for untouched avatars."""
        if avatar is None or self.settings is None or not self.config.persist:
            return
        if not changed and avatar.content_hash not in self._recalibrated:
            return
        self._recalibrated.discard(avatar.content_hash)
        s = self._state
        self.settings.save(avatar.content_hash, AvatarSettings(
            zoom=s.zoom, offset=s.offset, mirror_output=s.mirror_output, calibration=self.engine.get_calibration()))

    def _persist_soon(self) -> None:
        self.processor.submit(lambda: self._persist(self.processor.avatar))

    # -- avatars -----------------------------------------------------------------------------------
    def _select(self, index: int) -> None:
        avatar = self._avatars[index]
        self._set(avatar=index)
        saved = self._load(avatar)

        def install(new: Avatar, old: Avatar | None) -> None:  # on the processing thread, at the switch
            if old is new:
                return  # prepared again (an engine option changed): keep the live settings
            if old is not None:
                self._persist(old, changed=False)
            self._apply_settings(saved)

        if not self.processor.request_avatar(avatar, on_install=install):
            self.notify(f"preparing {avatar.name}...")

    @command("switch to avatar N (1-based, as the 1-9 keys) or by name",
             Param("index", "int", "1-based position in the avatar list"),
             Param("name", "string", "avatar name (photo file name without extension)"))
    def avatar(self, index: int | None = None, name: str | None = None) -> None:
        count = len(self._avatars)
        if (index is None) == (name is None):
            raise CommandError(f"'avatar' needs either index (1..{count}) or name")
        if index is not None:
            if not 1 <= index <= count:
                raise CommandError(f"no avatar {index}: choose 1..{count}", valid=[1, count])
            self._select(index - 1)
            return
        for i, a in enumerate(self._avatars):
            if a.name == name or (a.path is not None and a.path.stem == name):
                self._select(i)
                return
        names = [a.name for a in self._avatars]
        raise CommandError(f"no avatar named {name!r}; avatars: {', '.join(names)}", status=404, names=names)

    @command("next avatar")
    def next_avatar(self) -> None:
        self._select((self._state.avatar + 1) % len(self._avatars))

    @command("previous avatar")
    def prev_avatar(self) -> None:
        i = self._state.avatar
        self._select((i - 1) % len(self._avatars) if i >= 0 else 0)

    @command("re-scan the avatar folder (new, changed and removed photos)")
    def reload(self) -> None:
        if self._reload_fn is None:
            raise CommandError("this session has a fixed avatar list: there is no folder to reload")
        if self._reloader is not None and self._reloader.is_alive():
            self.notify("already reloading the avatars")
            return
        self.notify("reloading avatars...")
        self._reloader = threading.Thread(target=self._reload, name="avatarcam-reload", daemon=True)
        self._reloader.start()

    def _reload(self) -> None:
        try:
            avatars = tuple(self._reload_fn())
        except Exception as exc:  # noqa: BLE001 - reported in the preview, the stream goes on
            log.exception("avatar reload failed")
            self._on_error(f"reloading the avatars failed: {exc}")
            return
        if not avatars:
            self._on_error("the avatar folder has no usable photo now; keeping the current list")
            return
        with self._lock:
            selected = self._avatars[self._state.avatar] if self._state.avatar >= 0 else self.processor.avatar
            index = next((i for i, a in enumerate(avatars) if a.content_hash == selected.content_hash), -1)
            self._avatars = avatars
            self._set(avatar=index, reloads=self._state.reloads + 1)
        self.notify(f"{len(avatars)} avatars")

    # -- engine ------------------------------------------------------------------------------------
    @command("take the current pose as neutral (calibrate)")
    def calibrate(self) -> None:
        self._set(calibrations=self._state.calibrations + 1)

        def done() -> None:
            avatar = self.processor.avatar
            self._persist(avatar)
            self._recalibrated.add(avatar.content_hash)

        self.processor.calibrate(on_done=done)
        self.notify("calibrated: this pose is now neutral")

    @command("best-frame search: calibrate on the moment you look most like the avatar", _ON)
    def best_frame(self, on: bool | None = None) -> None:
        option = engine_option(self.engine, "find_best_frame")
        if option is None:
            raise CommandError(f"the {self.engine.name} engine has no best-frame search (the fomm engine has)")
        value = self._toggle("best_frame", on)
        _, set_option = option

        def run() -> None:
            set_option(value)
            # prepare() reads this option: prepare again (in the background), then calibrate.
            self.processor.forget_prepared()
            with self._lock:
                if self._state.avatar >= 0:
                    self._select(self._state.avatar)
                else:
                    self.processor.request_avatar(self.processor.avatar)
            self.engine.calibrate()

        self.processor.submit(run)
        self.notify(f"best-frame search {'on' if value else 'off'}")

    @command("show the real camera instead of the avatar", _ON)
    def passthrough(self, on: bool | None = None) -> None:
        value = self._toggle("passthrough", on)
        self.processor.set_passthrough(value)
        self.notify("real camera" if value else "avatar")

    @command("blur the background of the real camera", _ON)
    def blur(self, on: bool | None = None) -> None:
        value = self._toggle("blur", on)
        self.processor.blur = value
        if value and not self._state.passthrough and self.engine.name != "passthrough":
            self.notify("background blur is on for the real camera (key 0)")
        else:
            self.notify(f"background blur {'on' if value else 'off'}")

    # -- driver crop -------------------------------------------------------------------------------
    def _crop(self, zoom: float, offset: tuple[float, float], *, reset: bool = False) -> None:
        offset = (round(offset[0], 6), round(offset[1], 6))
        self._set(zoom=zoom, offset=offset)
        self.processor.set_crop(zoom, offset, reset=reset)
        self._persist_soon()

    @command("zoom the driver crop: step +1 = in, -1 = out (the W / S keys), or an absolute value",
             Param("step", "int", "zoom steps (+ in, - out)"),
             Param("value", "number", f"absolute zoom in [{ZOOM_RANGE[0]}, {ZOOM_RANGE[1]}]"))
    def zoom(self, step: int | None = None, value: float | None = None) -> None:
        if (step is None) == (value is None):
            raise CommandError("'zoom' needs either step (e.g. 1 or -1) or value")
        if value is not None:
            if not ZOOM_RANGE[0] <= value <= ZOOM_RANGE[1]:
                raise CommandError(f"zoom {value} is out of range: choose {ZOOM_RANGE[0]}..{ZOOM_RANGE[1]}")
            zoom = value
        else:
            zoom = min(max(self._state.zoom * self.config.zoom_step ** max(-50, min(50, step)), ZOOM_RANGE[0]),
                       ZOOM_RANGE[1])
        self._crop(zoom, self._state.offset)
        self.notify(f"zoom {zoom:.2f}")

    @command("move the driver crop by steps (dx, dy; + = right / down) or to an offset (x, y in crop sides)",
             Param("dx", "int", "steps right (negative: left)"), Param("dy", "int", "steps down (negative: up)"),
             Param("x", "number", "absolute horizontal offset in [-1, 1]"),
             Param("y", "number", "absolute vertical offset in [-1, 1]"))
    def move(self, dx: int | None = None, dy: int | None = None, x: float | None = None,
             y: float | None = None) -> None:
        if dx is None and dy is None and x is None and y is None:
            raise CommandError("'move' needs dx / dy (steps) or x / y (offset)")
        for v in (x, y):
            if v is not None and abs(v) > OFFSET_LIMIT:
                raise CommandError(f"offset {v} is out of range: choose -{OFFSET_LIMIT}..{OFFSET_LIMIT}")
        ox, oy = self._state.offset
        step = self.config.move_step

        def clamp(v: float) -> float:
            return min(max(v, -OFFSET_LIMIT), OFFSET_LIMIT)

        ox = x if x is not None else clamp(ox + (dx or 0) * step)
        oy = y if y is not None else clamp(oy + (dy or 0) * step)
        self._crop(self._state.zoom, (ox, oy))

    @command("reset the driver crop (zoom and position) and find the face again")
    def reset_crop(self) -> None:
        self._crop(self.base_zoom, self.base_offset, reset=True)
        self.notify("crop reset")

    # -- output and preview ------------------------------------------------------------------------
    @command("mirror the preview (the output is unchanged)", _ON)
    def mirror_preview(self, on: bool | None = None) -> None:
        self._toggle("mirror_preview", on)

    @command("mirror the output (what the call sees)", _ON)
    def mirror_output(self, on: bool | None = None) -> None:
        value = self._toggle("mirror_output", on)
        self.processor.set_mirror(value)
        self._persist_soon()
        self.notify(f"output mirror {'on' if value else 'off'}")

    @command("hold the current output frame", _ON)
    def freeze(self, on: bool | None = None) -> None:
        value = self._toggle("freeze", on)
        self.pipeline.freeze = value

    @command("show the 'be right back' picture instead of the avatar", _ON)
    def brb(self, on: bool | None = None) -> None:
        value = self._toggle("brb", on)
        self.pipeline.still = self.still if value else None

    @command("statistics in the preview (fps, latency, drops)", _ON)
    def stats(self, on: bool | None = None) -> None:
        self.pipeline.show_stats = self._toggle("stats", on)

    @command("landmarks and a ghost of the avatar in the preview, to line up your face", _ON)
    def overlay(self, on: bool | None = None) -> None:
        self.processor.overlay = self._toggle("overlay", on)

    @command("the hotkey help in the preview", _ON)
    def help(self, on: bool | None = None) -> None:
        self._toggle("help", on)

    @command("stop avatarcam")
    def quit(self) -> None:
        self.pipeline.stop()

    # -- read-outs -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The state plus what the loop measures, as plain JSON-able data."""
        s = self._state
        snap = self.pipeline.stats.snapshot()
        current, pending = self.processor.avatar, self.processor.pending
        avatars = self._avatars

        def num(v: float) -> float | None:
            return round(v, 2) if math.isfinite(v) else None

        state = dataclasses.asdict(s)
        state["avatar"] = s.avatar + 1 if s.avatar >= 0 else None
        state["offset"] = list(s.offset)
        return {
            "avatar": {"index": s.avatar + 1 if s.avatar >= 0 else None,
                       "name": avatars[s.avatar].name if s.avatar >= 0 else (current.name if current else None),
                       "showing": current.name if current is not None else None,
                       "switching_to": pending.name if pending is not None else None,
                       "count": len(avatars), "names": [a.name for a in avatars]},
            "engine": self.engine.name,
            "camera": self.pipeline.capture_status,
            "fps": {"input": num(snap.input_fps), "engine": num(snap.engine_fps), "output": num(snap.output_fps)},
            "latency_ms": {"p50": num(snap.latency_ms[0]), "p95": num(snap.latency_ms[1])},
            "dropped": {"capture": snap.dropped_capture, "engine": snap.dropped_engine,
                        "repeated": snap.repeated_output},
            "frames_out": snap.frames_out,
            "state": state,
            "last_error": self.last_error,
        }

    def overlay_lines(self) -> tuple[str, ...]:
        """Preview text: what is on (freeze, brb, real camera), a switch in progress, recent messages."""
        s = self._state
        lines = [label for on, label in ((s.freeze, "FROZEN"), (s.brb, "BE RIGHT BACK is on"),
                                         (s.passthrough, "REAL CAMERA")) if on]
        pending = self.processor.pending
        if pending is not None:
            lines.append(f"switching to {pending.name}...")
        now = time.monotonic()
        lines.extend(text for until, text in list(self._messages) if until > now)
        return tuple(lines)

    def preview_layers(self, layers: PreviewLayers | None) -> PreviewLayers | None:
        """Add the preview mirroring and the help panel to a frame's preview layers."""
        s = self._state
        if not s.mirror_preview and not s.help:
            return layers
        from avatarcam.hotkeys import help_lines

        return dataclasses.replace(layers or PreviewLayers(), mirror=s.mirror_preview,
                                   panel=help_lines() if s.help else ())

    def close(self) -> None:
        """Finish a running reload and save a calibration taken since the last save (after the loop stopped)."""
        if self._reloader is not None and self._reloader.is_alive():
            self._reloader.join(timeout=60.0)
        try:
            self._persist(self.processor.avatar, changed=False)
        except Exception:  # noqa: BLE001 - never block shutdown on a settings file
            log.exception("could not save the avatar settings")

"""One driving frame through the per-frame stages: landmarks -> driver crop -> engine -> compositing.

Shared by the live loop (on its processing thread) and offline rendering, so both produce the
same pixels for the same input. The live controls act on it between frames:

- avatar switches are prepared on a background thread while the old avatar keeps streaming,
  then installed between two frames and cross-faded (never a half-prepared or torn frame:
  every output is a whole new array);
- engine-touching commands (calibrate, options, crop) are queued with :meth:`submit` and run
  on the processing thread before the next frame, so the engine never sees two threads at once
  (except ``prepare``, which engines must allow alongside ``animate``);
- the real-camera view (passthrough), background blur and the preview-only alignment layers.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Protocol

import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.compositing import Compositor, crossfade
from avatarcam.engines.base import Drive, Engine
from avatarcam.frame import Frame, OutputFrame, PreviewLayers
from avatarcam.geometry import Box
from avatarcam.landmarks.types import LandmarkResult
from avatarcam.mailbox import Mailbox
from avatarcam.stats import Stats

log = logging.getLogger(__name__)

DRIVER_COLOUR = (0, 255, 0)  # preview landmark colours (RGB)
AVATAR_COLOUR = (255, 64, 64)

#: Called on the processing thread when a switch is installed: ``(new_avatar, old_avatar)``.
InstallHook = Callable[[Avatar, "Avatar | None"], None]


class Tracker(Protocol):
    def detect(self, image: np.ndarray, timestamp_ms: int | None = None) -> LandmarkResult: ...


class Cropper(Protocol):
    def update(self, result: LandmarkResult, frame_size: tuple[int, int], t: float) -> Box: ...


class FrameProcessor:
    """Runs the per-frame stages for one engine and one current avatar.

    Prepared avatars are cached by content hash (the ``cache_size`` most recent), so switching back
    to an avatar is instant. ``tracker`` and ``cropper`` are optional: without them the driver crop
    is the centred square (zoomed and offset by :meth:`set_crop`). ``crossfade_s``: how long an
    avatar switch or a passthrough toggle blends from the last frame into the new one.
    """

    def __init__(self, *, engine: Engine, compositor: Compositor, tracker: Tracker | None = None,
                 cropper: Cropper | None = None, stats: Stats | None = None, crossfade_s: float = 0.0,
                 cache_size: int = 16) -> None:
        if crossfade_s < 0:
            raise ValueError(f"crossfade_s must be >= 0, got {crossfade_s}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.engine, self.compositor, self.tracker, self.cropper = engine, compositor, tracker, cropper
        self.stats = stats or Stats()
        self.crossfade_s = crossfade_s
        # Voice-driven expression (avatarcam.audio.SyntheticDriver) used when the face is lost, or always.
        self.voice: Any = None
        self._cache_size = cache_size
        self._prepared: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.avatar: Avatar | None = None
        self._state: Any = None
        self._last_ts = -1
        self.last_landmarks: LandmarkResult | None = None
        self.last_box: Box | None = None
        # Live controls. Plain attributes are read once per frame; writes from other threads are atomic.
        self.passthrough = False  # show the real camera instead of the engine
        self.blur = False  # blur the background of the real camera
        self.overlay = False  # preview-only landmarks + avatar ghost
        self.blur_factory: Callable[[], Any] | None = None
        self._blur: Any = None
        self._zoom, self._offset = 1.0, (0.0, 0.0)  # the centred crop's controls when there is no cropper
        self._lock = threading.Lock()
        self._actions: collections.deque[Callable[[], None]] = collections.deque()
        self._generation = 0
        self._ready: tuple[Avatar, Any, InstallHook | None] | None = None
        self.pending: Avatar | None = None  # being prepared in the background
        self.last_error: str | None = None
        self.on_error: Callable[[str], None] | None = None
        #: Called on the preparer thread when an avatar cannot be prepared: ``(avatar, message)``.
        self.on_prepare_error: Callable[[Avatar, str], None] | None = None
        self._requests: Mailbox[tuple[int, Avatar, InstallHook | None]] = Mailbox()
        self._preparer: threading.Thread | None = None
        self._fade: tuple[float, np.ndarray] | None = None
        self._last_out: np.ndarray | None = None
        self._ghosts: dict[tuple, np.ndarray] = {}
        self._calibrated: Callable[[], None] | None = None

    # -- avatars ---------------------------------------------------------------------------------
    def _key(self, avatar: Avatar) -> str:
        h, w = avatar.image.shape[:2]  # the same photo at another resolution is prepared apart
        return f"{self.engine.name}:{avatar.content_hash}:{w}x{h}"

    def cached(self, avatar: Avatar) -> bool:
        with self._lock:
            return self._key(avatar) in self._prepared

    def prepare(self, avatar: Avatar) -> Any:
        """Engine state for ``avatar``, computed once per content hash (thread-safe)."""
        key = self._key(avatar)
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        t0 = time.perf_counter()
        state = self.engine.prepare(avatar)
        self.stats.stage("prepare", time.perf_counter() - t0)
        with self._lock:
            self._prepared[key] = state
            while len(self._prepared) > self._cache_size:
                self._prepared.popitem(last=False)
        return state

    def forget_prepared(self) -> None:
        """Drop every cached prepared state (after an engine option that ``prepare`` reads changed)."""
        with self._lock:
            self._prepared.clear()

    def set_avatar(self, avatar: Avatar) -> None:
        """Prepare ``avatar`` now and make it current (before the loop starts, or offline)."""
        state = self.prepare(avatar)
        self.avatar, self._state = avatar, state

    def request_avatar(self, avatar: Avatar, *, on_install: InstallHook | None = None) -> bool:
        """Switch to ``avatar`` without stalling: prepared on a background thread unless cached,
        installed between two frames, then cross-faded. A later request supersedes an earlier
        one that is still preparing. ``on_install(new, old)`` runs on the processing thread right
        at the switch. Returns True when the avatar was already prepared (switch on the next frame).
        """
        key = self._key(avatar)
        with self._lock:
            self._generation += 1
            generation = self._generation
            state = self._prepared.get(key)
            if state is not None:
                self._ready = (avatar, state, on_install)
                self.pending = None
                return True
            self.pending = avatar
        if self._preparer is None:
            self._preparer = threading.Thread(target=self._prepare_loop, name="avatarcam-prepare", daemon=True)
            self._preparer.start()
        self._requests.put((generation, avatar, on_install))
        return False

    def _prepare_loop(self) -> None:
        while True:
            item = self._requests.get(timeout=0.5)
            if item is None:
                if self._requests.closed:
                    return
                continue
            generation, avatar, on_install = item
            try:
                state = self.prepare(avatar)
            except Exception as exc:  # noqa: BLE001 - a bad avatar must not stop the stream
                message = f"avatar {avatar.name!r} could not be prepared: {exc}"
                log.warning("%s; keeping the current avatar", message)
                with self._lock:
                    if generation == self._generation:
                        self.pending = None
                self.last_error = message
                if self.on_prepare_error is not None:
                    self.on_prepare_error(avatar, message)
                elif self.on_error is not None:
                    self.on_error(message)
                continue
            with self._lock:
                if generation == self._generation:  # not superseded while preparing
                    self._ready = (avatar, state, on_install)
                    self.pending = None

    def _install_ready(self) -> bool:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return False
        avatar, state, on_install = ready
        old = self.avatar
        if on_install is not None:
            on_install(avatar, old)
        if old is not None and avatar is not old:
            self._start_fade()
        self.avatar, self._state = avatar, state
        return True

    def _start_fade(self) -> None:
        if self.crossfade_s > 0 and self._last_out is not None:
            self._fade = (time.perf_counter(), self._last_out)

    # -- controls (thread-safe; engine work runs on the processing thread) -------------------------
    def submit(self, action: Callable[[], None]) -> None:
        """Run ``action()`` on the processing thread before the next frame."""
        self._actions.append(action)

    def _run_actions(self) -> None:
        while self._actions:
            action = self._actions.popleft()
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - a failed control must not stop the stream
                log.exception("live control failed")
                self.last_error = f"control failed: {exc}"
                if self.on_error is not None:
                    self.on_error(self.last_error)

    def calibrate(self, on_done: Callable[[], None] | None = None) -> None:
        """Calibrate on the next frame; ``on_done()`` runs on the processing thread after that frame."""

        def run() -> None:
            self.engine.calibrate()
            self._calibrated = on_done

        self.submit(run)

    def set_passthrough(self, on: bool) -> None:
        """Show the real camera (True) or the avatar, cross-fading between them."""

        def run() -> None:
            if on != self.passthrough:
                self._start_fade()
                self.passthrough = on

        self.submit(run)

    def set_crop(self, zoom: float, offset: tuple[float, float], *, reset: bool = False) -> None:
        """Driver crop zoom (> 1 = tighter) and offset (crop sides); ``reset`` also re-finds the face."""

        def run() -> None:
            if self.cropper is not None:
                self.cropper.zoom = zoom
                self.cropper.offset = offset
                if reset and hasattr(self.cropper, "reset"):
                    self.cropper.reset()
            self._zoom, self._offset = zoom, offset

        self.submit(run)

    def set_mirror(self, on: bool) -> None:
        def run() -> None:
            self.compositor.mirror = on

        self.submit(run)

    # -- per frame -------------------------------------------------------------------------------
    def drive_for(self, frame: Frame) -> Drive:
        """Landmarks and the driver crop box for ``frame``."""
        result = None
        w, h = frame.size
        if self.tracker is not None:
            t0 = time.perf_counter()
            # MediaPipe's video mode needs strictly increasing timestamps.
            ts = max(self._last_ts + 1, int(frame.t_capture * 1000))
            self._last_ts = ts
            result = self.tracker.detect(frame.image, ts)
            self.stats.stage("landmarks", time.perf_counter() - t0)
        if self.cropper is not None and result is not None:
            box = self.cropper.update(result, (w, h), frame.t_capture)
        else:
            side = min(w, h) / self._zoom
            box = Box(w / 2.0 + self._offset[0] * side, h / 2.0 + self._offset[1] * side, side)
        self.last_landmarks, self.last_box = result, box
        expression = None
        if self.voice is not None:
            tracked = result is not None and result.face is not None
            if self.voice.applies(tracked):
                expression = self.voice.current(frame.t_capture)
        return Drive(frame=frame, box=box, landmarks=result, expression=expression)

    def animate(self, drive: Drive) -> np.ndarray:
        """Engine output (before compositing) for ``drive`` against the current avatar."""
        t0 = time.perf_counter()
        image = self.engine.animate(self._state, drive)
        self.stats.stage("engine", time.perf_counter() - t0)
        return image

    def _blurred(self, frame: Frame) -> Frame:
        if self._blur is None:
            if self.blur_factory is None:
                from avatarcam.background import BackgroundBlur

                self.blur_factory = BackgroundBlur
            self._blur = self.blur_factory()
        t0 = time.perf_counter()
        image = self._blur.apply(frame.image)
        self.stats.stage("blur", time.perf_counter() - t0)
        return Frame(image, frame.index, frame.t_capture)

    def process(self, frame: Frame) -> OutputFrame:
        # What was asked before a switch still belongs to the old avatar (e.g. saving its crop); what the
        # switch hook queues (the new avatar's crop, mirror, calibration) applies from this frame on.
        self._run_actions()
        if self._install_ready():
            self._run_actions()
        if self.avatar is None:
            raise RuntimeError("FrameProcessor.set_avatar must be called before process")
        real_camera = self.passthrough
        if self.blur and (real_camera or self.engine.name == "passthrough"):
            frame = self._blurred(frame)
        drive: Drive | None = None
        if real_camera:
            image = frame.image
            if self.overlay and self.tracker is not None:
                drive = self.drive_for(frame)
        else:
            drive = self.drive_for(frame)
            image = self.animate(drive)
            if self._calibrated is not None:
                done, self._calibrated = self._calibrated, None
                done()
        t0 = time.perf_counter()
        avatar = self.avatar
        focus = (avatar.face.box if avatar is not None and avatar.face is not None
                 and image.shape[:2] == avatar.image.shape[:2] else None)
        out = self.compositor.compose(image, focus)
        if self._fade is not None:
            start, old = self._fade
            t = (time.perf_counter() - start) / self.crossfade_s
            if t >= 1.0 or old.shape != out.shape:
                self._fade = None
            else:
                out = crossfade(old, out, t)
        self._last_out = out
        self.stats.stage("compose", time.perf_counter() - t0)
        preview = self._preview(image, drive, real_camera) if self.overlay else None
        self.stats.event("engine")
        return OutputFrame(out, frame.index, frame.t_capture, preview=preview)

    # -- preview-only alignment layers ---------------------------------------------------------------
    def _output_is_photo(self, image: np.ndarray) -> bool:
        """Whether the engine returned the whole avatar photo (else a square face crop)."""
        if self.engine.name == "passthrough":
            return False
        for owner in (self.engine, getattr(self.engine, "options", None)):
            mode = getattr(owner, "output", None)
            if mode in ("photo", "crop"):
                return mode == "photo"
        return image.shape[:2] == self.avatar.image.shape[:2]

    def _preview(self, image: np.ndarray, drive: Drive | None, real_camera: bool) -> PreviewLayers:
        """Driver landmarks (green) and avatar landmarks (red) in output pixels, plus the avatar as a
        ghost: the user lines their face up with the avatar's (zoom / move the crop)."""
        h, w = image.shape[:2]
        avatar = self.avatar
        face = drive.landmarks.face if drive is not None and drive.landmarks is not None else None
        driver_pts = face.points[:, :2].astype(np.float32) if face is not None else None
        avatar_pts = avatar.face.landmarks[:, :2].astype(np.float32) if avatar.face is not None else None
        ghost = None
        photo, abox = False, avatar.box
        focus = avatar.face.box if avatar.face is not None else None
        if real_camera:
            avatar_pts = None  # the camera frame has no avatar in it
        else:
            side = drive.box.side
            if driver_pts is not None:
                driver_pts = (driver_pts - (drive.box.x0, drive.box.y0)) / side  # in crop units [0, 1]
            photo = self._output_is_photo(image)
            if photo:
                if driver_pts is not None:
                    driver_pts = driver_pts * abox.side + (abox.x0, abox.y0)
            else:
                if driver_pts is not None:
                    driver_pts = driver_pts * w
                if avatar_pts is not None:
                    avatar_pts = (avatar_pts - (abox.x0, abox.y0)) * (w / abox.side)
            key = (avatar.content_hash, photo, w, h, self.compositor.mirror)
            ghost = self._ghosts.get(key)
            if ghost is None:
                self._ghosts = {key: self.compositor.compose(avatar.image if photo else avatar.crop(w),
                                                             focus if photo else None)}
                ghost = self._ghosts[key]
        points = []
        for pts, colour in ((avatar_pts, AVATAR_COLOUR), (driver_pts, DRIVER_COLOUR)):
            if pts is not None:
                points.append((self.compositor.map_points(pts, (w, h), focus if photo else None), colour))
        return PreviewLayers(ghost=ghost, points=tuple(points))

    def close(self) -> None:
        """Stop the background preparer and release the segmenter (idempotent)."""
        self._requests.close()
        if self._preparer is not None and self._preparer.is_alive():
            self._preparer.join(timeout=30.0)
        if self._blur is not None:
            self._blur.close()
            self._blur = None

    def __enter__(self) -> "FrameProcessor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

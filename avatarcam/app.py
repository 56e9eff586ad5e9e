"""Builds the pipeline's parts from an :class:`~avatarcam.config.AppConfig` (no argv here)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

from avatarcam.avatars.types import Avatar
from avatarcam.compositing import Compositor
from avatarcam.config import AppConfig
from avatarcam.engines import Engine, create_engine
from avatarcam.errors import AvatarError, NoVirtualCameraError, SinkError
from avatarcam.sinks.base import Sink

log = logging.getLogger(__name__)

#: A live session shrinks an avatar photo only when that takes its sides down to this share or less.
FIT_MAX_SCALE = 0.85


def engine_options(config: AppConfig) -> dict[str, Any]:
    """Constructor keywords for the configured engine."""
    e = config.engine
    if e.name == "passthrough":
        return {"size": e.size}
    if e.name == "mesh":
        return {"size": e.size, "output": e.output, "device": e.device, **dataclasses.asdict(config.mesh)}
    if e.name == "fomm":
        from avatarcam.weights.store import resolve_fomm_weights

        checkpoint, fomm_yaml = resolve_fomm_weights(e.weights)
        return {"checkpoint": str(checkpoint), "config": str(fomm_yaml), "device": e.device, "fp16": e.fp16,
                "output": e.output, "find_best_frame": e.find_best_frame}
    return {}


def build_engine(config: AppConfig) -> Engine:
    return create_engine(config.engine.name, **engine_options(config))


def build_tracker(config: AppConfig):
    """The live (video-mode) landmark tracker."""
    from avatarcam.landmarks import create_tracker

    return create_tracker(config.tracker, mode="video")


def build_cropper(config: AppConfig):
    if not config.crop.follow:
        return None
    from avatarcam.crop import DriverCrop

    c = config.crop
    return DriverCrop(margin=c.margin, zoom=c.zoom, offset=tuple(c.offset), hold_s=c.hold_s, ease_s=c.ease_s)


def build_compositor(config: AppConfig, *, width: int | None = None, height: int | None = None) -> Compositor:
    o = config.output
    return Compositor(width=width or o.width, height=height or o.height, fit=o.fit, mirror=o.mirror, pad=o.pad)


def fit_avatar(avatar: Avatar, compositor: Compositor, crop_size: int | None = None) -> Avatar:
    """``avatar`` at the resolution a live session needs: its photo shrunk to the size the output
    canvas shows it at, but never so far that the face box falls below ``crop_size`` (the engine's
    face crop). A 12-megapixel phone photo would otherwise be warped and pasted back at full size
    every frame, only to be shrunk again into a 1280 x 720 canvas."""
    focus = avatar.face.box if avatar.face is not None else None
    scale = compositor.photo_scale((avatar.image.shape[1], avatar.image.shape[0]), focus)
    if crop_size:
        scale = max(scale, crop_size / max(avatar.box.side, 1.0))
    if scale > FIT_MAX_SCALE:
        return avatar
    fitted = avatar.scaled(scale)
    log.info("avatar %s: photo %dx%d used at %dx%d for a %sx%s output", avatar.name, avatar.image.shape[1],
             avatar.image.shape[0], fitted.image.shape[1], fitted.image.shape[0], compositor.width, compositor.height)
    return fitted


def build_sinks(config: AppConfig, *, on_key: Callable[[int], None] | None = None) -> list[Sink]:
    """Open the configured sinks. A missing virtual camera is reported once and skipped when another
    sink (the preview) can keep the app useful; alone, it is an error."""
    sinks: list[Sink] = []
    problems: list[str] = []
    kinds = config.sinks.kinds
    try:
        for kind in kinds:
            if kind == "virtualcam":
                from avatarcam.sinks.virtualcam import VirtualCameraSink

                try:
                    sinks.append(VirtualCameraSink(width=config.output.width, height=config.output.height,
                                                   fps=config.output.fps, device=config.sinks.virtualcam_device,
                                                   backend=config.sinks.virtualcam_backend))
                    log.info("virtual camera: %s (%s)", sinks[-1].device, sinks[-1].backend)
                except NoVirtualCameraError as exc:
                    problems.append(str(exc))
            elif kind == "window":
                from avatarcam.sinks.window import WindowSink

                try:
                    sinks.append(WindowSink(on_key=on_key))
                except SinkError as exc:
                    problems.append(str(exc))
            elif kind == "file":
                from avatarcam.sinks.file import FileSink

                sinks.append(FileSink(path=config.sinks.file, fps=config.output.fps))
            elif kind == "null":
                from avatarcam.sinks.memory import NullSink

                sinks.append(NullSink())
    except BaseException:
        for s in sinks:
            s.close()
        raise
    if not sinks:
        raise SinkError("no output could be opened:\n" + "\n".join(problems))
    for p in problems:
        log.warning("%s", p)
    return sinks


def load_avatars(config: AppConfig):
    """The avatar library (the user's folder plus the built-in default)."""
    from avatarcam.avatars.library import AvatarLibrary

    folder = Path(config.avatars.folder)
    library = AvatarLibrary(folder=folder if folder.is_dir() else None, cache_dir=config.avatars.cache_dir)
    for path, problem in library.problems:
        log.warning("avatar %s skipped: %s", path, problem)
    return library


def pick_avatar(config: AppConfig, library=None) -> Avatar:
    """The avatar named by ``config.avatars.avatar``: a file path, a library name or 1-based index;
    default: the first in the library."""
    from avatarcam.avatars.library import load_avatar

    spec = config.avatars.avatar
    if spec and Path(spec).is_file():
        return load_avatar(Path(spec), cache_dir=config.avatars.cache_dir)
    library = library if library is not None else load_avatars(config)
    if not spec:
        if len(library) == 0:
            raise AvatarError("no usable avatar: add photos to the avatars/ folder or pass --avatar PHOTO")
        return library[0]
    if spec.isdigit() and 1 <= int(spec) <= len(library):
        return library[int(spec) - 1]
    for avatar in library:
        if avatar.name == spec or (avatar.path is not None and avatar.path.stem == spec):
            return avatar
    raise AvatarError(f"avatar {spec!r} not found: not a file, and the library has {library.names}")

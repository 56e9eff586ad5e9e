"""The ``avatarcam`` command line: run, render, devices, doctor, config, weights, serve."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from avatarcam.errors import AvatarcamError

log = logging.getLogger("avatarcam")

# The stage each CLI flag fills: flag dest -> (section, field).
_FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "camera": ("capture", "source"),
    "capture_width": ("capture", "width"),
    "capture_height": ("capture", "height"),
    "capture_fps": ("capture", "fps"),
    "engine": ("engine", "name"),
    "size": ("engine", "size"),
    "output_mode": ("engine", "output"),
    "device": ("engine", "device"),
    "fp16": ("engine", "fp16"),
    "weights": ("engine", "weights"),
    "find_best_frame": ("engine", "find_best_frame"),
    "mouth_fill": ("mesh", "mouth_fill"),
    "width": ("output", "width"),
    "height": ("output", "height"),
    "fps": ("output", "fps"),
    "fit": ("output", "fit"),
    "mirror": ("output", "mirror"),
    "pad": ("output", "pad"),
    "vcam_device": ("sinks", "virtualcam_device"),
    "vcam_backend": ("sinks", "virtualcam_backend"),
    "out": ("sinks", "file"),
    "avatar": ("avatars", "avatar"),
    "avatars": ("avatars", "folder"),
    "follow": ("crop", "follow"),
    "zoom": ("crop", "zoom"),
    "audio": ("audio", "enabled"),
    "audio_in": ("audio", "input_device"),
    "audio_out": ("audio", "output_device"),
    "audio_delay": ("audio", "delay"),
    "voice_mode": ("audio", "voice_mode"),
    "api": ("api", "enabled"),
    "api_port": ("api", "port"),
    "api_host": ("api", "host"),
    "api_token": ("api", "token"),
    "api_allow_remote": ("api", "allow_remote"),
    "brb_image": ("controls", "brb_image"),
    "persist": ("controls", "persist"),
}


def _delay(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--audio-delay must be 'auto' or seconds, got {text!r}") from None


def _device(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["mesh", "fomm", "passthrough"], help="reenactment engine (default: mesh)")
    g.add_argument("--size", type=int, help="square face size the engine renders (mesh 512, fomm 256)")
    g.add_argument("--output-mode", choices=["photo", "crop"], help="whole avatar photo or face crop only")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="half precision on CUDA")
    g.add_argument("--weights", help="FOMM checkpoint name (see `avatarcam weights list`) or path")
    g.add_argument("--find-best-frame", action="store_true", default=None,
                   help="calibrate on the driver frame that best matches the avatar's expression")
    g.add_argument("--mouth-fill", choices=["synthetic", "driver"],
                   help="mesh engine: an open mouth shows a drawn interior (synthetic, default) or the driver's own")
    g.add_argument("--avatar", help="avatar photo path, or a name / 1-based index in the avatar folder")
    g.add_argument("--avatars", help="avatar folder (default: avatars/)")
    g.add_argument("--no-follow", dest="follow", action="store_false", default=None,
                   help="fixed centred driver crop instead of following the face")
    g.add_argument("--zoom", type=float, help="driver crop zoom (> 1 = tighter)")


def _add_live_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--camera", help="camera index (0), device path (/dev/video0), or a video/image file")
    g.add_argument("--driving", help="a video file to use as the camera (loops)")
    g.add_argument("--no-loop", action="store_true", help="stop at the end of --driving instead of looping")
    g.add_argument("--capture-width", type=int)
    g.add_argument("--capture-height", type=int)
    g.add_argument("--capture-fps", type=float)
    g.add_argument("--no-mjpg", action="store_true", help="do not ask the camera for MJPG")
    o = p.add_argument_group("output")
    o.add_argument("--width", type=int, help="output width (default 1280)")
    o.add_argument("--height", type=int, help="output height (default 720)")
    o.add_argument("--fps", type=float, help="output fps (default 30)")
    o.add_argument("--fit", choices=["face", "letterbox", "crop", "stretch"],
                   help="face: frame the photo around the face (default); letterbox: whole photo")
    o.add_argument("--pad", choices=["blur", "black"],
                   help="what fills the bars when the picture does not fill the frame (default blur)")
    o.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None, help="mirror the output")
    o.add_argument("--sink", action="append", choices=["virtualcam", "window", "file", "null"],
                   help="output(s); repeatable (default: virtualcam and window)")
    o.add_argument("--out", help="file for --sink file (mp4)")
    o.add_argument("--vcam-device", help="virtual camera device, e.g. /dev/video10")
    o.add_argument("--vcam-backend", help="pyvirtualcam backend, e.g. v4l2loopback, obs, unitycapture")
    o.add_argument("--stats", action="store_true", default=None, help="show stats in the preview and print them")
    o.add_argument("--duration", type=float, help="stop after this many seconds")
    c = p.add_argument_group("controls")
    c.add_argument("--api", action="store_true", default=None,
                   help="local HTTP/WebSocket control API (hotkeys while Zoom/OBS has focus)")
    c.add_argument("--api-port", type=int, help="control API port (implies --api)")
    c.add_argument("--api-host", help="control API bind address (default 127.0.0.1)")
    c.add_argument("--api-token", help="control API token (default: generated once and stored)")
    c.add_argument("--api-allow-remote", action="store_true", default=None,
                   help="allow a non-loopback API bind (token still required)")
    c.add_argument("--brb-image", help="picture for the 'be right back' key (B)")
    c.add_argument("--no-persist", dest="persist", action="store_false", default=None,
                   help="do not remember per-avatar calibration, crop and mirror")
    a = p.add_argument_group("audio")
    a.add_argument("--audio", action=argparse.BooleanOptionalAction, default=None,
                   help="pass the microphone through, delayed to match the video (lip sync)")
    a.add_argument("--audio-in", type=_device, help="input device (index, name, or a PulseAudio source)")
    a.add_argument("--audio-out", type=_device, help="output device, e.g. a virtual cable or PulseAudio null sink")
    a.add_argument("--audio-delay", type=_delay, help="'auto' (follow the video latency) or seconds")
    a.add_argument("--voice-mode", choices=["fallback", "always", "off"],
                   help="voice drives the mouth when the face is lost (fallback) or always")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatarcam", description="A still photo as a live, animated webcam.")
    _add_global_args(parser, default_config=None, default_verbose=0)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="live: camera -> engine -> virtual camera + preview")
    _add_engine_args(p)
    _add_live_args(p)
    _add_worker_args(p)

    p = sub.add_parser("render", help="offline: render every frame of a driving video to a file")
    _add_engine_args(p)
    p.add_argument("--driving", required=True, help="driving video")
    p.add_argument("--out", required=True, help="output video (.mp4)")
    p.add_argument("--max-frames", type=int, help="render only the first N frames")
    p.add_argument("--no-progress", action="store_true")
    _add_worker_args(p)

    sub.add_parser("devices", help="list cameras, virtual camera backends and audio devices")
    sub.add_parser("doctor", help="check the installation; each item OK or a fix to try")

    p = sub.add_parser("config", help="show the effective configuration")
    p.add_argument("--print", action="store_true", required=True, help="print it as TOML")
    _add_engine_args(p)
    _add_live_args(p)

    try:
        from avatarcam.weights.cli import register as register_weights
    except ImportError:  # pragma: no cover - the weights CLI ships with the package
        register_weights = None
    if register_weights is not None:
        register_weights(sub)
    try:
        from avatarcam.remote.cli import add_serve_parser
    except ImportError:  # pragma: no cover
        add_serve_parser = None
    if add_serve_parser is not None:
        add_serve_parser(sub)
    # The global options work after the command too (`avatarcam run --config my.toml -v`); there
    # they only override what was given before it.
    for command in sub.choices.values():
        _add_global_args(command, default_config=argparse.SUPPRESS, default_verbose=argparse.SUPPRESS)
    return parser


def _add_global_args(p: argparse.ArgumentParser, *, default_config: Any, default_verbose: Any) -> None:
    p.add_argument("--config", default=default_config, help="TOML config file (see `avatarcam config --print`)")
    p.add_argument("-v", "--verbose", action="count", default=default_verbose,
                   help="more log detail (-vv: debug, and every line of the native libraries)")


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    try:
        from avatarcam.remote.cli import add_worker_args
    except ImportError:  # pragma: no cover
        return
    add_worker_args(p)


def resolve_config(args: argparse.Namespace):
    """Defaults <- TOML file <- command-line flags."""
    from avatarcam.config import load_config, with_overrides

    config = load_config(getattr(args, "config", None))
    overrides: dict[str, dict[str, Any]] = {}
    for dest, (section, name) in _FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.setdefault(section, {})[name] = value
    driving = getattr(args, "driving", None)
    if driving and getattr(args, "command", None) != "render":
        overrides.setdefault("capture", {}).update(source=driving, loop=not getattr(args, "no_loop", False))
    if getattr(args, "api_port", None) is not None:
        overrides.setdefault("api", {})["enabled"] = True
    if getattr(args, "no_mjpg", False):
        overrides.setdefault("capture", {})["mjpg"] = False
    sinks = getattr(args, "sink", None)
    if sinks:
        overrides.setdefault("sinks", {})["kinds"] = tuple(dict.fromkeys(sinks))
    elif getattr(args, "out", None) and getattr(args, "command", None) == "run":
        overrides.setdefault("sinks", {})["kinds"] = (*config.sinks.kinds, "file")
    config = with_overrides(config, overrides)
    if getattr(args, "stats", None):
        import dataclasses

        config = dataclasses.replace(config, stats=True)
    return config


def cmd_config(args: argparse.Namespace) -> int:
    from avatarcam.config import to_toml

    sys.stdout.write(to_toml(resolve_config(args)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from avatarcam.live import LiveSession

    config = resolve_config(args)
    # SIGTERM (a service manager, `timeout`, closing the terminal) ends the loop like Q, so files are
    # finalised and the camera released instead of being cut off mid-write. The handler stays until the
    # session is closed: a SIGTERM often comes twice (`timeout` signals the process group and `make`
    # passes its own on), and one arriving after the loop but before the sinks close must not kill the
    # process with a half-written file. request_stop, not stop: the handler may interrupt the main
    # thread while it holds the lock that stop() takes.
    live: list[LiveSession] = []
    terminated = False

    def on_sigterm(*_: object) -> None:
        nonlocal terminated
        terminated = True
        if live:
            live[0].pipeline.request_stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with LiveSession(config=config, engine_factory=lambda cfg: _engine_for(args, cfg)) as session:
            live.append(session)
            if terminated:  # asked to stop while the session was starting
                session.pipeline.request_stop()
            session.run(duration=getattr(args, "duration", None))
            if config.stats:
                print(json.dumps(session.pipeline.stats.snapshot().as_dict(), indent=2))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _engine_for(args: argparse.Namespace, config):
    """The local engine, or a remote one when --worker is given (the worker has its own weights)."""
    from avatarcam.app import engine_options

    remote = bool(getattr(args, "worker", None))
    options = {} if remote and config.engine.name == "fomm" else engine_options(config)
    try:
        from avatarcam.remote.cli import engine_from_args
    except ImportError:  # pragma: no cover
        engine_from_args = None
    if engine_from_args is not None:
        remote = engine_from_args(args, config.engine.name, options)
        if remote is not None:
            return remote
    from avatarcam.engines import create_engine

    return create_engine(config.engine.name, **options)


def cmd_render(args: argparse.Namespace) -> int:
    from avatarcam.app import build_cropper, build_tracker, pick_avatar
    from avatarcam.render import render_video

    config = resolve_config(args)
    out = Path(args.out)
    avatar = pick_avatar(config)
    engine = _engine_for(args, config)
    tracker = build_tracker(config) if (engine.needs_landmarks or config.crop.follow) else None
    try:
        result = render_video(avatar=avatar, driving=args.driving, engine=engine, out=out, tracker=tracker,
                              cropper=build_cropper(config), progress=not args.no_progress,
                              max_frames=args.max_frames)
    finally:
        engine.close()
        if tracker is not None:
            tracker.close()
    print(f"wrote {result.frames} frames at {result.fps:g} fps to {out} "
          f"({result.frames / max(result.seconds, 1e-9):.1f} frames/s rendering)")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from avatarcam.diagnostics import print_devices

    return print_devices()


def cmd_doctor(args: argparse.Namespace) -> int:
    from avatarcam.diagnostics import run_doctor

    return run_doctor()


COMMANDS = {"run": cmd_run, "render": cmd_render, "devices": cmd_devices, "doctor": cmd_doctor,
            "config": cmd_config}


def main(argv: Sequence[str] | None = None) -> int:
    # MediaPipe's C++ logging floods the terminal at INFO; keep warnings and errors. OpenCV warns
    # twice per failed camera open, at every retry, where our own message says what to do; it reads
    # its level once, when cv2 is loaded (build_parser loads it), so this comes first. Each can be
    # overridden from the environment.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    handler = COMMANDS.get(args.command)
    if handler is None:
        if args.command == "weights":
            from avatarcam.weights.cli import run as handler
        elif args.command == "serve":
            from avatarcam.remote.cli import run_serve as handler
        else:  # pragma: no cover - argparse rejects unknown commands
            parser.error(f"unknown command {args.command}")
    try:
        return int(handler(args) or 0)
    except AvatarcamError as exc:
        print(f"avatarcam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``avatarcam devices`` and ``avatarcam doctor``: what is here, what is missing, and how to fix it."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def find_cameras(max_index: int = 4) -> list[tuple[str, str]]:
    """(device, description) of cameras OpenCV can open. On Linux only existing /dev/video* nodes are
    probed (opening absent indices is slow and noisy)."""
    import cv2

    found: list[tuple[str, str]] = []
    if sys.platform.startswith("linux"):
        candidates: list[str | int] = sorted(str(p) for p in Path("/dev").glob("video*"))
    else:
        candidates = list(range(max_index))
    for dev in candidates:
        name = ""
        if isinstance(dev, str):
            sysname = Path("/sys/class/video4linux") / Path(dev).name / "name"
            name = sysname.read_text().strip() if sysname.is_file() else ""
        cap = cv2.VideoCapture(dev)
        try:
            if cap.isOpened():
                w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                found.append((str(dev), f"{name} {w}x{h}".strip()))
        finally:
            cap.release()
    return found


def virtualcam_backends() -> list[tuple[str, bool, str]]:
    """(backend, available, detail) for each pyvirtualcam backend on this OS."""
    import pyvirtualcam

    out = []
    backends = list(getattr(pyvirtualcam.camera, "BACKENDS", {}).keys()) or ["default"]
    for name in backends:
        try:
            with pyvirtualcam.Camera(640, 480, 30, backend=None if name == "default" else name) as cam:
                out.append((name, True, f"device {cam.device}"))
        except Exception as exc:  # noqa: BLE001 - each backend reports its own failure type
            out.append((name, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return out


def print_devices() -> int:
    from avatarcam.sinks.virtualcam import virtualcam_help

    print("Cameras:")
    cams = find_cameras()
    for dev, desc in cams:
        print(f"  {dev}: {desc}")
    if not cams:
        from avatarcam.sources.opencv import camera_help

        print(f"  none found. {camera_help()}")
    print("Virtual camera backends:")
    backends = virtualcam_backends()
    for name, ok, detail in backends:
        print(f"  {name}: {'available, ' if ok else 'not available: '}{detail}")
    if not any(ok for _, ok, _ in backends):
        print("  " + virtualcam_help().replace("\n", "\n  "))
    print("Audio:")
    try:
        from avatarcam.audio.devices import audio_status, list_audio_devices
    except ImportError:
        print("  audio support not installed")
        return 0
    ok, message = audio_status()
    if not ok:
        print(f"  {message}")
    else:
        for d in list_audio_devices():
            kinds = []
            if d.inputs:
                kinds.append(f"{d.inputs} in")
            if d.outputs:
                kinds.append(f"{d.outputs} out")
            print(f"  [{d.index}] {d.name} ({', '.join(kinds)})")
    return 0


def doctor_checks() -> list[Check]:
    checks: list[Check] = []
    v = sys.version_info
    checks.append(Check("python", v >= (3, 10), platform.python_version(),
                        "" if v >= (3, 10) else "install Python 3.10-3.12"))
    if v >= (3, 13):
        checks.append(Check("mediapipe wheel", False, f"Python {v.major}.{v.minor}",
                            "MediaPipe 0.10.21 (with its face models) needs Python <= 3.12: use 3.11 or 3.12"))
    try:
        import torch

        cuda = torch.cuda.is_available()
        checks.append(Check("torch", True, torch.__version__))
        if cuda:
            name = torch.cuda.get_device_name(0)
            major, _ = torch.cuda.get_device_capability(0)
            checks.append(Check("CUDA", True, f"{name}; fp16 {'fast (tensor cores)' if major >= 7 else 'supported'}"))
        else:
            checks.append(Check("CUDA", False, "no CUDA GPU visible to torch",
                                "fine for --engine mesh; for fomm at full speed install an NVIDIA driver and the "
                                "CUDA build of torch, or use a remote worker (--worker HOST:PORT)"))
    except ImportError as exc:
        checks.append(Check("torch", False, str(exc), "run `make run` to (re)create the environment"))
    try:
        import cv2

        checks.append(Check("opencv", True, cv2.__version__))
    except ImportError as exc:
        checks.append(Check("opencv", False, str(exc), "pip install opencv-contrib-python (not opencv-python too)"))
    try:
        import numpy as np

        from avatarcam.landmarks import create_tracker

        with create_tracker(mode="image") as tracker:
            tracker.detect(np.zeros((64, 64, 3), np.uint8))
        checks.append(Check("landmark models", True, "MediaPipe Face Mesh loaded from the wheel"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("landmark models", False, f"{type(exc).__name__}: {exc}",
                            "reinstall mediapipe==0.10.21 (Python <= 3.12)"))
    cams = find_cameras()
    if cams:
        checks.append(Check("camera", True, ", ".join(f"{d} ({n})" for d, n in cams)))
    else:
        from avatarcam.sources.opencv import camera_help

        checks.append(Check("camera", False, "none found", camera_help()))
    backends = virtualcam_backends()
    good = [f"{n} ({d})" for n, ok, d in backends if ok]
    if good:
        checks.append(Check("virtual camera", True, ", ".join(good)))
    else:
        from avatarcam.sinks.virtualcam import virtualcam_help

        checks.append(Check("virtual camera", False, "; ".join(f"{n}: {d}" for n, _, d in backends),
                            virtualcam_help()))
    if sys.platform.startswith("linux"):
        disp = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        checks.append(Check("display", bool(disp), disp or "DISPLAY not set",
                            "" if disp else "the preview window needs a desktop session; --sink virtualcam works without"))
    try:
        from avatarcam.weights.store import installed_weights

        names = installed_weights()
        checks.append(Check("fomm weights", bool(names), ", ".join(names) if names else "none installed",
                            "" if names else "`avatarcam weights download vox-cpk` (or --engine mesh needs none)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("fomm weights", False, str(exc), "see `avatarcam weights list`"))
    try:
        from avatarcam.audio.devices import audio_status

        ok, message = audio_status()
        checks.append(Check("audio", ok, message))  # the message already says what to do
    except ImportError:
        pass
    return checks


def run_doctor() -> int:
    checks = doctor_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "OK  " if c.ok else "FIX "
        print(f"{mark} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(" " * (width + 7) + c.fix.replace("\n", "\n" + " " * (width + 7)))
    essential = {"python", "torch", "opencv", "landmark models"}
    return 0 if all(c.ok for c in checks if c.name in essential) else 1

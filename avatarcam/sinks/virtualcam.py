"""Virtual camera sink through pyvirtualcam (v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS)."""
from __future__ import annotations

import sys

from avatarcam.errors import NoVirtualCameraError
from avatarcam.frame import OutputFrame
from avatarcam.sinks.base import Sink


def virtualcam_help() -> str:
    """How to create a virtual camera on this OS."""
    if sys.platform.startswith("linux"):
        return (
            "Create one with v4l2loopback:\n"
            "  sudo apt install v4l2loopback-dkms\n"
            "  sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=\"avatarcam\" exclusive_caps=1\n"
            "then restart avatarcam (and Zoom/Meet so they see the new camera). The preview keeps running meanwhile."
        )
    if sys.platform == "darwin":
        return ("Install OBS Studio (>= 30), open it once and click 'Start Virtual Camera', then stop it and quit OBS; "
                "avatarcam drives OBS Virtual Camera through pyvirtualcam.")
    return ("Install OBS Studio (>= 26) and start 'Start Virtual Camera' once so its driver is registered; "
            "avatarcam drives OBS Virtual Camera through pyvirtualcam.")


class VirtualCameraSink(Sink):
    """Sends RGB frames to a virtual camera through ``pyvirtualcam.Camera``.

    ``backend``/``device`` pick a specific one (``None`` = pyvirtualcam's first available).
    Raises :class:`~avatarcam.errors.NoVirtualCameraError` with OS-specific set-up steps when
    none can be opened.
    """

    name = "virtualcam"

    def __init__(self, *, width: int, height: int, fps: float, device: str | None = None,
                 backend: str | None = None) -> None:
        import pyvirtualcam

        try:
            self._cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device,
                                            backend=backend)
        except (RuntimeError, ValueError) as exc:
            raise NoVirtualCameraError(f"no virtual camera available ({exc}).\n{virtualcam_help()}") from exc
        self.device = self._cam.device
        self.backend = self._cam.backend

    def send(self, frame: OutputFrame) -> None:
        self._cam.send(frame.image)

    def close(self) -> None:
        self._cam.close()

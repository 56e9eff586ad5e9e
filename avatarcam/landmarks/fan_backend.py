"""Optional face-alignment (FAN) backend: 68 iBUG points, 3D (depth in the x scale).

Install with ``pip install 'avatarcam[fan]'``. The package downloads its detector and landmark
weights (about 300 MB) from its own servers on first use and caches them under the torch hub
folder; it is slower than MediaPipe on CPU and meant for offline preparation or comparison.
"""
from __future__ import annotations

import numpy as np

from avatarcam.errors import ConfigError
from avatarcam.landmarks.config import TrackerConfig
from avatarcam.landmarks.tracker import IMAGE_MODE_MAX_FACES, LandmarkTracker
from avatarcam.landmarks.types import FaceLandmarks


class FanTracker(LandmarkTracker):
    """face-alignment's FAN on CPU (or CUDA when torch sees one). Faces are ordered by the detector;
    at most ``max_faces`` (video) or 5 (image) are returned."""

    def __init__(self, config: TrackerConfig, mode: str) -> None:
        super().__init__(config, mode)
        try:
            import face_alignment
        except ImportError as exc:
            raise ConfigError(
                "the 'fan' landmark backend needs the face-alignment package: pip install 'avatarcam[fan]' "
                "(it downloads its weights on first use), or use backend 'mediapipe'"
            ) from exc
        import torch

        kind = getattr(face_alignment.LandmarksType, "THREE_D", None) or face_alignment.LandmarksType._3D
        self._max = max(config.max_faces, IMAGE_MODE_MAX_FACES) if mode == "image" else config.max_faces
        try:
            self._fa = face_alignment.FaceAlignment(kind, device="cuda" if torch.cuda.is_available() else "cpu",
                                                    flip_input=False)
        except Exception as exc:  # weights download / load failures come as many exception types
            raise ConfigError(f"face-alignment could not load its models ({exc}); it downloads them on first "
                              "use, so check the network connection or use backend 'mediapipe'") from exc

    def _detect_raw(self, image_rgb: np.ndarray) -> list[FaceLandmarks]:
        found = self._fa.get_landmarks_from_image(image_rgb)
        if not found:
            return []
        faces = []
        for pts in found[: self._max]:
            pts = np.asarray(pts, dtype=np.float32)
            if pts.shape[1] == 2:
                pts = np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], axis=1)
            faces.append(FaceLandmarks(pts, 1.0))
        return faces

    def close(self) -> None:
        self._fa = None

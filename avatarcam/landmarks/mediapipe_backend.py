"""MediaPipe Face Mesh backend (legacy ``solutions.face_mesh``, whose models ship in the 0.10.21 wheel)."""
from __future__ import annotations

import numpy as np

from avatarcam.errors import ConfigError
from avatarcam.landmarks.config import TrackerConfig
from avatarcam.landmarks.tracker import IMAGE_MODE_MAX_FACES, LandmarkTracker
from avatarcam.landmarks.types import FaceLandmarks
from avatarcam.native_log import native_stderr


def _face_mesh_class():
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as exc:  # newer wheels drop the legacy solutions and their bundled models
        raise ConfigError(
            "MediaPipe Face Mesh is not available: install mediapipe==0.10.21 (Python 3.9-3.12), whose "
            f"wheel carries the face models, or choose the 'fan' backend ({exc})"
        ) from exc
    return face_mesh.FaceMesh


class MediaPipeTracker(LandmarkTracker):
    """478 landmarks (468 mesh + 10 iris with ``refine``), 468 without refinement.

    Face Mesh reports no per-face confidence, so ``FaceLandmarks.score`` is 1.0. The graph's
    routine start-up lines (on creation and up to the first frame with a face) are kept off the
    terminal (:mod:`avatarcam.native_log`).
    """

    def __init__(self, config: TrackerConfig, mode: str) -> None:
        super().__init__(config, mode)
        image_mode = mode == "image"
        self._started = False  # True once a frame with a face has gone through the graph
        face_mesh = _face_mesh_class()
        with native_stderr():
            self._mesh = face_mesh(
                static_image_mode=image_mode,
                max_num_faces=max(config.max_faces, IMAGE_MODE_MAX_FACES) if image_mode else config.max_faces,
                refine_landmarks=config.refine,
                min_detection_confidence=config.min_detection_confidence,
                min_tracking_confidence=config.min_tracking_confidence,
            )
            # The graph opens its models on worker threads after construction; one blank frame
            # waits for that, so their start-up lines fall inside this capture.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def _detect_raw(self, image_rgb: np.ndarray) -> list[FaceLandmarks]:
        h, w = image_rgb.shape[:2]
        if self._started:
            found = self._mesh.process(image_rgb).multi_face_landmarks
        else:
            with native_stderr():
                found = self._mesh.process(image_rgb).multi_face_landmarks
            self._started = bool(found)
        if not found:
            return []
        # z is normalised like x (by the image width), hence w for both.
        scale = np.array([w, h, w], dtype=np.float32)
        faces = []
        for face in found:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            faces.append(FaceLandmarks(pts * scale, 1.0))
        return faces

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

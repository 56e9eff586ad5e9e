"""Background blur for the real camera: MediaPipe selfie segmentation, then a blurred backdrop.

The selfie segmentation model ships inside the MediaPipe wheel (``mp.solutions.selfie_segmentation``),
so this works offline. Only the passthrough view uses it; avatars have no background to hide.
"""
from __future__ import annotations

import cv2
import numpy as np

from avatarcam.errors import EngineError

SEGMENT_SIDE = 320  # longest side of the copy the segmenter sees


class BackgroundBlur:
    """Keeps the person sharp and blurs the rest of an ``H x W x 3`` uint8 RGB frame.

    ``model_selection``: 0 = general (256 x 256), 1 = landscape (144 x 256, faster).
    ``blur``: Gaussian sigma in pixels of the full-size frame. The blur runs on a 4x smaller copy
    (the backdrop is smooth anyway), so its cost hardly depends on ``blur``.
    """

    def __init__(self, *, model_selection: int = 1, blur: float = 12.0) -> None:
        if model_selection not in (0, 1):
            raise ValueError(f"model_selection must be 0 or 1, got {model_selection}")
        if not blur > 0:
            raise ValueError(f"blur must be > 0 pixels, got {blur}")
        try:
            import mediapipe as mp

            self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)
        except (ImportError, AttributeError, RuntimeError) as exc:
            raise EngineError(f"background blur needs MediaPipe's selfie segmentation ({exc}); "
                              "reinstall with `pip install mediapipe==0.10.21`") from exc
        self.blur = float(blur)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A new ``H x W x 3`` uint8 image: person from ``image``, background blurred."""
        h, w = image.shape[:2]
        # The model sees 256 x 256 (or 144 x 256) anyway: segmenting a small copy costs the same
        # mask quality and a fraction of the time of handing it a full HD frame.
        f = min(1.0, SEGMENT_SIDE / max(h, w))
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) \
            if f < 1.0 else image
        mask = self._segmenter.process(small).segmentation_mask  # float32 in [0, 1], 1 = person
        # Soften the mask edge a little (a hard cut-out looks pasted on), then scale it up.
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 2.0 * f))
        alpha = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        tiny = cv2.resize(image, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
        backdrop = cv2.resize(cv2.GaussianBlur(tiny, (0, 0), self.blur / 4), (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.blendLinear(image, backdrop, alpha, 1.0 - alpha)

    def close(self) -> None:
        self._segmenter.close()

    def __enter__(self) -> "BackgroundBlur":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

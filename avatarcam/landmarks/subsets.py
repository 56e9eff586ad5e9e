"""The common 68-point layout (iBUG 300-W / dlib order) for MediaPipe's 478 points.

0-16 jaw (subject's right ear -> chin -> left ear), 17-21 / 22-26 brows (subject's right, left),
27-30 nose bridge, 31-35 nostrils, 36-41 / 42-47 eyes (right, left; each from the outer resp.
inner corner clockwise in the image), 48-59 outer lips, 60-67 inner lips.

Jaw points were chosen here by walking MediaPipe's face-oval contour from 127 to 356 through
the chin (152) on three frontal photos in ../shared/data, taking the points nearest to 17 equal
arc-length steps and mirroring the subject's-right half so the layout is symmetric. The rest
follow the named MediaPipe features (eye corners 33/133/362/263, lip corners 61/291, inner lips
78/308, nose tip 4, subnasale 2, brow arcs).
"""
from __future__ import annotations

import numpy as np

MP_TO_68: np.ndarray = np.array(
    [
        # jaw 0-16
        127, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 356,
        # brows 17-21 (right), 22-26 (left)
        70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
        # nose bridge 27-30, nostrils 31-35
        168, 197, 5, 4, 98, 97, 2, 326, 327,
        # right eye 36-41, left eye 42-47
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # outer lips 48-59
        61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,
        # inner lips 60-67
        78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)


def to_68(points: np.ndarray) -> np.ndarray:
    """``N x D`` landmarks (N = 468/478 MediaPipe, or already 68) -> ``68 x D`` iBUG layout."""
    if len(points) == 68:
        return points
    if len(points) < 468:
        raise ValueError(f"to_68 needs 468/478 MediaPipe landmarks or 68 points, got {len(points)}")
    return points[MP_TO_68]

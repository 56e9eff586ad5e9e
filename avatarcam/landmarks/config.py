"""Tracker options (backend choice, detection thresholds, One Euro smoothing)."""
from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("mediapipe", "fan")


@dataclass(frozen=True)
class TrackerConfig:
    """Options for :func:`avatarcam.landmarks.create_tracker`.

    ``backend``: ``"mediapipe"`` (default, models ship in the wheel, 478 points with ``refine``)
    or ``"fan"`` (face-alignment, optional extra ``avatarcam[fan]``, 68 points, downloads its
    weights on first use). ``max_faces`` applies to video mode; image mode looks for up to
    ``max(max_faces, 5)`` faces so a photo with several people is recognised as such.

    Smoothing (video mode only) is a One Euro filter per landmark. ``min_cutoff`` (Hz) sets how
    hard a still face is smoothed (lower = steadier, more lag at low speed); ``beta`` (per
    face-size/second) opens the filter as the face moves so fast motion does not lag; speeds are
    measured in face sizes per second so the values do not depend on resolution or distance.
    ``d_cutoff`` (Hz) smooths the speed estimate itself.
    """

    backend: str = "mediapipe"
    refine: bool = True
    max_faces: int = 1
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    smoothing: bool = True
    # Tuned on ../shared/data (scripts/tracker_stats.py, /tmp sweeps over min_cutoff 0.3-2.5 and
    # beta 0.5-16): a still face's frame-to-frame landmark motion drops about 7x (photo + sensor
    # noise), a face sliding at 0.8 face sizes/s trails by about 8 ms, and on the talking-head videos
    # the smoothed track is about 20 ms behind the raw one. Lower beta steadies a moving face more
    # but lags (beta 4: 50 ms); lower min_cutoff steadies a still face more but drifts behind slow moves.
    min_cutoff: float = 1.0
    beta: float = 16.0
    d_cutoff: float = 1.0
    # The smoother splits each frame into head pose and face shape (see LandmarkSmoother): the pose,
    # fitted on many skull-fixed points, is much less noisy than one point and takes its own minimum
    # cutoff; the lips take theirs (speech moves them fast and far next to the noise, so less lag pays;
    # eyelids move a few pixels and keep ``min_cutoff``). Tuned on the lp_d20 pairs of scripts/evaluate.py:
    # lips 4 Hz raise mouth r by 0.03-0.07 over 1 Hz; eyelids at 4 Hz lost 0.02-0.06 of eye r to noise.
    pose_min_cutoff: float = 2.0
    lips_min_cutoff: float = 4.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 1 <= self.max_faces <= 10:
            raise ValueError(f"max_faces must be in 1..10, got {self.max_faces}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.min_cutoff <= 0:
            raise ValueError(f"min_cutoff must be > 0 Hz, got {self.min_cutoff}")
        for name in ("pose_min_cutoff", "lips_min_cutoff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 Hz, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.d_cutoff <= 0:
            raise ValueError(f"d_cutoff must be > 0 Hz, got {self.d_cutoff}")

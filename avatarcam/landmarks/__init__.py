"""Face landmark tracking: backends behind one ``detect`` verb, plus the signals derived from it."""
from avatarcam.landmarks.config import TrackerConfig
from avatarcam.landmarks.signals import FaceSignals, face_signals
from avatarcam.landmarks.tracker import LandmarkTracker, create_tracker
from avatarcam.landmarks.types import FaceLandmarks, LandmarkResult

__all__ = [
    "FaceLandmarks",
    "FaceSignals",
    "LandmarkResult",
    "LandmarkTracker",
    "TrackerConfig",
    "create_tracker",
    "face_signals",
]

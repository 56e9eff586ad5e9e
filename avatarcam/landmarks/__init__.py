"""Face landmark tracking: backends behind one ``detect`` verb."""
from avatarcam.landmarks.types import FaceLandmarks, LandmarkResult

__all__ = ["FaceLandmarks", "LandmarkResult"]

"""The mesh engine's options: what a user may set (``[mesh]`` in the config file). Plain data, so
the configuration can hold them without importing the engine."""
from __future__ import annotations

from dataclasses import dataclass

MOUTH_FILLS = ("synthetic", "driver")
# How much further the avatar's lids move than the driver's, as read. The tracker under-reads a
# lid: its filtered reading of a shut eye stays at 0.03-0.09 of the eye's width (the four driving
# videos' blinks), not 0, against 0.25-0.35 open, so a proportional transfer leaves a blinking
# avatar a third open. And a warped lid squashes the eye under it instead of covering it, so it
# looks less closed than its landmarks say: the tracker reads a third to a half of a re-rendered
# lid's movement. 1.5 shuts the avatar's eye at a driver reading a third of its open gap (measured
# on all 28 pairs of scripts/evaluate.py: eyes r up on 24, docs/evaluation.md); 2 saturates the
# blinks of the deepest-blinking driver early and adds head-roll noise.
LID_GAIN = 1.5


@dataclass(frozen=True)
class Limits:
    """How far the avatar may move: degrees for the angles, face sizes (inter-ocular distances)
    for the shift, a fraction for the scale change. Motion beyond ``knee`` x limit is compressed
    smoothly so it approaches the limit without a hard stop."""

    max_yaw: float = 35.0
    max_pitch: float = 25.0
    max_roll: float = 30.0
    max_shift: float = 0.25
    max_scale: float = 0.2
    knee: float = 0.7

    def __post_init__(self) -> None:
        for name in ("max_yaw", "max_pitch", "max_roll"):
            value = getattr(self, name)
            if not 0.0 <= value <= 90.0:
                raise ValueError(f"{name} must be in [0, 90] degrees, got {value}")
        if not 0.0 <= self.max_shift <= 5.0:
            raise ValueError(f"max_shift must be in [0, 5] face sizes, got {self.max_shift}")
        if not 0.0 <= self.max_scale < 1.0:
            raise ValueError(f"max_scale must be in [0, 1), got {self.max_scale}")
        if not 0.0 < self.knee <= 1.0:
            raise ValueError(f"knee must be in (0, 1], got {self.knee}")


@dataclass(frozen=True)
class MeshConfig:
    """The mesh engine's options. ``mouth_fill``: what an open mouth shows, ``synthetic`` (a drawn
    cavity with teeth and tongue) or ``driver`` (the driver's own mouth, colour-matched to the
    avatar). How far the avatar's head may turn (``max_yaw``, ``max_pitch``, ``max_roll``, degrees),
    move (``max_shift``, face sizes) and grow or shrink (``max_scale``, a fraction) from the
    photo's pose: past 70 % of a limit the motion is eased so it never quite reaches it.
    ``lid_gain``: how much further the avatar's lids move than the driver's as tracked (the
    tracker reads a shut eye a third open; 1 = exactly as read)."""

    mouth_fill: str = "synthetic"
    max_yaw: float = 35.0
    max_pitch: float = 25.0
    max_roll: float = 30.0
    max_shift: float = 0.25
    max_scale: float = 0.2
    lid_gain: float = LID_GAIN

    def __post_init__(self) -> None:
        if self.mouth_fill not in MOUTH_FILLS:
            raise ValueError(f"mesh mouth_fill must be one of {MOUTH_FILLS}, got {self.mouth_fill!r}")
        if not 0.5 <= self.lid_gain <= 3.0:
            raise ValueError(f"mesh lid_gain must be in [0.5, 3], got {self.lid_gain}")
        self.limits()  # checks the limits

    def limits(self) -> Limits:
        return Limits(max_yaw=self.max_yaw, max_pitch=self.max_pitch, max_roll=self.max_roll,
                      max_shift=self.max_shift, max_scale=self.max_scale)

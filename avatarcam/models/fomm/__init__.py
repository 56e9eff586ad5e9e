"""First Order Motion Model (Siarohin et al., NeurIPS 2019): a re-implementation that loads the
public checkpoints (vox-cpk.pth.tar, vox-adv-cpk.pth.tar) unchanged and reproduces the reference
inference. See ``load_fomm`` and ``normalize_kp``."""

from avatarcam.models.fomm.config import FommConfig
from avatarcam.models.fomm.dense_motion import DenseMotionNetwork
from avatarcam.models.fomm.generator import OcclusionAwareGenerator, SourceCache
from avatarcam.models.fomm.keypoints import Keypoints, KPDetector
from avatarcam.models.fomm.loading import FommModel, build_fomm, load_fomm
from avatarcam.models.fomm.normalize import hull_area, movement_scale, normalize_kp

__all__ = [
    "DenseMotionNetwork",
    "FommConfig",
    "FommModel",
    "KPDetector",
    "Keypoints",
    "OcclusionAwareGenerator",
    "SourceCache",
    "build_fomm",
    "hull_area",
    "load_fomm",
    "movement_scale",
    "normalize_kp",
]

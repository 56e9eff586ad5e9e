"""The mesh engine: the avatar photo warped by the driver's re-targeted landmarks, no learned weights."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.engines.base import Drive, Engine
from avatarcam.engines.mesh import topology as tp
from avatarcam.engines.mesh.eyes import EyelidPainter
from avatarcam.engines.mesh.mouth import MouthPainter
from avatarcam.engines.mesh.options import LID_GAIN, MeshConfig
from avatarcam.engines.mesh.retarget import (
    FaceFrame,
    Neutral,
    PairMapping,
    pair_gaps,
    synthetic_face,
)
from avatarcam.engines.mesh.warp import MeshWarp, TorchRemap, remap_cpu
from avatarcam.errors import AvatarError, EngineError
from avatarcam.geometry import Box, crop_square, smoothstep
from avatarcam.landmarks.smoothing import OneEuro

OUTPUTS = ("photo", "crop")
# Rings around the face outline, as multiples of the outline's distance from its centre: the head
# ring moves rigidly with the head (hair, ears), the outer ring stays put, and the band between
# them absorbs the motion; it is wide above and beside the head (a tilting head swings its top
# far) and narrow under the chin (the head turns about the chin there), so the shoulders, the
# body and the rest of the photo do not move. (sides, top, bottom)
HEAD_RING = (1.35, 1.5, 1.06)
FIXED_RING = (2.4, 2.6, 1.4)
# Rings inside the band, evenly spaced, carrying a share of the head ring's motion that falls
# along a smoothstep, so that a straight edge in the background crossing the band (a door frame,
# a picture's border) bends in a smooth curve, without a crease where the band meets the head or
# the still photo. The smoothstep squeezes the middle of the band 1.5 times as much as a
# straight falloff; where that would squeeze it by more than BAND_SQUEEZE of its width (a head
# moving far toward the narrow band under the chin) the falloff leans toward the straight one.
BAND_RINGS = 6
BAND_RHO = np.arange(1, BAND_RINGS + 1) / (BAND_RINGS + 1.0)  # their places, 0 = head ring, 1 = fixed ring
BAND_SQUEEZE = 0.7
BAND_SOFTEN = 0.15  # and its triangles' creases smoothed away (Gaussian sigma, inter-ocular distances)
JAW_FOLLOW = 0.6  # how much of the chin's own movement the ring below it follows
LOST_DECAY = 0.9  # per frame without a face, the motion eases back toward the rest pose
SCALE_CUTOFF_HZ = 0.7  # One Euro cutoff of the head-scale filter


@dataclass(eq=False)
class MeshAvatar:
    """Prepared state of one avatar (see :meth:`MeshEngine.prepare`). Coordinates are in window
    pixels: the output crop (``crop``) or the animated region of the photo (``photo``)."""

    avatar: Avatar
    source: np.ndarray  # image the remap samples
    origin: tuple[int, int]  # window (0, 0) in ``source`` pixels
    window: tuple[int, int, int, int]  # photo mode: x0, y0, x1, y1 in the photo; crop mode: 0, 0, size, size
    face: FaceFrame  # avatar landmarks in window pixels (x, y, z)
    rings: np.ndarray  # head ring, 3-D (K x 3), moves with the head
    n_ring: int
    warp: MeshWarp
    mouth: MouthPainter
    lids: EyelidPainter
    rest_gap: float  # the avatar's own mean inner-lip gap (window pixels)
    face_idx: np.ndarray  # landmarks bounding the face level of the warp
    detail_idx: tuple[np.ndarray, ...]  # landmark groups (eyes, mouth) warped at the finest level
    remap_gpu: TorchRemap | None = None

    def ring(self, index: int) -> slice:
        """Rows of ring ``index`` among the warp's vertices (after the landmarks): 0 the head ring,
        1 the fixed ring, 2 and on the rings inside the band, from the head ring outward."""
        start = tp.N_LANDMARKS + index * self.n_ring
        return slice(start, start + self.n_ring)


def _ring(points2: np.ndarray, centre: np.ndarray, down: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """The outline ``points2`` (``K x 2``) pushed away from ``centre`` by direction-dependent factors."""
    rel = points2 - centre
    up = -(rel / np.maximum(np.linalg.norm(rel, axis=1, keepdims=True), 1e-9)) @ down
    side, top, bottom = factors
    f = side + (top - side) * np.clip(up, 0, 1) ** 1.5 + (bottom - side) * np.clip(-up, 0, 1) ** 0.6
    return centre + rel * f[:, None]


def band_falloff(head_moves: np.ndarray, radial: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Share of the head ring's motion (``n x 2`` moves of its vertices) that each ring inside the
    band carries, ``K x n``: the rings sit at ``rho`` (``K``, 0 = head ring, 1 = fixed ring) along
    ``radial`` (``n x 2``, head ring vertex -> fixed ring vertex)."""
    straight = 1.0 - rho
    smooth = 1.0 - smoothstep(rho)
    # How far each head ring vertex moves toward the fixed ring, as a fraction of the band's width.
    squeeze = np.maximum((head_moves * radial).sum(axis=1), 0.0) / np.maximum((radial * radial).sum(axis=1), 1e-9)
    lean = np.clip((BAND_SQUEEZE / np.maximum(squeeze, 1e-9) - 1.0) / 0.5, 0.0, 1.0)
    return straight[:, None] + lean[None, :] * (smooth - straight)[:, None]


def _strip_rings(a0: int, b0: int, n: int) -> np.ndarray:
    """Triangles between two closed rings of ``n`` vertices starting at indices a0 and b0."""
    j = np.arange(n)
    k = (j + 1) % n
    t1 = np.stack([a0 + j, a0 + k, b0 + k], axis=1)
    t2 = np.stack([a0 + j, b0 + k, b0 + j], axis=1)
    return np.concatenate([t1, t2])


def _eye_triangles(points2: np.ndarray, iris: int, upper: tuple[int, ...], lower: tuple[int, ...]) -> np.ndarray:
    loop = np.array(list(upper) + list(lower[-2:0:-1]))
    inside = cv2.pointPolygonTest(points2[loop].astype(np.float32).reshape(-1, 1, 2),
                                  (float(points2[iris, 0]), float(points2[iris, 1])), True)
    if inside > 0.5:
        return tp.fan(iris, upper, lower)
    return tp.strip(upper, lower)


class MeshEngine(Engine):
    """Animates a photo from face landmarks: re-targeting (:mod:`.retarget`), a triangle-mesh warp
    with rings that keep the body and background still (:mod:`.warp`), a painted mouth interior
    (:mod:`.mouth`) and eyelids (:mod:`.eyes`). Needs MediaPipe's 478 refined landmarks.

    ``output``: ``photo`` (the whole avatar photo at its resolution) or ``crop`` (the square face
    crop at ``size x size``). ``mouth_fill``: ``synthetic`` (drawn cavity, teeth, tongue) or
    ``driver`` (the driver's own mouth interior, colour-matched). ``max_yaw / max_pitch /
    max_roll`` (degrees), ``max_shift`` (inter-ocular distances) and ``max_scale`` (fraction) bound
    the head motion, softly. ``lid_gain``: how much further the avatar's lids move than the
    driver's as tracked (:data:`.options.LID_GAIN`; 1 = exactly as read). ``device``: ``cpu``,
    ``cuda`` or ``auto`` (the final resampling on a GPU when torch sees one). ``neutral_frames``:
    tracked frames whose median is the driver's neutral (again after :meth:`calibrate`; saved / restored by :meth:`get_calibration` /
    :meth:`set_calibration`). ``grid_step``: warp grid spacing in pixels at a 512-pixel face crop.
    A ``Drive.expression`` (voice-driven mouth, idle blinks and head motion) is shown instead of
    the tracked face when set.
    """

    name = "mesh"
    needs_landmarks = True

    def __init__(self, *, output: str = "photo", size: int = 512, mouth_fill: str = "synthetic",
                 max_yaw: float = 35.0, max_pitch: float = 25.0, max_roll: float = 30.0, max_shift: float = 0.25,
                 max_scale: float = 0.2, lid_gain: float = LID_GAIN, device: str = "auto", neutral_frames: int = 15,
                 grid_step: int = 4) -> None:
        if output not in OUTPUTS:
            raise EngineError(f"mesh output must be one of {OUTPUTS}, got {output!r}")
        if not 16 <= size <= 2048:
            raise EngineError(f"mesh size must be in [16, 2048], got {size}")
        if neutral_frames < 1:
            raise EngineError(f"neutral_frames must be >= 1, got {neutral_frames}")
        if not 1 <= grid_step <= 32:
            raise EngineError(f"grid_step must be in [1, 32] pixels, got {grid_step}")
        try:
            options = MeshConfig(mouth_fill=mouth_fill, max_yaw=max_yaw, max_pitch=max_pitch, max_roll=max_roll,
                                 max_shift=max_shift, max_scale=max_scale, lid_gain=lid_gain)
        except ValueError as exc:
            raise EngineError(f"bad mesh option: {exc}") from exc
        self.limits = options.limits()
        self.output, self.size, self.mouth_fill = output, int(size), mouth_fill
        self.neutral_frames, self.grid_step, self.lid_gain = int(neutral_frames), int(grid_step), float(lid_gain)
        self.device = self._pick_device(device)
        # Only the driver mouth fill looks at the driving pixels; otherwise landmarks suffice (a
        # remote worker can then run this engine from keypoints alone).
        self.reads_drive_pixels = mouth_fill == "driver"
        self._neutral = Neutral(self.neutral_frames)
        self._scale = OneEuro(min_cutoff=SCALE_CUTOFF_HZ, beta=0.0, norm_axis=None)
        self._t = 0.0
        self._mapping: tuple[MeshAvatar, int, PairMapping] | None = None
        self._self_mapping: tuple[MeshAvatar, int, PairMapping] | None = None
        self._last_moves: tuple[MeshAvatar, np.ndarray, np.ndarray] | None = None  # (avatar, moves, targets)

    @staticmethod
    def _pick_device(device: str) -> str:
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise EngineError(f"mesh device must be auto, cpu or cuda[:N], got {device!r}")
        if device == "cpu":
            return "cpu"
        try:
            import torch

            has_cuda = torch.cuda.is_available()
        except ImportError:
            has_cuda = False
        if device == "auto":
            return "cuda" if has_cuda else "cpu"
        if not has_cuda:
            raise EngineError(f"mesh device {device!r} asked for, but torch sees no CUDA GPU: use device='cpu' "
                              "or 'auto', or install a CUDA build of torch")
        return device

    # -- per avatar ------------------------------------------------------------------------------
    def prepare(self, avatar: Avatar) -> MeshAvatar:
        """Precompute the avatar's mesh, rings, warp rasterisation and mouth colours."""
        if avatar.face is None:
            raise AvatarError(f"avatar {avatar.name!r} has no face landmarks: load it with "
                              "avatarcam.avatars.library.load_avatar so its face is found first")
        pts = np.asarray(avatar.face.landmarks, dtype=np.float64)
        if len(pts) < tp.N_LANDMARKS:
            raise EngineError(f"the mesh engine needs MediaPipe's {tp.N_LANDMARKS} refined landmarks, the avatar "
                              f"has {len(pts)}: use the mediapipe tracker backend with refine=True")
        photo = avatar.image
        ph, pw = photo.shape[:2]
        box = avatar.box
        if self.output == "crop":
            scale = self.size / box.side
            pts = pts.copy()
            pts[:, 0] = (pts[:, 0] - box.x0) * scale
            pts[:, 1] = (pts[:, 1] - box.y0) * scale
            pts[:, 2] *= scale
        face = FaceFrame.of(pts)
        oval = pts[list(tp.FACE_OVAL), :2]
        centre = oval.mean(axis=0)
        down = face.axes[:2, 1] / max(float(np.linalg.norm(face.axes[:2, 1])), 1e-9)
        head = _ring(oval, centre, down, HEAD_RING)
        fixed = _ring(oval, centre, down, FIXED_RING)
        lo = np.floor(fixed.min(axis=0)).astype(int) - 2
        hi = np.ceil(fixed.max(axis=0)).astype(int) + 3
        if self.output == "crop":
            # Work square: the window plus everything that may move, at the output's pixel scale.
            wx0, wy0 = min(lo[0], 0), min(lo[1], 0)
            side = max(max(hi[0], self.size) - wx0, max(hi[1], self.size) - wy0)
            s_px = box.side / self.size  # photo pixels per output pixel
            work = Box(box.x0 + (wx0 + side / 2.0) * s_px, box.y0 + (wy0 + side / 2.0) * s_px, side * s_px)
            source = crop_square(photo, work, int(side))
            origin = (-int(wx0), -int(wy0))
            window = (0, 0, self.size, self.size)
            win_pts = pts
        else:
            x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
            x1, y1 = min(int(hi[0]), pw), min(int(hi[1]), ph)
            if x1 - x0 < 8 or y1 - y0 < 8:
                raise AvatarError(f"the face of avatar {avatar.name!r} lies outside its photo")
            source = photo
            origin = (x0, y0)
            window = (x0, y0, x1, y1)
            shift = np.array([x0, y0, 0.0])
            win_pts = pts - shift
            face = FaceFrame.of(win_pts)
            head, fixed, oval = head - shift[:2], fixed - shift[:2], oval - shift[:2]
        n_ring = len(tp.FACE_OVAL)
        inner = [head + r * (fixed - head) for r in BAND_RHO]
        vertices = np.concatenate([win_pts[:, :2], head, fixed, *inner])
        head0, fixed0 = tp.N_LANDMARKS, tp.N_LANDMARKS + n_ring
        chain = [head0, *(fixed0 + n_ring * (k + 1) for k in range(BAND_RINGS)), fixed0]
        oval_idx = np.array(tp.FACE_OVAL)
        ring_tris = np.concatenate([
            np.stack([oval_idx, np.roll(oval_idx, -1), head0 + (np.arange(n_ring) + 1) % n_ring], axis=1),
            np.stack([oval_idx, head0 + (np.arange(n_ring) + 1) % n_ring, head0 + np.arange(n_ring)], axis=1),
            *(_strip_rings(a, b, n_ring) for a, b in itertools.pairwise(chain)),
        ])
        face_tris = np.concatenate([
            tp.face_triangles(),
            _eye_triangles(win_pts, tp.IRIS_RIGHT, tp.EYE_RIGHT_UPPER, tp.EYE_RIGHT_LOWER),
            _eye_triangles(win_pts, tp.IRIS_LEFT, tp.EYE_LEFT_UPPER, tp.EYE_LEFT_LOWER),
            tp.strip(tp.LIP_INNER_UPPER, tp.LIP_INNER_LOWER),
        ])
        # Where the moved mesh overlaps itself the face wins over the rings, and nearer face
        # triangles (smaller z) over farther ones.
        depth = win_pts[face_tris, 2].mean(axis=1)
        triangles = np.concatenate([ring_tris, face_tris])
        priority = np.concatenate([np.arange(len(ring_tris)), len(ring_tris) + np.argsort(np.argsort(-depth))])
        w, h = window[2] - window[0], window[3] - window[1]
        scale_512 = max(face.iod / 140.0, 0.25)  # ~140 px inter-ocular distance in a 512 face crop
        step = max(1, int(round(self.grid_step * scale_512)))
        warp = MeshWarp(vertices=vertices, triangles=triangles, size=(w, h), step=step, priority=priority)
        src_pts = win_pts.copy()
        src_pts[:, 0] += origin[0]
        src_pts[:, 1] += origin[1]
        mouth = MouthPainter(image=source, landmarks=src_pts, mode=self.mouth_fill)
        lids = EyelidPainter(image=source, landmarks=src_pts)
        rings = np.concatenate([head, win_pts[oval_idx, 2:3]], axis=1)
        rest_gap = float(pair_gaps(win_pts, tp.LIP_PAIRS, face.axes[:, 1]).mean())
        gpu = TorchRemap(source, self.device) if self.device != "cpu" else None
        return MeshAvatar(avatar=avatar, source=source, origin=origin, window=window, face=face, rings=rings,
                          n_ring=n_ring, warp=warp, mouth=mouth, lids=lids, rest_gap=rest_gap, remap_gpu=gpu,
                          face_idx=np.array(tp.FACE_OVAL), detail_idx=tp.detail_groups())

    # -- per frame -------------------------------------------------------------------------------
    def calibrate(self) -> None:
        """Take the next ``neutral_frames`` tracked frames as the driver's neutral."""
        self._neutral = Neutral(self.neutral_frames)
        self._scale.reset()
        self._mapping = None

    def get_calibration(self) -> dict[str, np.ndarray] | None:
        """The driver's neutral face as ``{"neutral": N x 3 float64 landmarks}``, once calibrated."""
        if not self._neutral.complete:
            return None
        return {"neutral": self._neutral.frame.points.copy()}

    def set_calibration(self, state: dict[str, np.ndarray] | None) -> None:
        """Restore a neutral from :meth:`get_calibration` (None: calibrate on the next frames)."""
        if state is None:
            self.calibrate()
            return
        try:
            self._neutral = Neutral.restored(state["neutral"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"saved mesh calibration is unusable ({exc}): press calibrate again") from exc
        self._scale.reset()
        self._mapping = None

    def _pair(self, prepared: MeshAvatar, neutral: FaceFrame | None = None) -> PairMapping:
        """The driver-neutral -> avatar mapping, rebuilt when either changes. With ``neutral`` (the
        avatar's own face, for synthetic expressions before any driver was seen) a separate one."""
        if neutral is not None:
            m = self._self_mapping
            if m is None or m[0] is not prepared:
                self._self_mapping = m = (prepared, 0, PairMapping(neutral, prepared.face, self.limits))
            return m[2]
        m = self._mapping
        if m is None or m[0] is not prepared or m[1] != self._neutral.version:
            self._mapping = (prepared, self._neutral.version, PairMapping(self._neutral.frame, prepared.face, self.limits))
        return self._mapping[2]

    def targets(self, prepared: MeshAvatar, points: np.ndarray, t: float | None = None, *,
                synthetic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per-vertex moves (``V x 2``, window pixels) and target landmarks (``N x 3``) for driver
        ``points`` (``N x 3`` pixels of the driving frame) at time ``t`` (seconds; None: a new
        frame 1/30 s after the last). ``synthetic``: made-up points (:func:`synthetic_face`), which
        neither calibrate nor adapt the neutral; before any calibration they are relative to the
        avatar's own face."""
        p = np.asarray(points, dtype=np.float64)
        if synthetic:
            mapping = self._pair(prepared, None if self._neutral.frame is not None else prepared.face)
        else:
            if not self._neutral.complete:
                self._neutral.add(p)
            mapping = self._pair(prepared)
        expr, raw, gap = mapping.expression(p, 1.0 if synthetic else self.lid_gain)
        if not synthetic and gap < self._neutral.rest_gap - 0.01 * mapping.neutral.iod:
            # Closed further than the neutral: that is the real rest (used from the next frame on).
            self._neutral.close_mouth_to(gap)
        pose, rot = mapping.pose(raw)
        # The face scale changes slowly in reality; its frame-to-frame noise would make the face
        # "breathe", so it gets a One Euro filter of its own on top of the tracker's.
        self._t = self._t + 1.0 / 30.0 if t is None else t
        pose = dataclasses.replace(pose, scale=float(self._scale(np.array([pose.scale]), self._t)[0]))
        a = prepared.face.points
        target = mapping.apply_pose(expr, pose, rot)
        oval = list(tp.FACE_OVAL)
        ring = prepared.rings.copy()
        ring[:, :2] += JAW_FOLLOW * (expr[oval, :2] - a[oval, :2])
        ring_t = mapping.apply_pose(ring, pose, rot)
        v = prepared.warp.vertices
        moves = np.zeros_like(v)  # the fixed ring stays put
        moves[: tp.N_LANDMARKS] = target[:, :2] - a[:, :2]
        head = ring_t[:, :2] - prepared.rings[:, :2]
        moves[prepared.ring(0)] = head
        share = band_falloff(head, v[prepared.ring(1)] - v[prepared.ring(0)], BAND_RHO)
        moves[prepared.ring(2).start:] = (share[..., None] * head).reshape(-1, 2)
        return moves, target

    def animate(self, prepared: MeshAvatar, drive: Drive) -> np.ndarray:
        """Render ``drive``: its tracked face, or its synthetic ``expression`` when set (that wins),
        or, with neither, the last motion easing back to the rest pose."""
        face = drive.landmarks.face if drive.landmarks is not None else None
        if face is not None and len(face.points) < tp.N_LANDMARKS:
            raise EngineError(f"the mesh engine needs MediaPipe's {tp.N_LANDMARKS} refined landmarks, the "
                              f"tracker gave {len(face.points)}: use the mediapipe backend with refine=True")
        expression = drive.expression
        if expression is not None:
            base = self._neutral.frame if self._neutral.frame is not None else prepared.face
            points = synthetic_face(base, mouth_open=expression.mouth_open, blink=expression.blink,
                                    yaw=expression.yaw, pitch=expression.pitch, roll=expression.roll)
            moves, target = self.targets(prepared, points, drive.frame.t_capture, synthetic=True)
            self._last_moves = (prepared, moves, target)
            return self.render(prepared, moves, target)
        if face is not None:
            moves, target = self.targets(prepared, face.points, drive.frame.t_capture)
            self._last_moves = (prepared, moves, target)
        elif self._last_moves is not None and self._last_moves[0] is prepared:
            _, moves, target = self._last_moves
            rest = prepared.face.points
            moves = moves * LOST_DECAY
            target = rest + (target - rest) * LOST_DECAY
            self._last_moves = (prepared, moves, target)
        else:
            moves, target = None, None
        return self.render(prepared, moves, target, drive if face is not None else None)

    def warp_table(self, prepared: MeshAvatar, moves: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The remap table (window ``h x w x 2``, source pixels) for per-vertex ``moves`` and the
        ``target`` landmarks they put the face at."""
        src = prepared.face.points[:, :2]
        tgt = target[:, :2]

        def rect(idx: np.ndarray, margin: float) -> tuple[int, int, int, int]:
            pts = np.concatenate([src[idx], tgt[idx]])
            lo = np.floor(pts.min(axis=0) - margin)
            hi = np.ceil(pts.max(axis=0) + margin)
            return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])

        step = prepared.warp.step
        face = rect(prepared.face_idx, 2.0 * step)
        details = tuple(rect(idx, 1.5 * step) for idx in prepared.detail_idx)
        v, head = prepared.warp.vertices, prepared.ring(0)
        calm = (v[head] + moves[head], v[prepared.ring(1)], BAND_SOFTEN * prepared.face.iod)
        return prepared.warp.map(moves, prepared.origin, face=face, details=details, calm=calm)

    def render(self, prepared: MeshAvatar, moves: np.ndarray | None, target: np.ndarray | None,
               drive: Drive | None = None) -> np.ndarray:
        """The output image for per-vertex ``moves`` (None: the avatar at rest)."""
        x0, y0, x1, y1 = prepared.window
        image = table = None
        if moves is not None and np.abs(moves).max() > 1e-3:
            table = self.warp_table(prepared, moves, target)
            image = prepared.remap_gpu(table) if prepared.remap_gpu is not None else remap_cpu(prepared.source, table)
        if image is None:
            ox, oy = prepared.origin
            image = prepared.source[oy: oy + y1 - y0, ox: ox + x1 - x0].copy()  # painted on below
        if target is not None:
            self._paint_mouth(prepared, image, target, drive)
            down = prepared.face.axes[:, 1]
            closure = tuple(1.0 - float(pair_gaps(target, pairs, down).mean()) / max(rest, 1e-6)
                            for pairs, rest in zip((tp.EYE_RIGHT_PAIRS, tp.EYE_LEFT_PAIRS), prepared.face.eye_gaps))
            prepared.lids.paint(image, target, closure, table, prepared.origin)
        if self.output == "crop":
            return image
        out = prepared.avatar.image.copy()
        out[y0:y1, x0:x1] = image
        return out

    def _paint_mouth(self, prepared: MeshAvatar, image: np.ndarray, target: np.ndarray, drive: Drive | None) -> None:
        gap = float(pair_gaps(target, tp.LIP_PAIRS, prepared.face.axes[:, 1]).mean())
        width = float(np.linalg.norm(target[tp.LIP_INNER_UPPER[0], :2] - target[tp.LIP_INNER_UPPER[-1], :2]))
        opened = (gap - prepared.rest_gap) / max(width, 1e-6)
        strength = float(np.clip((opened - 0.005) / 0.02, 0.0, 1.0))
        if strength <= 0.0:
            return
        driver = None
        if drive is not None and self.mouth_fill == "driver":
            driver = (drive.frame.image, drive.landmarks.face.points)
        prepared.mouth.paint(image, target, strength, driver)


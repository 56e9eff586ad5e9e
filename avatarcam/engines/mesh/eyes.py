"""Closed eyes: the avatar's own lid skin drawn down over the eye.

The warp alone closes an eye by stretching the upper-lid band (crease to lid edge) down over a
squeezed eye opening. That band ends in the open eye's lashes, so the stretched lid turns into a
dark streaky band, and whatever opening the tracker leaves (it never reads a shut eye as a zero
gap) still shows a sliver of iris and eye white. A real closing lid is skin, with the lashes at
its edge.

So, once per avatar, each eye's opening, its upper lashes and the skin up to the brow are filled
in with the smoothest surface that meets the skin around them (Laplace's equation): a *lid
source* that equals the photo everywhere else, so it has no outline of its own and takes its
tone and shading from the avatar's own skin (thin dark things on its border, the brow's lower
edge and the lashes, are ranked out first, or a brow would darken the whole lid). Toward the
lid edge the shadow above the eye (a deep socket, glasses) is lifted toward the skin under the
eye, as a shut lid bulges into the light.
Per frame, as an eye closes, that lid source is resampled through the same warp table as the
photo and blended over the lid (from 8 % closure on, fully from 48 %: before that the warp smears
long lashes down over the iris), and over what is left of the opening once the eye is nearly
shut, its outline feathered into the photo; a lash line, tapered toward the corners, in the
photo's own lash colour and about as soft as the photo at the eye, marks the lid edge. Both lids
are painted as far as the eyes' mean closure unless the eyes differ a lot (a wink): two lids
painted unequally, from each eye's own tracker noise, read as a head tilt.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg

from avatarcam.engines.mesh import topology as tp
from avatarcam.engines.mesh.measure import sample_colours, softness
from avatarcam.geometry import smoothstep

# Skin under each eye: the closest stand-in for lid skin that is never hidden by brows or lashes.
UNDER_RIGHT = np.array([111, 117, 118, 119, 120, 121, 228, 229, 230, 231], dtype=np.int64)
UNDER_LEFT = np.array([340, 346, 347, 348, 349, 350, 448, 449, 450, 451], dtype=np.int64)
# The ring above the crease (below the brow).
ABOVE_RIGHT = (113, 225, 224, 223, 222, 221, 189)
ABOVE_LEFT = (342, 445, 444, 443, 442, 441, 413)

LASH_HEIGHT = 0.12  # how far the upper lashes reach above the lid edge, in eye widths (filled in)
LASH_WIDTH = 0.03  # the drawn lash line's thickness at its middle, in eye widths
LASH_DARKNESS = 0.35  # the lash line's colour as a share of the lid skin's, where the photo's is unknown
LASH_RANK = 10.0  # the photo's lash colour: its darkest LASH_RANK % in the band of the upper lashes
LASH_SOFTNESS = 0.6  # the lash line's blur, as a share of the photo's own softness at the eye
LID_LIGHT = 0.85  # a shut lid's lit edge, as a share of the skin under the eye
SHADOW_REACH = 0.5  # how far from under the brow toward the lid edge a shut lid stays in shadow
FILL_WIDTH = 40.0  # eye width in pixels at which the lid skin is filled in
# The skin the fill starts from: each pixel's SKIN_RANK-th percentile over a disc SKIN_DISC eye
# widths across, so the brow's lower edge, lashes or a wrinkle on the fill's border do not pull
# the whole lid darker.
SKIN_RANK = 75.0
SKIN_DISC = 0.15
LID_FEATHER = 0.06  # the painted lid's edge: Gaussian blur of its outline, in eye widths
LID_FROM, LID_FULL = 0.08, 0.48  # eye closure at which the painted lid starts and is fully on
SHUT_FROM, SHUT_FULL = 0.5, 0.8  # the same for the lid over what is left of the opening
# Two eyes whose closures differ by less than WINK_FROM are painted as far as their mean closure,
# by more than WINK_FULL each as far as its own.
WINK_FROM, WINK_FULL = 0.3, 0.6
# The filled lid's grain: the detail finer than GRAIN_SIZE eye widths of the skin under the eye,
# mirrored across a line GRAIN_MIRROR_GAP eye widths under the lower lid (past the lower lashes),
# its strong lines squashed to GRAIN_CLIP x the detail's typical size.
GRAIN_SIZE = 0.05
GRAIN_MIRROR_GAP = 0.12
GRAIN_CLIP = 2.0

_EYES = (
    (tp.EYE_RIGHT_UPPER, tp.EYE_RIGHT_LOWER, ABOVE_RIGHT, UNDER_RIGHT),
    (tp.EYE_LEFT_UPPER, tp.EYE_LEFT_LOWER, ABOVE_LEFT, UNDER_LEFT),
)  # (upper lid edge, lower lid edge, ring under the brow, skin under the eye), outer to inner corner


def _eye_frame(edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit axis along the eye (corner to corner, pointing to the image's right) and the normal
    pointing down the face, for lid points ``edge`` (``K x 2``, corner to corner)."""
    axis = edge[-1] - edge[0]
    axis = axis / max(float(np.linalg.norm(axis)), 1e-6)
    if axis[0] < 0:
        axis = -axis
    return axis, np.array([-axis[1], axis[0]])


def _lid_curve(edge: np.ndarray, samples: int = 24) -> np.ndarray:
    """The lid edge as a smooth curve (``samples x 2``): a parabola in the eye's own frame fitted
    to the landmarks (their frame-to-frame noise would make a polyline through them wobble),
    through the two corners."""
    axis, normal = _eye_frame(edge)
    origin = edge[0]
    u = (edge - origin) @ axis
    v = (edge - origin) @ normal
    span = u[-1] - u[0]
    if abs(span) < 1e-6:
        return edge.copy()
    # v = v0 + (v1 - v0) s + c s (1 - s) with s in [0, 1] along the eye: the corners stay exact,
    # c is the least-squares bulge of the lid points between them.
    s = (u - u[0]) / span
    base = v[0] + (v[-1] - v[0]) * s
    bump = s * (1.0 - s)
    c = float(bump @ (v - base) / max(float(bump @ bump), 1e-9))
    ss = np.linspace(0.0, 1.0, samples)
    uu = u[0] + span * ss
    vv = v[0] + (v[-1] - v[0]) * ss + c * ss * (1.0 - ss)
    return origin + uu[:, None] * axis + vv[:, None] * normal


@dataclass(frozen=True)
class _LidSource:
    """One eye's filled-in lid source: ``patch`` (RGB uint8) covering source pixels from
    ``offset`` (x, y), and the mean colour of the filled-in lid, which the lash line is drawn
    against (RGB float32; the skin under the eye where the eye is too small to fill)."""

    patch: np.ndarray
    offset: tuple[int, int]
    skin: np.ndarray
    grain: np.ndarray | None = None  # float32 luma detail over ``patch``'s pixels, 0 outside the fill
    corners: np.ndarray | None = None  # the eye's corners (2 x 2) in source pixels
    lash: np.ndarray | None = None  # the photo's own lash colour (RGB float32)
    blur: float = 0.0  # the lash line's blur, in eye widths


def _eye_coords(shape: tuple[int, int], axis: np.ndarray, normal: np.ndarray, offset: tuple[int, int] = (0, 0)
                ) -> tuple[np.ndarray, ...]:
    """Per pixel of a ``shape`` region whose (0, 0) is at ``offset``: its x and y, and its
    coordinates along the eye (u) and down the face (v) in the eye's frame (float32)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    xs += offset[0]
    ys += offset[1]
    return xs, ys, xs * axis[0] + ys * axis[1], xs * normal[0] + ys * normal[1]


def _height_at(u: np.ndarray, line: np.ndarray, axis: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The v (down the face) of the polyline ``line`` (``K x 2``) at eye-frame positions ``u``."""
    lu, lv = line @ axis, line @ normal
    order = np.argsort(lu)
    return np.interp(u, lu[order], lv[order])


def _between(top: np.ndarray, bottom: np.ndarray, shape: tuple[int, int], reach: float = 1.0) -> np.ndarray:
    """Per pixel of a ``shape`` region, 0 on and above the polyline ``top`` rising smoothly to 1
    at ``reach`` of the way to the polyline ``bottom`` and below (both ``K x 2``, corner to
    corner), in the eye's frame."""
    axis, normal = _eye_frame(bottom)
    _, _, u, v = _eye_coords(shape, axis, normal)
    vt = _height_at(u, top, axis, normal)
    vb = _height_at(u, bottom, axis, normal)
    return smoothstep((v - vt) / np.maximum(reach * (vb - vt), 1e-3))


def _membrane(values: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """The smoothest surface (``h x w x C`` float32) that meets ``values`` (``h x w x C``) around
    the pixels under ``mask`` (bool), i.e. Laplace's equation with those values on its boundary;
    outside the mask it is ``values`` blurred. Solved at ``scale`` of the resolution: the surface
    is smooth, so fine detail would only cost time."""
    h, w = mask.shape
    sw, sh = max(3, round(w * scale)), max(3, round(h * scale))
    channels = values.reshape(h, w, -1)
    small = np.dstack([cv2.resize(channels[..., c], (sw, sh), interpolation=cv2.INTER_AREA)
                       for c in range(channels.shape[2])]).astype(np.float64)
    hole = cv2.resize(mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_AREA) > 0
    hole[0, :] = hole[-1, :] = hole[:, 0] = hole[:, -1] = False  # the patch edge stays known
    ys, xs = np.nonzero(hole)
    n = len(ys)
    if n:
        idx = np.full((sh, sw), -1, np.int64)
        idx[ys, xs] = np.arange(n)
        rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
        rhs = np.zeros((n, small.shape[2]))
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ny, nx = ys + dy, xs + dx
            j = idx[ny, nx]
            inner = j >= 0
            rows.append(np.flatnonzero(inner))
            cols.append(j[inner])
            vals.append(np.full(int(inner.sum()), -1.0))
            rhs[~inner] += small[ny[~inner], nx[~inner]]
        a = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                    shape=(n, n))
        small[ys, xs] = scipy.sparse.linalg.spsolve(a, rhs).reshape(n, -1)
    small = small.astype(np.float32)
    return np.dstack([cv2.resize(small[..., c], (w, h), interpolation=cv2.INTER_LINEAR)
                      for c in range(small.shape[2])])


def _lid_source(image: np.ndarray, points: np.ndarray, upper: tuple[int, ...], lower: tuple[int, ...],
                above: tuple[int, ...], under: np.ndarray) -> _LidSource:
    """Fill one eye's opening, upper lashes and upper lid in ``image`` (RGB uint8) with lid skin;
    ``points`` in its pixels."""
    h, w = image.shape[:2]
    up, low = points[list(upper), :2], points[list(lower), :2]
    width = float(np.linalg.norm(up[-1] - up[0]))
    _, normal = _eye_frame(up)
    region = np.concatenate([points[list(above), :2], low])
    pad = 0.35 * width + 4
    x0, y0 = (np.floor(region.min(axis=0) - pad).astype(int)).clip(0)
    x1, y1 = np.ceil(region.max(axis=0) + pad).astype(int)
    x1, y1 = min(int(x1), w), min(int(y1), h)
    patch = np.ascontiguousarray(image[y0:y1, x0:x1])
    skin = sample_colours(image, points[under], radius=2)
    if patch.shape[0] < 4 or patch.shape[1] < 4 or width < 2.0:
        return _LidSource(patch=patch, offset=(int(x0), int(y0)), skin=skin)
    offset = np.array([x0, y0], dtype=np.float64)
    # The opening, the lid up to the ring under the brow, and the lashes (they flare out at the
    # corners, so the mask grows a little all round).
    opening = np.concatenate([up, low[-2:0:-1]]) - offset
    band = np.concatenate([up, points[list(above[::-1]), :2]]) - offset
    lashes = np.concatenate([up, (up - LASH_HEIGHT * width * normal)[::-1]]) - offset
    mask = np.zeros(patch.shape[:2], np.uint8)
    for poly in (opening, band, lashes):
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    grow = max(1, round(0.04 * width))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))) > 0
    # Two fills: one from the pixels as they are, and one where the shadow above the eye (a
    # deep socket, a brow, a glasses rim) is lifted toward the skin under the eye. A shut lid
    # bulges out of that shadow into the light: dark under the crease, lit toward its edge.
    values = patch.astype(np.float32)
    scale = min(1.0, FILL_WIDTH / width)
    bare = _skin_only(values, scale * SKIN_DISC * width, scale)
    luma = bare.mean(axis=2, keepdims=True)
    floor = LID_LIGHT * float(skin.mean())
    lift = np.clip(1.0 - luma / max(floor, 1.0), 0.0, 1.0)
    lifted = bare + lift * (LID_LIGHT * skin - bare)
    surface = _membrane(np.concatenate([bare, lifted], axis=2), mask, scale)
    ramp = _between(points[list(above), :2] - offset, up - offset, mask.shape, SHADOW_REACH)[..., None]
    surface = surface[..., :3] + ramp * (surface[..., 3:] - surface[..., :3])
    # Up-sampled, the surface is a little off next to the hole's edge: blend it in over a band.
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, 0.6 * width / FILL_WIDTH))
    weight = np.maximum(weight, mask)[..., None]
    filled = np.clip(values + weight * (surface - values) + 0.5, 0, 255).astype(np.uint8)
    grain = _grain(image, up, low, width, (int(x0), int(y0)), mask.shape) * weight[..., 0]
    lashes_at = np.concatenate([up - LASH_HEIGHT * width * normal, (up + 0.03 * width * normal)[::-1]]) - offset
    return _LidSource(patch=filled, offset=(int(x0), int(y0)), skin=filled[mask].astype(np.float32).mean(axis=0),
                      lash=_lash_colour(values, lashes_at), blur=LASH_SOFTNESS * softness(patch) / width,
                      grain=grain.astype(np.float32), corners=np.array([up[0], up[-1]]))


def _lash_colour(values: np.ndarray, band: np.ndarray) -> np.ndarray | None:
    """The photo's own lash colour (RGB float32): the mean of the darkest LASH_RANK % of the pixels of
    ``values`` (``h x w x 3``) inside the polygon ``band``; None with too few pixels."""
    inside = np.zeros(values.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(band * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    pixels = values[inside > 0]
    if len(pixels) < 10:
        return None
    luma = pixels.mean(axis=1)
    return pixels[luma <= np.percentile(luma, LASH_RANK)].mean(axis=0).astype(np.float32)


def _skin_only(values: np.ndarray, disc: float, scale: float) -> np.ndarray:
    """``values`` (``h x w x 3`` float32) with thin dark things (hairs, lashes, a brow's edge,
    wrinkles) taken out: per channel, the SKIN_RANK-th percentile over a disc ``disc`` pixels
    across, worked out at ``scale`` of the resolution (the fill is solved there too)."""
    h, w = values.shape[:2]
    small = cv2.resize(values, (max(3, round(w * scale)), max(3, round(h * scale))), interpolation=cv2.INTER_AREA)
    size = max(3, 2 * round(disc / 2) + 1)
    disc_mask = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)) > 0
    small = np.dstack([scipy.ndimage.percentile_filter(small[..., c], SKIN_RANK, footprint=disc_mask, mode="nearest")
                       for c in range(small.shape[2])])
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _grain(image: np.ndarray, up: np.ndarray, low: np.ndarray, width: float, offset: tuple[int, int],
           shape: tuple[int, int]) -> np.ndarray:
    """Skin texture for the filled-in lid (float32 luma detail over ``shape`` pixels from
    ``offset``): the fine detail of the skin under the eye, mirrored up across a line just under
    the lower lashes, with strong lines (a deep wrinkle, a glasses rim) softened toward the level of
    the skin's own grain."""
    h, w = image.shape[:2]
    axis, normal = _eye_frame(up)
    xs, ys, u, v = _eye_coords(shape, axis, normal, offset)
    line = _height_at(u, low, axis, normal) + GRAIN_MIRROR_GAP * width
    shift = np.maximum(2.0 * (line - v), 0.0)  # a pixel above the line goes twice its height down
    mx, my = xs + shift * normal[0], ys + shift * normal[1]
    x0, y0 = max(int(np.floor(mx.min())) - 4, 0), max(int(np.floor(my.min())) - 4, 0)
    x1, y1 = min(int(np.ceil(mx.max())) + 5, w), min(int(np.ceil(my.max())) + 5, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return np.zeros(shape, np.float32)
    luma = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = luma - cv2.GaussianBlur(luma, (0, 0), max(1.0, GRAIN_SIZE * width))
    clip = GRAIN_CLIP * (1.4826 * float(np.median(np.abs(detail))) + 1e-3)  # x the detail's robust spread
    detail = clip * np.tanh(detail / clip)
    return cv2.remap(detail, (mx - x0).astype(np.float32), (my - y0).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation, scale and shift taking the two points ``a`` onto the two points ``b``."""
    da, db = a[1] - a[0], b[1] - b[0]
    za, zb = complex(da[0], da[1]), complex(db[0], db[1])
    k = zb / za if abs(za) > 1e-9 else 1.0 + 0j
    rot = np.array([[k.real, -k.imag], [k.imag, k.real]])
    return np.hstack([rot, (b[0] - rot @ a[0])[:, None]])


def _paint_closures(closure: tuple[float, float]) -> tuple[float, float]:
    """How far to paint each lid (right, left) for the eyes' ``closure``: their mean, unless they
    differ by more than WINK_FROM, fading to each eye's own closure at WINK_FULL."""
    right, left = float(closure[0]), float(closure[1])
    mean = 0.5 * (right + left)
    own = float(smoothstep((abs(right - left) - WINK_FROM) / (WINK_FULL - WINK_FROM)))
    return mean + own * (right - mean), mean + own * (left - mean)


class EyelidPainter:
    """Lid sources of one avatar (``image`` RGB uint8, ``landmarks`` ``N x 2+`` in its pixels)."""

    def __init__(self, *, image: np.ndarray, landmarks: np.ndarray) -> None:
        pts = np.asarray(landmarks, dtype=np.float64)
        self.sources = [_lid_source(image, pts, *eye) for eye in _EYES]

    def paint(self, out: np.ndarray, points: np.ndarray, closure: tuple[float, float],
              table: np.ndarray | None = None, origin: tuple[int, int] = (0, 0)) -> None:
        """Draw the lids over ``out`` (in place) for target landmarks ``points`` (``N x 2+`` in ``out``
        pixels); ``closure`` per eye (right, left): 0 open as in the photo .. 1 shut; ``table``:
        the warp's remap table that produced ``out`` (``h x w x 2`` float32, source pixel per
        ``out`` pixel; None: ``out`` is the photo itself, unwarped, its (0, 0) at ``origin`` in
        the photo)."""
        h, w = out.shape[:2]
        for (upper, lower, above, _), src, c in zip(_EYES, self.sources, _paint_closures(closure)):
            band = float(smoothstep((c - LID_FROM) / (LID_FULL - LID_FROM)))  # the lid skin over the lashes
            shut = float(smoothstep((c - SHUT_FROM) / (SHUT_FULL - SHUT_FROM)))  # and over the opening
            if band <= 0.0:
                continue
            up, low = points[list(upper), :2], points[list(lower), :2]
            width = float(np.linalg.norm(up[-1] - up[0]))
            lid = np.concatenate([up[:1], points[list(above), :2], up[-1:], up[-2:0:-1]])
            opening = np.concatenate([up, low[-2:0:-1]])
            pad = int(np.ceil(3.0 * LID_FEATHER * width)) + 2  # room for the feathered edge
            both = np.concatenate([lid, low])
            x0, y0 = np.maximum(np.floor(both.min(axis=0)).astype(int) - pad, 0)
            x1, y1 = np.ceil(both.max(axis=0)).astype(int) + pad
            x1, y1 = min(int(x1), w), min(int(y1), h)
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            corner = np.array([x0, y0], dtype=np.float64)
            if table is None:
                ys, xs = np.mgrid[y0 + origin[1]:y1 + origin[1], x0 + origin[0]:x1 + origin[0]].astype(np.float32)
                where = np.dstack([xs, ys])
            else:
                where = table[y0:y1, x0:x1]
            roi = np.ascontiguousarray(out[y0:y1, x0:x1])
            # Where the warp samples outside the patch, the patch equals the photo anyway: keep
            # the warped photo there.
            lidded = roi.copy()
            cv2.remap(src.patch, where - np.asarray(src.offset, np.float32), None, cv2.INTER_LINEAR,
                      dst=lidded, borderMode=cv2.BORDER_TRANSPARENT)
            mask = np.zeros(roi.shape[:2], np.float32)
            cv2.fillPoly(mask, [np.round((lid - corner) * 16).astype(np.int32)], band, cv2.LINE_AA, shift=4)
            if shut > 0.0:
                hole = np.zeros_like(mask)
                cv2.fillPoly(hole, [np.round((opening - corner) * 16).astype(np.int32)], shut, cv2.LINE_AA,
                             shift=4)
                mask = np.maximum(mask, hole)
            mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, LID_FEATHER * width))
            blended = roi.astype(np.float32)
            blended += mask[..., None] * (lidded.astype(np.float32) - blended)
            if src.grain is not None:
                # The lid's grain moves with the eye as a whole (a similarity through its corners),
                # not with the warp, which stretches a closing lid's band to several times its height.
                to_src = _similarity(np.array([up[0], up[-1]]) - corner, src.corners - np.asarray(src.offset))
                grain = cv2.warpAffine(src.grain, to_src, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                blended += (mask * grain)[..., None]
            # The lash line along the lid edge, thickest in the middle.
            curve = _lid_curve(up) - corner
            _, normal = _eye_frame(up)
            s = np.linspace(0.0, 1.0, len(curve))
            half = 0.5 * LASH_WIDTH * width * (0.35 + 0.65 * np.sin(np.pi * s))[:, None] + 0.35
            outline = np.concatenate([curve - half * normal, (curve + half * normal)[::-1]])
            lash = np.zeros_like(mask)
            cv2.fillPoly(lash, [np.round(outline * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
            lash = cv2.GaussianBlur(lash, (0, 0), max(0.5, src.blur * width)) * (0.85 * band)
            colour = src.skin * LASH_DARKNESS if src.lash is None else src.lash
            blended += lash[..., None] * (colour - blended)
            out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)

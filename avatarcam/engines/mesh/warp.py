"""The dense warp: a triangle mesh whose source side is fixed per avatar, turned into one remap per frame.

Backward mapping needs, for every output pixel, the source pixel it shows. Inside each *target*
triangle that is one affine map of the output position, so the backward map is found by
rasterising the moved (target) triangles every frame on coarse grids, fully vectorised with no
Python loop over triangles: per frame one affine map per triangle, then per grid every (triangle,
grid row) pair with the span of columns it covers, then every covered grid point. Where the moved
mesh overlaps itself (a fold at the far side of a turned face) the triangle nearest the camera
wins. This is exact at the grid points and cannot fail where the warp compresses (a closing eye)
or stretches (an opening mouth), unlike inverting the forward displacement iteratively. Three
grid levels (coarse for the whole window, finer for the face, finest for eyes and lips) are
upsampled bilinearly into one full-resolution table, applied with a single ``cv2.remap`` (or
``grid_sample`` on a GPU). With zero displacement the table is the pixel grid itself, so the
output is the input.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in window pixels
Calm = tuple[np.ndarray, np.ndarray, float]  # keep polygon, region polygon, sigma (see MeshWarp.map)


class MeshWarp:
    """Warp of one avatar's mesh over an output window.

    ``vertices``: ``V x 2`` source positions in window pixels; ``triangles``: ``F x 3`` vertex
    indices; ``priority``: per triangle, higher wins where the moved mesh overlaps itself (default:
    later triangles win); ``size``: (width, height) of the window; ``step``: grid spacing in pixels
    of the face level. The map is built in levels: the whole window on a grid twice as coarse
    (the rings around the head move smoothly), the face at ``step``, and small regions that
    need sharp detail (closing lids, lip edges) at ``max(1, step // 2)``.
    """

    def __init__(self, *, vertices: np.ndarray, triangles: np.ndarray, size: tuple[int, int], step: int = 4,
                 priority: np.ndarray | None = None) -> None:
        if step < 1:
            raise ValueError(f"grid step must be >= 1 pixel, got {step}")
        self.size = (int(size[0]), int(size[1]))
        self.step = int(step)
        self.vertices = np.asarray(vertices, dtype=np.float64)
        tris = np.asarray(triangles, dtype=np.int64)
        prio = np.arange(len(tris)) if priority is None else np.asarray(priority)
        # Sorted by priority, so that among overlapping triangles the last written wins.
        self.triangles = tris[np.argsort(prio, kind="stable")]

    def _affines(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per triangle (in priority order): target vertices (``F x 3 x 2``), the affine map from a
        target point to its source point (``F x 6``: a, b, c, d, e, f of x' = a x + b y + c,
        y' = d x + e y + f; zero for collapsed triangles), a mask of the non-collapsed ones and
        the target bounding boxes (``F x 4``)."""
        tri = self.triangles
        t = target[tri]  # F x 3 x 2
        src = self.vertices[tri]
        e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
        ok = np.abs(det) > 1e-9
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        u1, u2 = src[:, 1] - src[:, 0], src[:, 2] - src[:, 0]
        # Barycentric (l1, l2) = K (p - a) with K = [[e2y, -e2x], [-e1y, e1x]] / det; source = s_a + U (l1, l2).
        k11, k12, k21, k22 = e2[:, 1] * inv, -e2[:, 0] * inv, -e1[:, 1] * inv, e1[:, 0] * inv
        j11 = u1[:, 0] * k11 + u2[:, 0] * k21
        j12 = u1[:, 0] * k12 + u2[:, 0] * k22
        j21 = u1[:, 1] * k11 + u2[:, 1] * k21
        j22 = u1[:, 1] * k12 + u2[:, 1] * k22
        ax, ay = t[:, 0, 0], t[:, 0, 1]
        aff = np.stack([j11, j12, src[:, 0, 0] - j11 * ax - j12 * ay,
                        j21, j22, src[:, 0, 1] - j21 * ax - j22 * ay], axis=1)
        box = np.concatenate([t.min(axis=1), t.max(axis=1)], axis=1)  # F x 4: x0, y0, x1, y1
        return t, aff, ok, box

    def _raster(self, tris: tuple[np.ndarray, np.ndarray, np.ndarray], rect: Rect, step: int,
                origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Absolute source positions (``gh x gw x 2`` float32, plus ``origin``) on the grid of
        ``rect`` padded by one cell on every side; grid point (i, j) sits at
        ``x0 + (j - 1) * step + (step - 1) / 2``. Returns the grid and its column and row positions
        (window pixels, see :func:`_grid_axes`).

        Scanline rasterisation, vectorised over all triangles: first every (triangle, grid row)
        pair with the row's covered column span, then every covered grid point, so no work is
        spent on the empty parts of triangles' bounding boxes."""
        x0, y0, x1, y1 = rect
        gw, gh = math.ceil((x1 - x0) / step) + 2, math.ceil((y1 - y0) / step) + 2
        px, py = _grid_axes(rect, step, gw, gh)
        ox, oy = float(px[0]), float(py[0])  # position of grid point (0, 0)
        out = _identity(px, py, origin)  # where no triangle covers
        t_px, aff_all, ok, box = tris
        # Only the triangles that reach this grid (a detail level sees a few dozen of them).
        ex0, ey0 = ox - 1e-3, oy - 1e-3
        ex1, ey1 = ox + (gw - 1) * step + 1e-3, oy + (gh - 1) * step + 1e-3
        sel = np.flatnonzero(ok & (box[:, 2] >= ex0) & (box[:, 0] <= ex1) & (box[:, 3] >= ey0) & (box[:, 1] <= ey1))
        if len(sel) == 0:
            return out, px, py
        t = (t_px[sel] - (ox, oy)) / step  # K x 3 x 2 in grid units
        aff = aff_all[sel]
        bs = (box[sel] - (ox, oy, ox, oy)) / step
        r0 = np.maximum(np.ceil(bs[:, 1] - 1e-6), 0)
        r1 = np.minimum(np.floor(bs[:, 3] + 1e-6), gh - 1)
        rows = np.maximum(r1 - r0 + 1, 0).astype(np.int64)
        live = np.flatnonzero(rows)
        if len(live) == 0:
            return out, px, py
        n = rows[live]
        f = np.repeat(live, n)
        y = r0[f] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        # Column span of each (triangle, row): where the row crosses the triangle's edges.
        lo = np.full(len(f), np.inf)
        hi = np.full(len(f), -np.inf)
        tf = t[f]
        for i, j in ((0, 1), (1, 2), (2, 0)):
            py_, qy = tf[:, i, 1], tf[:, j, 1]
            px_, qx = tf[:, i, 0], tf[:, j, 0]
            dy = qy - py_
            flat = np.abs(dy) < 1e-12
            tt = (y - py_) / np.where(flat, 1.0, dy)
            cross = (~flat) & (tt >= -1e-9) & (tt <= 1.0 + 1e-9)
            x = px_ + np.clip(tt, 0.0, 1.0) * (qx - px_)
            lo = np.where(cross, np.minimum(lo, x), lo)
            hi = np.where(cross, np.maximum(hi, x), hi)
            # A horizontal edge lying on this row covers its whole length.
            on = flat & (np.abs(y - py_) < 1e-9)
            lo = np.where(on, np.minimum(lo, np.minimum(px_, qx)), lo)
            hi = np.where(on, np.maximum(hi, np.maximum(px_, qx)), hi)
        c0 = np.maximum(np.ceil(lo - 1e-6), 0)
        c1 = np.minimum(np.floor(hi + 1e-6), gw - 1)
        m = np.where(np.isfinite(c0) & np.isfinite(c1), c1 - c0 + 1, 0)
        m = np.maximum(m, 0).astype(np.int64)
        keep = np.flatnonzero(m)
        if len(keep) == 0:
            return out, px, py
        m = m[keep]
        total = int(m.sum())
        span = np.repeat(keep, m)
        col = c0[span] + (np.arange(total) - np.repeat(np.cumsum(m) - m, m))
        row = y[span]
        a = aff[f[span]].astype(np.float32)
        # Pixel position of the grid point, then the triangle's target -> source affine map.
        gx = (col * step + ox).astype(np.float32)
        gy = (row * step + oy).astype(np.float32)
        value = np.empty((total, 2), dtype=np.float32)
        value[:, 0] = a[:, 0] * gx + a[:, 1] * gy + a[:, 2] + origin[0]
        value[:, 1] = a[:, 3] * gx + a[:, 4] * gy + a[:, 5] + origin[1]
        # Pairs come in priority order; where triangles overlap the last one written stays.
        out.reshape(-1, 2)[row.astype(np.int64) * gw + col.astype(np.int64)] = value
        return out, px, py

    def _level(self, table: np.ndarray, tris: tuple, rect: Rect, step: int, origin: tuple[int, int],
               calm: Calm | None = None, keep: np.ndarray | None = None) -> None:
        """Fill ``table`` inside ``rect`` from a raster at ``step``, upsampled bilinearly; with
        ``calm``, smoothed there (see :meth:`map`); with ``keep``, only inside that polygon."""
        x0, y0, x1, y1 = rect
        if x1 <= x0 or y1 <= y0:
            return
        grid, px, py = self._raster(tris, rect, step, origin)
        gw, gh = len(px), len(py)
        if calm is not None:
            grid = _calmed(grid, calm, px, py, step, origin)
        if keep is not None:
            # Outside ``keep`` this level takes what the table already holds there (the coarser
            # level, smoothed), sampled at its own grid points, fading in over about a cell.
            mx, my = np.meshgrid(px, py)
            below = cv2.remap(table, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            inside = cv2.GaussianBlur(_fill(keep, px, py, step), (0, 0), 1.0)[..., None]
            grid = below + inside * (grid - below)
        if step == 1:
            table[y0:y1, x0:x1] = grid[1:1 + y1 - y0, 1:1 + x1 - x0]
            return
        full = cv2.resize(grid, (gw * step, gh * step), interpolation=cv2.INTER_LINEAR)
        table[y0:y1, x0:x1] = full[step:step + y1 - y0, step:step + x1 - x0]

    def affines_for(self, moves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._affines(self.vertices + moves)

    def map(self, moves: np.ndarray, origin: tuple[int, int] = (0, 0), face: Rect | None = None,
            details: tuple[Rect, ...] = (), calm: Calm | None = None) -> np.ndarray:
        """The remap table (``h x w x 2`` float32, source pixel per window pixel) for per-vertex
        ``moves`` (``V x 2``). ``face``: the region rastered at ``step`` (default: the whole window);
        ``details``: regions rastered at ``max(1, step // 2)``; ``origin``: the window's top-left
        corner in the source image (integer pixels).

        ``calm``: (``keep``, ``region``, ``sigma``), polygons in window pixels and a length in
        pixels. Inside ``region`` but outside ``keep``, the displacement of the coarse level is
        smoothed with a Gaussian of ``sigma`` (normalised over ``region``, so nothing outside it
        moves): a piecewise-affine mesh creases straight lines along its triangles' edges, and
        that is where the mesh only stands in for a smooth motion (the band around a head). The
        ``face`` level then fills only the inside of ``keep``. Used with ``face``."""
        w, h = self.size
        tris = self.affines_for(moves)
        table = np.empty((h, w, 2), dtype=np.float32)
        whole = (0, 0, w, h)
        if face is None:
            self._level(table, tris, whole, self.step, origin)
        else:
            self._level(table, tris, whole, 2 * self.step, origin, calm=calm)
            self._level(table, tris, _clip(face, w, h), self.step, origin,
                        keep=None if calm is None else calm[0])
        for rect in details:
            self._level(table, tris, _clip(rect, w, h), max(1, self.step // 2), origin)
        return table


def _grid_axes(rect: Rect, step: int, gw: int, gh: int) -> tuple[np.ndarray, np.ndarray]:
    """Window-pixel positions of a level's grid columns and rows (see :meth:`MeshWarp._raster`)."""
    half = (step - 1) / 2.0
    return ((np.arange(gw, dtype=np.float32) - 1.0) * step + (rect[0] + half),
            (np.arange(gh, dtype=np.float32) - 1.0) * step + (rect[1] + half))


def _identity(px: np.ndarray, py: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """The grid of axes ``px``, ``py`` as source positions (``gh x gw x 2``, plus ``origin``)."""
    out = np.empty((len(py), len(px), 2), dtype=np.float32)
    out[..., 0] = px + origin[0]
    out[..., 1] = (py + origin[1])[:, None]
    return out


def _fill(poly: np.ndarray, px: np.ndarray, py: np.ndarray, step: int) -> np.ndarray:
    """1 inside ``poly`` (window pixels), 0 outside, on the grid of axes ``px``, ``py``."""
    m = np.zeros((len(py), len(px)), np.float32)
    cv2.fillPoly(m, [np.round((poly - (px[0], py[0])) / step * 16).astype(np.int32)], 1.0, shift=4)
    return m


def _calmed(grid: np.ndarray, calm: Calm, px: np.ndarray, py: np.ndarray, step: int,
            origin: tuple[int, int]) -> np.ndarray:
    """``grid`` (a level's raster on axes ``px``, ``py``, see :meth:`MeshWarp._raster`) with its
    displacement smoothed inside ``calm``'s region and outside its keep polygon, blending in over
    about a grid cell."""
    keep, region, sigma = calm
    disp = grid - _identity(px, py, origin)
    inside = _fill(region, px, py, step)
    s = max(sigma / step, 0.5)
    weight = cv2.GaussianBlur(inside, (0, 0), s)
    smooth = cv2.GaussianBlur(disp * inside[..., None], (0, 0), s) / np.maximum(weight, 1e-6)[..., None]
    exact = cv2.GaussianBlur(cv2.dilate(_fill(keep, px, py, step), np.ones((3, 3), np.uint8)), (0, 0), 1.0)
    # Full smoothing from about a sigma inside the region, none at its edge (where the mesh's own
    # motion has already faded to nothing).
    core = np.clip(2.0 * weight - 1.0, 0.0, 1.0)
    share = (core * (1.0 - exact))[..., None]
    return grid + share * (smooth - disp)


def _clip(rect: Rect, w: int, h: int) -> Rect:
    x0, y0, x1, y1 = rect
    return max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)


def remap_cpu(source: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Sample ``source`` (``H x W x 3`` uint8) at ``table`` (``h x w x 2`` float32) bilinearly."""
    return cv2.remap(source, table, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class TorchRemap:
    """``grid_sample`` version of :func:`remap_cpu` for a GPU: the source stays on the device
    (uploaded once per avatar), only the map goes up and the result comes down each frame."""

    def __init__(self, source: np.ndarray, device: str) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.shape = source.shape
        src = torch.from_numpy(np.ascontiguousarray(source)).to(self.device)
        self._src = src.permute(2, 0, 1)[None].float()  # 1 x 3 x H x W

    def __call__(self, table: np.ndarray) -> np.ndarray:
        torch = self._torch
        h, w = self.shape[:2]
        grid = torch.from_numpy(table).to(self.device)
        # align_corners=True: -1 and 1 are the centres of the first and last source pixels.
        scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=self.device)
        grid = (grid * scale - 1.0)[None]
        out = torch.nn.functional.grid_sample(self._src, grid, mode="bilinear", padding_mode="border",
                                              align_corners=True)
        out = out[0].permute(1, 2, 0).add_(0.5).clamp_(0, 255).to(torch.uint8)
        return out.cpu().numpy()

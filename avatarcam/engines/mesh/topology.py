"""MediaPipe Face Mesh layout facts the mesh engine relies on: feature index lists and the triangle mesh.

Indices refer to MediaPipe's 478-point refined layout (468 mesh points + 2 x 5 iris points).
"Right" / "left" are the subject's sides (the subject's right eye is on the image's left in an
unmirrored camera image).
"""
from __future__ import annotations

import collections
import functools

import numpy as np

N_LANDMARKS = 478
N_MESH = 468
IRIS_RIGHT = 468  # iris centres (refined layout only)
IRIS_LEFT = 473

# The face outline, in order around the face (starting at the forehead top, going to the image's left).
FACE_OVAL = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
             377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)

# Eye contours from the outer to the inner corner, upper lid and lower lid (corners shared).
EYE_RIGHT_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
EYE_RIGHT_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
EYE_LEFT_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
EYE_LEFT_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)

# Inner lip contour from the right mouth corner (image left) to the left one, upper and lower.
LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LIP_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
MOUTH_CORNERS = (61, 291)

# Points that move with the skull, not with expressions: forehead, nose bridge and tip, eye
# corners and cheekbones. Brows, lids, lips and jaw are left out, and so is the face outline:
# outline points are silhouette points that slide over the face when the head turns.
RIGID = (151, 9, 8, 108, 337, 69, 299, 168, 6, 197, 195, 5, 4, 1, 45, 275, 33, 133, 362, 263,
         116, 345, 123, 352, 50, 280, 117, 346, 118, 347, 143, 372)
# Front of the chin (not on the outline): how the jaw moves.
CHIN = (175, 199, 200)


def _pairs(upper: tuple[int, ...], lower: tuple[int, ...]) -> np.ndarray:
    """(k x 2) upper/lower point pairs facing each other, corners left out."""
    return np.array(list(zip(upper[1:-1], lower[1:-1])), dtype=np.int64)


EYE_RIGHT_PAIRS = _pairs(EYE_RIGHT_UPPER, EYE_RIGHT_LOWER)
EYE_LEFT_PAIRS = _pairs(EYE_LEFT_UPPER, EYE_LEFT_LOWER)
LIP_PAIRS = _pairs(LIP_INNER_UPPER, LIP_INNER_LOWER)
# The inner-lip outline as one closed polygon (upper left-to-right, then lower back).
MOUTH_POLYGON = np.array(LIP_INNER_UPPER + LIP_INNER_LOWER[-2:0:-1], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def face_edges() -> tuple[tuple[int, int], ...]:
    """MediaPipe's canonical face mesh edges (its FACEMESH_TESSELATION), sorted."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    return tuple(sorted((min(a, b), max(a, b)) for a, b in FACEMESH_TESSELATION))


@functools.lru_cache(maxsize=1)
def face_triangles() -> np.ndarray:
    """The canonical mesh's triangles (``F x 3`` int64, F = 852), eyes and mouth left open.

    MediaPipe publishes the mesh as edges; its faces are the 3-cycles of that graph except the
    two cycles that are not faces (each of their edges is already shared by two real faces, which
    a manifold mesh allows at most).
    """
    adjacency = collections.defaultdict(set)
    for a, b in face_edges():
        adjacency[a].add(b)
        adjacency[b].add(a)
    cycles = sorted({tuple(sorted((a, b, c))) for a, b in face_edges() for c in adjacency[a] & adjacency[b]})
    uses = collections.Counter()
    for a, b, c in cycles:
        uses.update(((a, b), (a, c), (b, c)))
    faces = [t for t in cycles if not all(uses[e] > 2 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
    return np.array(faces, dtype=np.int64)


@functools.lru_cache(maxsize=32)
def graph_distance(sources: tuple[int, ...], limit: int = 8) -> np.ndarray:
    """Edge hops on the face mesh from any of ``sources`` to every mesh point (``N_LANDMARKS``,
    int; ``limit + 1`` beyond ``limit`` hops and for iris points)."""
    adjacency = collections.defaultdict(list)
    for a, b in face_edges():
        adjacency[a].append(b)
        adjacency[b].append(a)
    dist = np.full(N_LANDMARKS, limit + 1, dtype=np.int64)
    frontier = list(sources)
    dist[frontier] = 0
    for hop in range(1, limit + 1):
        nxt = []
        for i in frontier:
            for j in adjacency[i]:
                if dist[j] > hop:
                    dist[j] = hop
                    nxt.append(j)
        frontier = nxt
    dist.setflags(write=False)  # cached: shared by every caller
    return dist


@functools.lru_cache(maxsize=1)
def detail_groups() -> tuple[np.ndarray, ...]:
    """Landmark groups whose region the warp renders at its finest grid: each eye with its lids
    (a closing lid needs a sharp fold) and the lips (a sharp inner edge)."""
    return (
        np.flatnonzero(graph_distance(EYE_RIGHT_UPPER + EYE_RIGHT_LOWER, limit=2) <= 2),
        np.flatnonzero(graph_distance(EYE_LEFT_UPPER + EYE_LEFT_LOWER, limit=2) <= 2),
        np.flatnonzero(graph_distance(LIP_INNER_UPPER + LIP_INNER_LOWER, limit=3) <= 3),
    )


def strip(upper: tuple[int, ...], lower: tuple[int, ...]) -> np.ndarray:
    """Triangles closing the hole between two contours that share their end points."""
    tris = []
    for k in range(len(upper) - 1):
        u0, u1, l0, l1 = upper[k], upper[k + 1], lower[k], lower[k + 1]
        if u0 != l0:
            tris.append((u0, u1, l0))
        if u1 != l1:
            tris.append((u1, l1, l0))
    return np.array(tris, dtype=np.int64)


def fan(centre: int, upper: tuple[int, ...], lower: tuple[int, ...]) -> np.ndarray:
    """Triangles from ``centre`` to every edge of the closed contour upper + reversed lower."""
    loop = list(upper) + list(lower[-2:0:-1])
    return np.array([(centre, loop[k], loop[(k + 1) % len(loop)]) for k in range(len(loop))], dtype=np.int64)

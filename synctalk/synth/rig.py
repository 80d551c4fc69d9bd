"""The animated head: a triangulated control mesh over the cropped photo, deformed by
speech and blinks, turned in 3-D, projected, and drawn as per-triangle affine warps
painted far-to-near over a static background plate.

Units: image pixels of the (square) output frame. The camera is a pinhole with focal
``f`` px and principal point at the image centre; a source pixel ``(u, v)`` with relative
depth ``z`` (px, MediaPipe's) lifts to the 3-D point
``((u − c)·Z/f, (v − c)·Z/f, Z)`` with ``Z = f + z``, so the photo is the identity pose
seen from distance ``f``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from synctalk.synth.face import FACE_OVAL, SourceFace

# MediaPipe face-mesh landmark groups.
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78]
MOUTH_INNER_LOOP = LIPS_UPPER_INNER + LIPS_LOWER_INNER[1:-1]
LIPS_LOWER = [146, 91, 181, 84, 17, 314, 405, 321, 375, 95, 88, 178, 87, 14, 317, 402, 318,
              324, 77, 90, 180, 85, 16, 315, 404, 320, 307, 96, 89, 179, 86, 15, 316, 403, 319,
              325]
LIPS_UPPER = [185, 40, 39, 37, 0, 267, 269, 270, 409, 191, 80, 81, 82, 13, 312, 311, 310, 415,
              184, 74, 73, 72, 11, 302, 303, 304, 408, 183, 42, 41, 38, 12, 268, 271, 272, 407]
MOUTH_CORNERS = (61, 291)
# Eyelids: (upper lid, lower lid) index lists, paired left-to-right.
EYES = [
    ([246, 161, 160, 159, 158, 157, 173], [7, 163, 144, 145, 153, 154, 155]),
    ([398, 384, 385, 386, 387, 388, 466], [382, 381, 380, 374, 373, 390, 249]),
]
IRISES = [list(range(468, 473)), list(range(473, 478))]
KEY_LANDMARKS = {
    "forehead": 10, "nose_tip": 1, "chin": 152, "lip_upper_inner": 13, "lip_lower_inner": 14,
    "mouth_left": 61, "mouth_right": 291, "eye_left_outer": 33, "eye_left_inner": 133,
    "eye_right_inner": 362, "eye_right_outer": 263, "iris_left": 468, "iris_right": 473,
}


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    u = np.clip((x - a) / (b - a), 0.0, 1.0)
    return u * u * (3 - 2 * u)


@dataclass
class FrameState:
    """Everything that varies per frame. Angles in degrees; ``shift`` as fractions of the
    image side (x, y) and of the camera distance (z)."""

    opening: float
    width: float
    blink: float
    rotation: np.ndarray  # [3, 3]
    shift: np.ndarray     # [3]


#: Head ring of the rig: least scale of the face oval (x, y) about its centre, the margin
#: beyond where the person matte ends (fraction of that distance), and the largest scale
#: (the static outer ring is at 2.3×).
RING_MIN_SCALE = (1.35, 1.30)
RING_MATTE_MARGIN = 0.06
RING_MAX_SCALE = 2.05


def head_ring(oval: np.ndarray, centre: np.ndarray, face_h: float, matte: np.ndarray,
              size: int) -> np.ndarray:
    """Points ``[K, 2]`` (px) of the rig's head ring, one per face-oval point ``oval [K, 2]``.

    Each point lies on the ray from ``centre`` through its oval point: at least
    :data:`RING_MIN_SCALE` times the oval's distance (raised by 0.12 face heights above the
    centre, for hair), and — above the jaw, where the person matte ``[H, W]`` is the head
    rather than the shoulders — just beyond where the matte ends along that ray, so hair
    and hats lie inside the ring. Never beyond :data:`RING_MAX_SCALE` times the oval's
    distance, and kept one pixel inside the frame.
    """
    ring = centre + (oval - centre) * np.array(RING_MIN_SCALE)
    ring[:, 1] -= 0.12 * face_h * (oval[:, 1] < centre[1])  # hair/hat above
    steps = np.linspace(1.0, RING_MAX_SCALE, 64)
    h, w = matte.shape
    for k, p in enumerate(oval):
        if p[1] > centre[1] + 0.25 * face_h:      # jaw and below: the matte runs into the body
            continue
        pts = centre + (p - centre) * steps[:, None]
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
        xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        person = inside & (matte[yi, xi] > 0.5)
        if not person.any():
            continue
        reach = steps[np.flatnonzero(person)[-1]] * (1.0 + RING_MATTE_MARGIN)
        scale = min(RING_MAX_SCALE, reach)
        cand = centre + (p - centre) * scale
        if np.linalg.norm(cand - centre) > np.linalg.norm(ring[k] - centre):
            ring[k] = cand
    return np.clip(ring, 1.0, size - 2.0)


class HeadRig:
    """Control mesh and renderer for one cropped source face.

    Args:
        face: the cropped photo and its landmarks (pixels of the output frame).
        matte: ``[H, W]`` person matte in [0, 1].
        background: ``[H, W, 3]`` uint8 plate the person is composited over.
        focal: camera focal length in pixels.
    """

    #: Largest inner-lip gap (fraction of face height) at ``opening = 1``.
    MAX_GAP = 0.16

    def __init__(self, face: SourceFace, matte: np.ndarray, background: np.ndarray,
                 focal: float) -> None:
        self.size = face.rgb.shape[0]
        self.focal = float(focal)
        self.c = self.size / 2.0
        self.src_rgb = face.rgb.astype(np.float32)
        self.src_matte = matte.astype(np.float32)
        self.background = background.astype(np.float32)
        lm = face.landmarks.astype(np.float64)
        oval = lm[FACE_OVAL]
        self.face_w = float(np.ptp(oval[:, 0]))
        self.face_h = float(np.ptp(oval[:, 1]))
        centre = oval[:, :2].mean(0)

        # Control points: landmarks and a head ring move rigidly with the head; a neck band
        # follows part-way; an outer ring and the frame border stay put. The ring encloses
        # the person's whole head (hair, hat, ears) where the matte says it reaches further,
        # so the head moves as one rigid body and only background lies between the ring and
        # the outer ring (which would otherwise stretch like a rubber sheet).
        ring = head_ring(oval[:, :2], centre, self.face_h, matte, self.size)
        ring_z = np.full(len(ring), oval[:, 2].max() + 0.35 * self.face_w)
        chin_y = oval[:, 1].max()
        neck = np.stack([centre[0] + np.linspace(-0.35, 0.35, 5) * self.face_w,
                         np.full(5, chin_y + 0.30 * self.face_h)], 1)
        outer = centre + (oval[:, :2] - centre) * 2.3
        outer = outer[(outer > 2).all(1) & (outer < self.size - 2).all(1)]
        e = np.linspace(0, self.size, 9)
        border = np.unique(np.concatenate([
            np.stack([e, np.zeros_like(e)], 1), np.stack([e, np.full_like(e, self.size)], 1),
            np.stack([np.zeros_like(e), e], 1), np.stack([np.full_like(e, self.size), e], 1)]), axis=0)
        n_lm = len(lm)
        pts2 = np.concatenate([lm[:, :2], ring, neck, outer, border])
        z = np.concatenate([lm[:, 2], ring_z, np.full(len(neck), ring_z[0]),
                            np.full(len(outer) + len(border), ring_z[0])])
        # Rigid-motion weight: 1 moves with the head, 0 static.
        self.rigid_w = np.concatenate([np.ones(n_lm + len(ring)), np.full(len(neck), 0.35),
                                       np.zeros(len(outer) + len(border))])
        self.src2 = pts2  # [P, 2] source pixel positions
        self.n_lm = n_lm
        self.ring_index = np.arange(n_lm, n_lm + len(ring))  # rows of the head ring
        depth = self.focal + z
        self.P0 = np.stack([(pts2[:, 0] - self.c) * depth / self.focal,
                            (pts2[:, 1] - self.c) * depth / self.focal, depth], 1)
        # Head pivot: behind the face, slightly below its centre.
        self.pivot = np.array([(centre[0] - self.c) * (self.focal + lm[1, 2]) / self.focal,
                               (centre[1] + 0.15 * self.face_h - self.c) * (self.focal + lm[1, 2]) / self.focal,
                               self.focal + lm[1, 2] + 0.7 * self.face_w])
        self._prepare_expression(lm)
        # Triangulate a template with the mouth part-open so the lips are distinct points.
        template = self.deformed_points(opening=0.5, width=1.0, blink=0.0)
        self.tris = Delaunay(self._project(template)[:, :2]).simplices.astype(np.int32)

    # ------------------------------------------------------------------ expression
    def _prepare_expression(self, lm: np.ndarray) -> None:
        """Per-landmark weights of the jaw drop, the lip-width scaling and the eyelid pull."""
        mouth_y = 0.5 * (lm[13, 1] + lm[14, 1])
        mouth_x = 0.5 * (lm[61, 0] + lm[291, 0])
        self.mouth_x = mouth_x
        hw = 0.5 * self.face_w
        y, x = lm[:, 1], lm[:, 0]
        below = _smoothstep(mouth_y - 0.02 * self.face_h, mouth_y + 0.06 * self.face_h, y)
        sideways = 1.0 - 0.6 * _smoothstep(0.3 * hw, 1.0 * hw, np.abs(x - mouth_x))
        jaw = below * sideways
        jaw[LIPS_LOWER] = 1.0
        jaw[list(MOUTH_CORNERS)] = 0.5
        upper = np.zeros(len(lm))
        upper[LIPS_UPPER] = 1.0
        jaw_w = np.zeros(len(self.src2))
        jaw_w[: len(lm)] = jaw
        up_w = np.zeros(len(self.src2))
        up_w[: len(lm)] = upper
        self.jaw_w, self.up_w = jaw_w, up_w
        # Lip width: lips scale fully about the mouth centre, the cheeks around them less.
        d = np.hypot(lm[:, 0] - mouth_x, (lm[:, 1] - mouth_y) * 1.5)
        wid = np.exp(-0.5 * (d / (0.22 * self.face_w)) ** 2)
        wid[LIPS_UPPER + LIPS_LOWER + list(MOUTH_CORNERS)] = 1.0
        self.width_w = np.zeros(len(self.src2))
        self.width_w[: len(lm)] = wid
        # Eyelids: each upper-lid point (and the iris) is pulled towards the lower lid.
        self.lid_pull = []  # (indices, target y per index, strength)
        for (up, low), iris in zip(EYES, IRISES):
            low_x, low_y = lm[low, 0], lm[low, 1]
            order = np.argsort(low_x)
            idx = np.array(up + iris)
            ty = np.interp(lm[idx, 0], low_x[order], low_y[order])
            strength = np.array([0.97] * len(up) + [0.85] * len(iris))
            self.lid_pull.append((idx, ty, strength))

    def deformed_points(self, opening: float, width: float, blink: float) -> np.ndarray:
        """Control points ``[P, 3]`` (head frame, pixel units) with the expression applied."""
        p = self.P0.copy()
        gap = self.MAX_GAP * self.face_h * opening
        # Jaw: lower lip and chin drop (and swing back a little); the upper lip lifts slightly.
        p[:, 1] += gap * (0.87 * self.jaw_w - 0.13 * self.up_w)
        p[:, 2] += 0.3 * gap * self.jaw_w
        # Lip width about the mouth centre (head-frame x ≈ pixel offset: the face is at depth ≈ f).
        mx = self.mouth_x - self.c
        p[:, 0] = mx + (p[:, 0] - mx) * (1.0 + (width - 1.0) * self.width_w)
        for idx, ty, strength in self.lid_pull:
            p[idx, 1] += blink * strength * (ty - self.src2[idx, 1]) * p[idx, 2] / self.focal
        return p

    # ------------------------------------------------------------------ geometry
    def posed_points(self, state: FrameState) -> np.ndarray:
        """Control points ``[P, 3]`` in the camera frame for one frame."""
        p = self.deformed_points(state.opening, state.width, state.blink)
        t = np.array([state.shift[0] * self.size, state.shift[1] * self.size,
                      state.shift[2] * self.focal])
        moved = (p - self.pivot) @ state.rotation.T + self.pivot + t
        w = self.rigid_w[:, None]
        return w * moved + (1 - w) * p

    def _project(self, p: np.ndarray) -> np.ndarray:
        """Pinhole projection ``[P, 3] → [P, 3]`` (u px, v px, depth)."""
        return np.stack([self.focal * p[:, 0] / p[:, 2] + self.c,
                         self.focal * p[:, 1] / p[:, 2] + self.c, p[:, 2]], 1)

    def landmarks_2d(self, state: FrameState) -> np.ndarray:
        """Projected face landmarks ``[478, 2]`` (pixels) for a frame."""
        return self._project(self.posed_points(state))[: self.n_lm, :2]

    def head_ring_2d(self, state: FrameState) -> np.ndarray:
        """Projected head-ring points ``[K, 2]`` (pixels) for a frame: rigid points around
        the whole head (beyond the hair or hat), the farthest from the face that move with it."""
        return self._project(self.posed_points(state)[self.ring_index])[:, :2]

    # ------------------------------------------------------------------ drawing
    def render(self, state: FrameState) -> tuple[np.ndarray, np.ndarray]:
        """Draw one frame.

        Returns:
            ``(rgb [H, W, 3] uint8, landmarks [478, 2] float64 pixels)``.
        """
        proj = self._project(self.posed_points(state))
        dst, src = proj[:, :2], self.src2
        # Per-triangle affine maps destination → source, solved in one batch.
        d = dst[self.tris]  # [T, 3, 2]
        s = src[self.tris]
        area = 0.5 * ((d[:, 1, 0] - d[:, 0, 0]) * (d[:, 2, 1] - d[:, 0, 1])
                      - (d[:, 2, 0] - d[:, 0, 0]) * (d[:, 1, 1] - d[:, 0, 1]))
        ok = np.abs(area) > 1e-3
        dh = np.concatenate([d, np.ones((len(d), 3, 1))], 2)  # [T, 3, 3]
        dh[~ok] = np.eye(3)
        maps = np.linalg.solve(dh, s)  # [T, 3, 2]: src = [x y 1] @ M
        # Paint triangle ids far-to-near so nearer surfaces win.
        ids = np.full((self.size, self.size), -1, np.int32)
        order = np.argsort(-proj[self.tris, 2].mean(1))
        fixed = np.round(d * 16).astype(np.int32)
        for t in order:
            if ok[t]:
                cv2.fillConvexPoly(ids, fixed[t], int(t), lineType=cv2.LINE_8, shift=4)
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32)
        m = maps[np.maximum(ids, 0)].astype(np.float32)  # [H, W, 3, 2]
        mx = xx * m[..., 0, 0] + yy * m[..., 1, 0] + m[..., 2, 0]
        my = xx * m[..., 0, 1] + yy * m[..., 1, 1] + m[..., 2, 1]
        hole = ids < 0
        mx[hole], my[hole] = xx[hole], yy[hole]
        rgb = cv2.remap(self.src_rgb, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.remap(self.src_matte, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out = alpha[..., None] * rgb + (1 - alpha[..., None]) * self.background
        out = self._paint_mouth(out, dst[: self.n_lm], state.opening)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), dst[: self.n_lm].copy()

    def _paint_mouth(self, img: np.ndarray, lm: np.ndarray, opening: float) -> np.ndarray:
        """Paint the mouth interior inside the inner-lip loop: dark cavity, upper teeth
        under the upper lip, lower teeth and tongue as the mouth opens wider."""
        loop = lm[MOUTH_INNER_LOOP]
        gap = float(np.linalg.norm(lm[13] - lm[14]))
        if gap < 0.5:
            return img
        x0, y0 = np.floor(loop.min(0)).astype(int) - 2
        x1, y1 = np.ceil(loop.max(0)).astype(int) + 3
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.size), min(y1, self.size)
        if x1 <= x0 or y1 <= y0:
            return img
        shape = (y1 - y0, x1 - x0)
        off = np.array([x0, y0])

        def poly_mask(pts: np.ndarray) -> np.ndarray:
            mask = np.zeros(shape, np.uint8)
            cv2.fillPoly(mask, [np.round((pts - off) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
            return mask.astype(np.float32) / 255.0

        mouth = poly_mask(loop)
        upper = lm[LIPS_UPPER_INNER]
        teeth_h = min(0.45 * gap, 0.05 * self.face_h)
        teeth_up = poly_mask(np.concatenate([upper, upper[::-1] + [0, teeth_h]]))
        lower = lm[LIPS_LOWER_INNER]
        low_h = max(0.0, 0.2 * gap - 0.01 * self.face_h)
        teeth_low = poly_mask(np.concatenate([lower, lower[::-1] - [0, low_h]])) if low_h > 0.3 else 0
        interior = np.empty(shape + (3,), np.float32)
        yy = (np.arange(shape[0])[:, None] + y0 - upper[:, 1].min()) / max(gap, 1.0)
        interior[:] = np.array([70.0, 22.0, 28.0]) * (1.0 - 0.5 * np.clip(yy, 0, 1))[..., None]
        if opening > 0.45:
            centre = 0.5 * (lm[14] + lm[13]) + [0, 0.3 * gap] - off
            axes = (max(1, int(0.3 * np.linalg.norm(lm[61] - lm[291]))), max(1, int(0.25 * gap)))
            tongue = np.zeros(shape, np.uint8)
            cv2.ellipse(tongue, tuple(int(v) for v in centre), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
            tg = tongue.astype(np.float32)[..., None] / 255.0 * min(1.0, (opening - 0.45) * 4)
            interior = interior * (1 - tg) + np.array([165.0, 70.0, 75.0]) * tg
        teeth = np.clip(teeth_up + teeth_low, 0, 1)[..., None]
        interior = interior * (1 - teeth) + np.array([222.0, 214.0, 198.0]) * teeth
        roi = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = roi * (1 - mouth[..., None]) + interior * mouth[..., None]
        return img

"""Head-Sync Stabilizer: per-frame head pose by bundle adjustment over rigid keypoints.

Pipeline (:func:`stabilize`, the ``stabilize`` prep step is :func:`run`):

1. **Template** (:func:`frontal_landmarks`, :func:`lift_template`): the median of the most
   frontal frames' MediaPipe landmarks (similarity-aligned), lifted to 3-D for a pinhole
   camera and scaled to millimetres.
2. **Focal length** (:func:`estimate_focal`): a 1-D search for the focal whose lifted
   template fits the rigid landmarks best by PnP.
3. **Raw poses** (:func:`initial_poses`): per-frame PnP of the rigid landmarks
   (:data:`RIGID_LANDMARKS`) against the template.
4. **Shot cuts** (:func:`shot_cuts`): edits where the face jumps between two frames.
5. **KLT tracks** (:func:`track_klt`): corners on rigid skin (forehead, nose bridge, upper
   cheeks) followed by pyramidal Lucas–Kanade optical flow against the frame each was seeded
   in, forward–backward checked, re-seeded periodically, of limited and staggered length,
   ended at shot cuts; their 3-D points start where their rays meet the template
   (:func:`init_track_points`).
6. **Bundle adjustment** (:func:`bundle_adjust`): per-frame SE(3) and shared 3-D points;
   robust reprojection error of the tracks and of the down-weighted rigid landmarks (their
   weight estimated per clip from the residuals of a first adjustment), a robust
   second-difference smoothness prior on the poses (not across shot cuts), a shape prior
   keeping points near their start and a gauge fixing the centroid and scale of the
   landmark points. Sparse Levenberg–Marquardt: the track points are eliminated (Schur
   complement) into a block-banded pose system bordered by the landmark points, factorised
   by LAPACK's banded Cholesky.

Conventions: a pose is the **head → camera** transform ``x_cam = R · X + t`` with ``R`` from
the rotation vector ``ω`` (OpenCV camera: x right, y down, z forward; intrinsics in pixels of
the crop). The world is the head frame: origin at the centroid of the rigid landmarks, axes
those of the subject's most frontal frame (x to image right, y down, z into the head), unit
millimetres with the scale set by a 63 mm distance between the iris centres. ``poses.npz``
(:func:`save_poses`) stores camera-to-world matrices ``c2w = [[Rᵀ, −Rᵀt], [0, 1]]``.

Metrics shared with tests, benchmarks and reports: :func:`relative_rotation_error_deg`,
:func:`rotation_jitter_deg`.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.linalg import cho_factor, cho_solve
from scipy.linalg.lapack import dpbtrf, dtbtrs
from scipy.spatial import Delaunay
from scipy.spatial.transform import Rotation, Slerp

from data_prep.subject import blas_threads, params_from_dict
from synctalk.errors import InputError
from synctalk.fsutil import atomic_path

log = logging.getLogger(__name__)

#: Assumed distance between the iris centres (landmarks 468 and 473); sets the world unit.
IPD_MM = 63.0
UNIT = "mm"
WORLD = ("head-centred: origin at the centroid of the rigid landmarks, axes of the most "
         "frontal frame (x image right, y down, z into the head), millimetres with a 63 mm "
         "distance between the iris centres (landmarks 468, 473)")
IRIS_CENTRES = (468, 473)

#: Rigid face-mesh landmarks: the landmarks MediaPipe moves with the head alone — mid
#: forehead, nose bridge, inner eye corners, upper cheeks. Lips, jaw, brows, eyelids, nose
#: wings and temples (which drift with mouth opening) are out, and so are landmarks of those
#: regions that measurably do not follow the head (:data:`NON_RIGID_LANDMARKS`).
RIGID_LANDMARKS = (
    151, 108, 337, 69, 299,                                    # mid forehead
    168, 6, 197, 195, 122, 351, 196, 419,                      # nose bridge
    133, 362,                                                  # inner eye corners
    117, 346, 118, 347, 119, 348, 120, 349, 121, 350,          # upper cheeks
)

#: Landmarks of rigid regions left out of :data:`RIGID_LANDMARKS`, with the reason. Measured
#: as each landmark's RMS residual against head poses set by the KLT tracks (landmark weight
#: 0.03), on the four shared real clips and three synthetic ones (rigid heads), and the share
#: of that residual that brow and eye blendshapes explain on the real clips (mirror pairs
#: pooled). Left out: a residual ≥ 1.25× the median landmark's on at least two clips
#: ("slides": 1.35–1.85× on every synthetic clip for the upper forehead and lateral cheeks,
#: 1.34 and 1.38× on two real clips for the nose tip), or a brow or eye share ≥ 1.75× the
#: median landmark's on at least two real clips (glabella: brows, 2.6–3.7× on three or four
#: clips; outer eye corners: eyes, 1.85× and 2.6×). The
#: sliding ones lie farthest in front of (nose tip) or behind (hairline, contour) the face's
#: middle, where MediaPipe's regressed depth follows a head rotation least rigidly; their
#: residual is not explained by the blendshapes.
NON_RIGID_LANDMARKS = {
    9: "glabella: moves with the brows", 8: "nose root: moves with the brows",
    10: "upper forehead at the hairline: slides", 109: "upper forehead: slides",
    338: "upper forehead: slides", 67: "upper forehead: slides", 297: "upper forehead: slides",
    33: "outer eye corner: moves with blinks", 263: "outer eye corner: moves with blinks",
    116: "lateral cheek at the face contour: slides",
    345: "lateral cheek at the face contour: slides",
    5: "nose tip: slides",
}

#: Landmark weight (relative to a KLT track, see :class:`StabilizeParams`) of the first
#: bundle adjustment when the weight is estimated, and the range the estimate is kept in.
LANDMARK_WEIGHT_START = 0.3
LANDMARK_WEIGHT_RANGE = (0.05, 1.0)
#: Levenberg–Marquardt iterations of that first adjustment (enough for the residual RMS).
LANDMARK_WEIGHT_FIRST_ITERATIONS = 5

#: Landmark sets whose convex hulls make the rigid-skin mask KLT corners are seeded in.
SKIN_REGIONS = (
    (103, 67, 109, 10, 338, 297, 332, 334, 296, 336, 9, 107, 66, 105),  # forehead
    (168, 193, 417, 122, 351, 196, 419, 3, 248, 195, 5),               # nose bridge
    (116, 117, 118, 119, 120, 121, 111, 228, 229, 230, 231, 232, 100, 47, 126),  # left cheek
    (345, 346, 347, 348, 349, 350, 340, 448, 449, 450, 451, 452, 329, 277, 355),  # right cheek
)


# ---------------------------------------------------------------------------- rotations
def _skew(v: np.ndarray) -> np.ndarray:
    """``[..., 3] → [..., 3, 3]`` cross-product matrices."""
    z = np.zeros_like(v[..., 0])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` from rotation vectors ``[..., 3]`` (radians)."""
    return Rotation.from_rotvec(np.asarray(w, np.float64).reshape(-1, 3)).as_matrix().reshape(
        np.shape(w)[:-1] + (3, 3))


def so3_log(r: np.ndarray) -> np.ndarray:
    """Rotation vectors ``[..., 3]`` (radians) of rotation matrices ``[..., 3, 3]``."""
    return Rotation.from_matrix(np.asarray(r, np.float64).reshape(-1, 3, 3)).as_rotvec().reshape(
        np.shape(r)[:-2] + (3,))


def so3_left_jacobian(w: np.ndarray) -> np.ndarray:
    """Left Jacobian ``[..., 3, 3]`` of SO(3) at rotation vectors ``w [..., 3]``:
    ``exp(w + δ) ≈ exp(J_l(w) δ) · exp(w)``."""
    th2 = np.sum(w * w, -1)[..., None, None]
    th = np.sqrt(th2)
    small = th2 < 1e-8
    safe = np.where(small, 1.0, th)
    b = np.where(small, 0.5 - th2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    c = np.where(small, 1.0 / 6.0 - th2 / 120.0, (safe - np.sin(safe)) / safe**3)
    k = _skew(w)
    return np.eye(3) + b * k + c * (k @ k)


def rotation_angle_deg(r: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of ``[..., 3, 3]`` matrices (accurate for small angles)."""
    s = 0.5 * np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                        r[..., 1, 0] - r[..., 0, 1]], -1)
    c = 0.5 * (np.trace(r, axis1=-2, axis2=-1) - 1.0)
    return np.degrees(np.arctan2(np.linalg.norm(s, axis=-1), c))


# ---------------------------------------------------------------------------- metrics
def relative_rotation_error_deg(r_true: np.ndarray, r_est: np.ndarray,
                                lags: Iterable[int] = range(5, 201)) -> float:
    """Median error of relative rotation angles over frame pairs.

    For every pair ``(i, j)`` with ``|i − j|`` in ``lags`` the error is
    ``|angle(R_i R_jᵀ) − angle(R̂_i R̂_jᵀ)|``; pairs avoid depending on one reference frame.
    The angle is unchanged by a constant change of head frame (``R → R·A``) and by inverting
    all rotations, so head→camera and camera→head rotations give the same value.

    Args:
        r_true: ``[N, 3, 3]`` reference rotations.
        r_est: ``[N, 3, 3]`` estimated rotations, same convention.
        lags: frame offsets to compare (offsets ≥ N are skipped).

    Returns:
        The median absolute difference, degrees.
    """
    r_true, r_est = np.asarray(r_true, np.float64), np.asarray(r_est, np.float64)
    n = len(r_true)
    errs = []
    for lag in lags:
        if lag <= 0 or lag >= n:
            continue
        a = rotation_angle_deg(r_true[lag:] @ np.swapaxes(r_true[:-lag], 1, 2))
        b = rotation_angle_deg(r_est[lag:] @ np.swapaxes(r_est[:-lag], 1, 2))
        errs.append(np.abs(a - b))
    if not errs:
        raise ValueError(f"no frame pairs: {n} frames is too few for the lags given")
    return float(np.median(np.concatenate(errs)))


def rotation_jitter_deg(r: np.ndarray) -> float:
    """Mean angle (degrees) of the second temporal difference of rotations ``[N, 3, 3]``:
    the angle of ``(R_{t+1} R_tᵀ)(R_t R_{t−1}ᵀ)ᵀ`` averaged over ``t``."""
    r = np.asarray(r, np.float64)
    d = r[1:] @ np.swapaxes(r[:-1], 1, 2)
    return float(rotation_angle_deg(d[1:] @ np.swapaxes(d[:-1], 1, 2)).mean())


def head_to_camera_rotations(c2w: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` head → camera rotations of camera-to-world (head) matrices ``[N, 4, 4]``."""
    return np.swapaxes(np.asarray(c2w)[:, :3, :3], 1, 2)


def mediapipe_rotations(matrices: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` head → camera rotations (OpenCV camera, head axes x right, y down, z back
    into the head) from MediaPipe facial transformation matrices ``[N, 4, 4]`` (OpenGL-style
    camera and canonical face)."""
    flip = np.diag([1.0, -1.0, -1.0])
    return flip @ np.asarray(matrices, np.float64)[:, :3, :3] @ flip


# ---------------------------------------------------------------------------- template
def _similarity_align(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: ``s, R, t`` minimising ``Σ |s·R·src_k + t − dst_k|²`` for ``[K, 3]`` sets."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / np.sum(a * a))
    return s, r, mu_d - s * r @ mu_s


def frontal_landmarks(landmarks: np.ndarray, valid: np.ndarray, matrices: np.ndarray | None = None,
                      *, frontal_fraction: float = 0.2, min_frames: int = 10,
                      rigid: Sequence[int] = RIGID_LANDMARKS) -> np.ndarray:
    """The subject's median frontal face, in the pixel coordinates of its most frontal frame.

    Frames are ranked by the angle of MediaPipe's head rotation (all valid frames when no
    matrices are given or all are NaN); the ``frontal_fraction`` most frontal (at least
    ``min_frames``) are similarity-aligned on the rigid landmarks to the most frontal one
    (generalised Procrustes, two rounds) and their median taken.

    Args:
        landmarks: ``[N, 478, 3]`` px (x, y; z width-scaled) of the crop.
        valid: ``[N]`` bool.
        matrices: optional ``[N, 4, 4]`` MediaPipe facial transformation matrices.
        frontal_fraction: share of valid frames used.
        min_frames: the least number of frames used (or all valid ones).
        rigid: landmark indices the alignment uses.

    Returns:
        ``[478, 3]`` px: x, y in the image, z relative depth (same unit, larger = farther).
    """
    rigid = np.asarray(rigid)
    ok = np.flatnonzero(valid & np.isfinite(landmarks).all((1, 2)))
    if len(ok) == 0:
        raise InputError("no valid face landmarks to build a head template from; "
                         "check that the track step found the face.")
    order = ok
    if matrices is not None:
        finite = ok[np.isfinite(matrices[ok]).all((1, 2))]
        if len(finite):
            order = finite[np.argsort(rotation_angle_deg(mediapipe_rotations(matrices[finite])))]
    n_use = min(len(order), max(min_frames, int(round(frontal_fraction * len(order)))))
    pts = landmarks[order[:n_use]].astype(np.float64)
    ref = pts[0]
    for _ in range(2):
        aligned = []
        for p in pts:
            s, r, t = _similarity_align(p[rigid], ref[rigid])
            aligned.append(s * p @ r.T + t)
        ref = np.median(np.stack(aligned), 0)
    return ref


def lift_template(face_px: np.ndarray, focal: float, center: Sequence[float],
                  rigid: Sequence[int] = RIGID_LANDMARKS) -> np.ndarray:
    """Lift a frontal face in pixels to a metric 3-D template for a pinhole of focal ``focal``.

    A landmark at ``(u, v)`` with relative depth ``z`` becomes
    ``((u − cx)·Z/f, (v − cy)·Z/f, Z)`` with ``Z = f + z``: the face's depth origin is put at
    the distance where one pixel of depth equals one pixel across, MediaPipe's own
    weak-perspective scaling. The result is scaled to a 63 mm distance between the iris
    centres and moved to the rigid landmarks' centroid.

    Args:
        face_px: ``[478, 3]`` from :func:`frontal_landmarks`.
        focal: px. center: principal point px.
        rigid: landmark indices whose centroid becomes the origin.

    Returns:
        ``[478, 3]`` mm, head frame (x right, y down, z into the head).
    """
    z = focal + face_px[:, 2]
    pts = np.stack([(face_px[:, 0] - center[0]) * z / focal,
                    (face_px[:, 1] - center[1]) * z / focal, z], 1)
    pts *= IPD_MM / np.linalg.norm(pts[IRIS_CENTRES[0]] - pts[IRIS_CENTRES[1]])
    return pts - pts[list(rigid)].mean(0)


# ---------------------------------------------------------------------------- camera
def intrinsics_matrix(focal: float, center: Sequence[float]) -> np.ndarray:
    """``[3, 3]`` pinhole intrinsics (px) with square pixels and no skew."""
    return np.array([[focal, 0.0, center[0]], [0.0, focal, center[1]], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, rotvec: np.ndarray, trans: np.ndarray, focal: float,
            center: Sequence[float]) -> np.ndarray:
    """Project head-frame points into frames.

    Args:
        points: ``[P, 3]`` mm, head frame.
        rotvec: ``[N, 3]`` head → camera rotation vectors (radians).
        trans: ``[N, 3]`` head → camera translations (mm).
        focal: px. center: principal point ``(cx, cy)`` px.

    Returns:
        ``[N, P, 2]`` pixel coordinates.
    """
    xc = np.einsum("nij,pj->npi", so3_exp(rotvec), points) + trans[:, None]
    return focal * xc[..., :2] / xc[..., 2:] + np.asarray(center)


def pose_to_c2w(rotvec: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[N, 4, 4]`` from head → camera rotation vectors and translations."""
    rt = np.swapaxes(so3_exp(rotvec), 1, 2)
    out = np.tile(np.eye(4), (len(rotvec), 1, 1))
    out[:, :3, :3] = rt
    out[:, :3, 3] = -np.einsum("nij,nj->ni", rt, trans)
    return out


def interpolate_poses(rotvec: np.ndarray, trans: np.ndarray, known: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Fill poses of frames where ``known`` is False: slerp / linear between the nearest known
    frames, held constant beyond the first and last. Shapes ``[N, 3]``, ``[N, 3]``, ``[N]``."""
    idx = np.flatnonzero(known)
    if len(idx) == len(known):
        return rotvec, trans
    t_all = np.arange(len(known))
    q = np.clip(t_all, idx[0], idx[-1])
    rot = (Slerp(idx, Rotation.from_rotvec(rotvec[idx]))(q).as_rotvec() if len(idx) > 1
           else np.repeat(rotvec[idx], len(known), 0))
    tr = np.stack([np.interp(t_all, idx, trans[idx, k]) for k in range(3)], 1)
    return rot, tr


def initial_poses(template: np.ndarray, image_points: np.ndarray, valid: np.ndarray,
                  focal: float, center: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP (SQPnP, then Levenberg–Marquardt refinement) of rigid template points.

    Args:
        template: ``[L, 3]`` mm, head frame.
        image_points: ``[N, L, 2]`` px.
        valid: ``[N]`` bool; other frames are interpolated.
        focal: px. center: principal point px.

    Returns:
        ``rotvec [N, 3]`` and ``trans [N, 3]`` (head → camera, mm).
    """
    import cv2

    k = intrinsics_matrix(focal, center)
    obj = np.ascontiguousarray(template, np.float64)
    rotvec = np.zeros((len(valid), 3))
    trans = np.zeros((len(valid), 3))
    for i in np.flatnonzero(valid):
        img = np.ascontiguousarray(image_points[i], np.float64)
        ok, rv, tv = cv2.solvePnP(obj, img, k, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            raise InputError(f"PnP failed on frame {i}; its landmarks look degenerate.")
        rv, tv = cv2.solvePnPRefineLM(obj, img, k, None, rv, tv)
        rotvec[i], trans[i] = rv.ravel(), tv.ravel()
    return interpolate_poses(rotvec, trans, valid)


# ---------------------------------------------------------------------------- bundle adjustment
@dataclass
class BAProblem:
    """Observations and priors of one bundle adjustment.

    Points ``0 .. n_landmarks − 1`` are face-mesh landmarks (seen in many frames, kept in the
    reduced system); the others are KLT track points (eliminated by the Schur complement),
    each seen in **consecutive** poses.

    Attributes:
        focal: px. center: ``[2]`` principal point px.
        n_poses: number of poses ``N``.
        obs_pose: ``[M]`` int pose index of each observation.
        obs_point: ``[M]`` int point index.
        obs_xy: ``[M, 2]`` observed pixel position.
        obs_weight: ``[M]`` weight of the observation's squared error (1 for a track point,
            less for a MediaPipe landmark): the robust loss sees the standardised squared
            error ``w·|e|²``, as if the observation's noise were ``1/√w`` times a track's.
        n_landmarks: ``L``.
        points_prior: ``[Q, 3]`` mm, the shape prior's target (and the start) of each point.
        smooth_centres: ``[S]`` pose indices ``i`` whose ``i − 1, i, i + 1`` are consecutive
            frames (the second-difference prior applies there).
    """

    focal: float
    center: np.ndarray
    n_poses: int
    obs_pose: np.ndarray
    obs_point: np.ndarray
    obs_xy: np.ndarray
    obs_weight: np.ndarray
    n_landmarks: int
    points_prior: np.ndarray
    smooth_centres: np.ndarray


@dataclass
class BASettings:
    """Weights and solver settings of :func:`bundle_adjust`.

    Attributes:
        smooth_weight: weight of the second-difference pose prior. Its residuals are
            expressed in pixels: a rotation by the angle ``a`` counts as the displacement
            ``a · r`` of a point at the landmarks' RMS radius ``r`` seen at the head's median
            distance, a translation by ``d`` mm as ``d`` mm seen there.
        smooth_loss: ``"l2"``, ``"huber"`` or ``"cauchy"`` on each frame's second
            difference (the 6-vector's length in those pixels): a robust loss keeps the
            prior's full strength against small (noise) accelerations but lets real, abrupt
            head motion through instead of smearing it over neighbouring frames.
        smooth_loss_scale_px: where the robust smoothness loss departs from least squares.
        shape_weight: weight of ``|X − X₀|`` (mm seen at the head's distance, px) per point.
        loss: ``"huber"`` or ``"cauchy"`` on the reprojection error.
        loss_scale_px: where the robust loss departs from least squares, px.
        max_iterations: Levenberg–Marquardt iterations at most.
        tolerance: stop when an accepted step lowers the cost by less than this fraction.
    """

    smooth_weight: float = 4.0
    smooth_loss: str = "huber"
    smooth_loss_scale_px: float = 0.3
    shape_weight: float = 0.1
    loss: str = "huber"
    loss_scale_px: float = 0.3
    max_iterations: int = 50
    tolerance: float = 1e-4


@dataclass
class BAResult:
    """Solution of :func:`bundle_adjust`: ``rotvec [N, 3]``, ``trans [N, 3]`` (head → camera,
    mm), ``points [Q, 3]`` mm, Levenberg–Marquardt ``iterations``, ``cost_initial`` and
    ``cost_final`` (half the weighted robust sum of squares plus priors), ``seconds``."""

    rotvec: np.ndarray
    trans: np.ndarray
    points: np.ndarray
    iterations: int
    cost_initial: float
    cost_final: float
    seconds: float


def _robust(s: np.ndarray, loss: str, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust loss ``ρ(s)`` of squared errors ``s`` (px²) and its derivative ``ρ'(s)``."""
    d2 = delta * delta
    if loss == "huber":
        r = np.sqrt(s)
        big = r > delta
        return np.where(big, 2.0 * delta * r - d2, s), np.where(big, delta / np.maximum(r, 1e-12), 1.0)
    if loss == "cauchy":
        return d2 * np.log1p(s / d2), 1.0 / (1.0 + s / d2)
    raise InputError(f"unknown robust loss {loss!r}; use 'huber' or 'cauchy'.")


#: Observations per chunk when building the normal equations.
_CHUNK = 1 << 17


def _scatter(index: np.ndarray, n: int) -> sp.csr_matrix:
    """``[n, M]`` 0/1 matrix summing rows of an ``[M, ...]`` array into ``n`` groups."""
    return sp.csr_matrix((np.ones(len(index)), (index, np.arange(len(index)))), shape=(n, len(index)))


class _Solver:
    """Sparse Levenberg–Marquardt for :class:`BAProblem` (see :func:`bundle_adjust`)."""

    def __init__(self, prob: BAProblem, settings: BASettings, trans0: np.ndarray) -> None:
        self.p, self.s = prob, settings
        n, nl = prob.n_poses, prob.n_landmarks
        # Landmark observations first, then track observations sorted by (point, pose).
        is_lm = prob.obs_point < nl
        tr = np.flatnonzero(~is_lm)
        tr = tr[np.lexsort((prob.obs_pose[tr], prob.obs_point[tr]))]
        order = np.concatenate([np.flatnonzero(is_lm), tr])
        self.pose, self.point = prob.obs_pose[order], prob.obs_point[order]
        self.xy = prob.obs_xy[order].astype(np.float64)
        self.w = prob.obs_weight[order].astype(np.float64)
        self.m_lm = int(is_lm.sum())
        tp, tf = self.point[self.m_lm:], self.pose[self.m_lm:]
        same = tp[1:] == tp[:-1]
        if np.any(same & (tf[1:] != tf[:-1] + 1)):
            raise ValueError("each track point must be observed in consecutive poses")
        # Pairs of observations of one track ``d`` poses apart, for every offset ``d``.
        ends = np.flatnonzero(np.r_[~same, True])
        remaining = ends[np.cumsum(np.r_[0, ~same])] - np.arange(len(tp))  # later obs of the track
        longest = int(remaining.max()) + 1 if len(tp) else 0
        self.band = max(2, longest - 1)  # block bandwidth of the reduced pose system
        self.pairs = [np.flatnonzero(remaining >= d) for d in range(longest)]
        self.sum_pairs = [_scatter(tf[a], n) for a in self.pairs]
        self.sum_track_pose = _scatter(tf, n)
        self.sum_track_point = _scatter(tp - nl, len(prob.points_prior) - nl)
        # Observations are processed in chunks to bound the memory of the Jacobians.
        m = len(self.pose)
        self.chunks = [slice(a, min(a + _CHUNK, m)) for a in range(0, m, _CHUNK)]
        self.sum_pose = [_scatter(self.pose[c], n) for c in self.chunks]
        self.sum_point = [_scatter(self.point[c], len(prob.points_prior)) for c in self.chunks]
        # Scales turning priors into pixels at the head's distance.
        depth = float(np.median(trans0[:, 2]))
        self.px_per_mm = prob.focal / depth
        lm0 = prob.points_prior[:nl] if nl else prob.points_prior
        radius = float(np.sqrt(np.mean(np.sum((lm0 - lm0.mean(0)) ** 2, 1))))
        c_rot = np.sqrt(settings.smooth_weight) * self.px_per_mm * radius
        c_tr = np.sqrt(settings.smooth_weight) * self.px_per_mm
        self.c2 = np.array([c_rot] * 3 + [c_tr] * 3) ** 2
        c = prob.smooth_centres
        d2 = sp.csr_matrix((np.tile([1.0, -2.0, 1.0], len(c)),
                            (np.repeat(np.arange(len(c)), 3), (c[:, None] + [-1, 0, 1]).ravel())),
                           shape=(len(c), n))
        self.d2 = d2.tocsr()
        self.smooth_q = (d2.T @ d2).tocsr()  # D₂ᵀ Ω D₂, re-weighted at each linearisation
        self.c2_unit = self.c2 / settings.smooth_weight if settings.smooth_weight > 0 else None
        _robust(np.zeros(1), settings.loss, 1.0)  # unknown losses fail here, before any work
        if settings.smooth_loss != "l2":
            _robust(np.zeros(1), settings.smooth_loss, 1.0)
        self.shape_w = settings.shape_weight * self.px_per_mm ** 2
        # Gauge on the landmark points: centroid (3 rows) and scale (1 row), as stiff residuals.
        if nl:
            c0 = lm0.mean(0)
            g = np.zeros((4, nl, 3))
            g[:3] = np.eye(3)[:, None, :] / nl
            g[3] = (lm0 - c0) / (nl * radius)
            self.gauge = g.reshape(4, 3 * nl)
            self.gauge_w = 1e4 * n * self.px_per_mm ** 2
        self.delta = settings.loss_scale_px

    # ------------------------------------------------------------------ cost and derivatives
    def residuals(self, rot, rotvec, trans, points, chunk: slice, jac: bool = False):
        """Reprojection errors ``[m, 2]`` px of the observations in ``chunk`` and, with
        ``jac``, their Jacobians ``(J_pose [m, 2, 6], J_point [m, 2, 3])``; ``rot`` is
        ``so3_exp(rotvec)``."""
        pose = self.pose[chunk]
        r = rot[pose]
        rx = np.einsum("mij,mj->mi", r, points[self.point[chunk]])
        xc = rx + trans[pose]
        inv = 1.0 / xc[:, 2]
        f = self.p.focal
        err = f * xc[:, :2] * inv[:, None] + self.p.center - self.xy[chunk]
        if not jac:
            return err
        dp = np.zeros((len(xc), 2, 3))
        dp[:, 0, 0] = dp[:, 1, 1] = f * inv
        dp[:, :, 2] = -f * xc[:, :2] * (inv * inv)[:, None]
        j_rot = (dp @ -_skew(rx)) @ so3_left_jacobian(rotvec[pose])
        return err, np.concatenate([j_rot, dp], 2), dp @ r

    def cost(self, rotvec, trans, points) -> float:
        """Half the weighted robust reprojection cost plus the priors."""
        rot = so3_exp(rotvec)
        total = 0.0
        for c in self.chunks:
            err = self.residuals(rot, rotvec, trans, points, c)
            total += np.sum(self._rho(np.sum(err * err, 1), c)[0])
        x = np.concatenate([rotvec, trans], 1)
        total += self._smooth_cost(x)
        total += self.shape_w * np.sum((points - self.p.points_prior) ** 2)
        nl = self.p.n_landmarks
        if nl:
            g = self.gauge @ (points[:nl] - self.p.points_prior[:nl]).ravel()
            total += self.gauge_w * np.dot(g, g)
        return 0.5 * float(total)

    def normal_equations(self, rotvec, trans, points):
        """Gauss–Newton blocks at the current estimate (IRLS weights for the robust loss):
        pose blocks ``U [N,6,6]``, point blocks ``V [Q,3,3]``, per-observation pose–point
        blocks ``W [M,6,3]`` and gradients ``g_pose [N,6]``, ``g_point [Q,3]``."""
        n, q = self.p.n_poses, len(points)
        rot = so3_exp(rotvec)
        u, v = np.zeros((n, 36)), np.zeros((q, 9))
        gc, gp = np.zeros((n, 6)), np.zeros((q, 3))
        w = np.empty((len(self.pose), 6, 3))
        for c, sum_pose, sum_point in zip(self.chunks, self.sum_pose, self.sum_point):
            err, jc, jp = self.residuals(rot, rotvec, trans, points, c, jac=True)
            om = self._rho(np.sum(err * err, 1), c)[1][:, None, None]
            jcw, jpw = jc * om, jp * om
            u += sum_pose @ np.matmul(jcw.transpose(0, 2, 1), jc).reshape(-1, 36)
            v += sum_point @ np.matmul(jpw.transpose(0, 2, 1), jp).reshape(-1, 9)
            w[c] = np.matmul(jcw.transpose(0, 2, 1), jp)
            gc += sum_pose @ np.einsum("mki,mk->mi", jcw, err)
            gp += sum_point @ np.einsum("mki,mk->mi", jpw, err)
        u, v = u.reshape(n, 6, 6), v.reshape(q, 3, 3)
        x = np.concatenate([rotvec, trans], 1)
        self.smooth_q = self._smooth_matrix(x)
        gc += self.c2 * (self.smooth_q @ x)
        gp += self.shape_w * (points - self.p.points_prior)
        v += self.shape_w * np.eye(3)
        nl = self.p.n_landmarks
        if nl:
            g = self.gauge @ (points[:nl] - self.p.points_prior[:nl]).ravel()
            gp[:nl] += self.gauge_w * (self.gauge.T @ g).reshape(nl, 3)
        return u, v, w, gc, gp

    def _rho(self, s: np.ndarray, chunk: slice) -> tuple[np.ndarray, np.ndarray]:
        """Robust cost ``ρ(w·s)`` ``[m]`` of the squared errors ``s [m]`` (px²) of the
        observations in ``chunk`` with weights ``w``, and its derivative ``w·ρ'(w·s)`` with
        respect to ``s`` (the IRLS weights)."""
        w = self.w[chunk]
        rho, d = _robust(w * s, self.s.loss, self.delta)
        return rho, w * d

    def _robust_smoothing(self) -> bool:
        return self.s.smooth_loss != "l2" and self.c2_unit is not None

    def _accel_sq(self, x: np.ndarray) -> np.ndarray:
        """``[S]`` squared second differences of the poses ``x [N, 6]`` at the smoothing
        centres, in px² (see :class:`BASettings`, without the weight)."""
        r = self.d2 @ x
        return np.sum(self.c2_unit * r * r, 1)

    def _smooth_cost(self, x: np.ndarray) -> float:
        """The smoothness prior's cost (doubled) at the poses ``x [N, 6]``."""
        if not self._robust_smoothing():
            return float(np.sum(self.c2 * (x * (self.smooth_q @ x))))
        rho, _ = _robust(self._accel_sq(x), self.s.smooth_loss, self.s.smooth_loss_scale_px)
        return float(self.s.smooth_weight * np.sum(rho))

    def _smooth_matrix(self, x: np.ndarray) -> sp.csr_matrix:
        """``[N, N]`` ``D₂ᵀ Ω D₂``: ``Ω`` holds the IRLS weights of the robust smoothness
        loss at the poses ``x`` (the identity for the quadratic prior)."""
        if not self._robust_smoothing():
            return self.smooth_q
        _, w = _robust(self._accel_sq(x), self.s.smooth_loss, self.s.smooth_loss_scale_px)
        return (self.d2.T @ sp.diags(w) @ self.d2).tocsr()

    # ------------------------------------------------------------------ linear solve
    def solve(self, u, v, w, gc, gp, lam: float):
        """Damped Gauss–Newton step ``(δ_pose [N, 6], δ_point [Q, 3])``, or ``None`` when the
        damped system is not positive definite.

        Track points are eliminated: ``S = U − Σ_k W_k V_k⁻¹ W_kᵀ`` is block-banded because
        each track spans consecutive poses. ``S`` is factorised by banded Cholesky
        (``S = L Lᵀ``) and the landmark points, which couple all poses, are solved from the
        dense border ``C − (L⁻¹E)ᵀ(L⁻¹E)``."""
        n, nl, band = self.p.n_poses, self.p.n_landmarks, self.band
        # Pose blocks and the smoothness prior (offsets 0..2), in lower block-band storage.
        ub = np.zeros((n, band + 1, 6, 6))
        ub[:, 0] = u
        for d in range(3):
            diag = self.smooth_q.diagonal(-d)
            ub[: n - d, d] += diag[:, None, None] * np.diag(self.c2)
        ub[:, 0] = _damped(ub[:, 0], lam)
        v = _damped(v, lam)
        # Eliminate the track points.
        vinv_t = np.linalg.inv(v[nl:])
        m_lm = self.m_lm
        tp, tf = self.point[m_lm:] - nl, self.pose[m_lm:]
        wt = w[m_lm:]
        y = wt @ vinv_t[tp]
        for d, (a, scatter) in enumerate(zip(self.pairs, self.sum_pairs)):
            blocks = wt[a + d] @ y[a].transpose(0, 2, 1)
            ub[:, d] -= (scatter @ blocks.reshape(len(a), 36)).reshape(n, 6, 6)
        rhs_c = -(gc - self.sum_track_pose @ np.einsum("mij,mj->mi", y, gp[nl:][tp]))
        ab = _band_storage(ub)
        chol, info = dpbtrf(ab, lower=1, overwrite_ab=1)
        if info != 0:
            return None
        yc, _ = dtbtrs(chol, rhs_c.reshape(-1, 1), uplo="L")
        if nl:
            e = np.zeros((n, 6, nl, 3))
            e[self.pose[:m_lm], :, self.point[:m_lm], :] = w[:m_lm]
            e = e.reshape(6 * n, 3 * nl)
            z, _ = dtbtrs(chol, e, uplo="L")
            c = np.zeros((nl, 3, nl, 3))
            c[np.arange(nl), :, np.arange(nl), :] = v[:nl]
            c = c.reshape(3 * nl, 3 * nl) + self.gauge_w * (self.gauge.T @ self.gauge)
            c[np.diag_indices(3 * nl)] += lam * self.gauge_w * np.sum(self.gauge ** 2, 0)
            try:
                dl = cho_solve(cho_factor(c - z.T @ z), -gp[:nl].ravel() - z.T @ yc[:, 0])
            except np.linalg.LinAlgError:
                return None
            yc = yc - z @ dl[:, None]
        dc, _ = dtbtrs(chol, yc, uplo="L", trans="T")
        dc = dc.reshape(n, 6)
        rhs_t = gp[nl:] + self.sum_track_point @ np.einsum("mji,mj->mi", wt, dc[tf])
        dt = -np.einsum("tij,tj->ti", vinv_t, rhs_t)
        dp = np.concatenate([dl.reshape(nl, 3), dt]) if nl else dt
        return dc, dp

    def run(self, rotvec, trans, points) -> BAResult:
        """Levenberg–Marquardt iterations from the given start."""
        t0 = time.perf_counter()
        lam = 1e-3
        cost = cost0 = self.cost(rotvec, trans, points)
        it = 0
        for it in range(1, self.s.max_iterations + 1):
            blocks = self.normal_equations(rotvec, trans, points)
            accepted = False
            while not accepted and lam < 1e10:
                step = self.solve(*blocks, lam)
                if step is not None:
                    r_new, t_new = rotvec + step[0][:, :3], trans + step[0][:, 3:]
                    p_new = points + step[1]
                    new = self.cost(r_new, t_new, p_new)
                    accepted = new < cost
                if not accepted:
                    lam *= 4.0
            if not accepted:  # no damping lowers the cost: at a minimum
                break
            lam = max(lam / 3.0, 1e-9)
            done = cost - new < self.s.tolerance * cost
            rotvec, trans, points, cost = r_new, t_new, p_new, new
            if done:
                break
        return BAResult(rotvec, trans, points, it, cost0, cost, time.perf_counter() - t0)


def _damped(blocks: np.ndarray, lam: float) -> np.ndarray:
    """Marquardt damping of ``[..., k, k]`` diagonal blocks: ``diag *= 1 + lam``."""
    diag = np.einsum("...ii->...i", blocks)
    return blocks + lam * diag[..., None] * np.eye(blocks.shape[-1])


def _band_storage(ub: np.ndarray) -> np.ndarray:
    """LAPACK lower band storage ``[6(K+1), 6N]`` of a symmetric block-banded matrix given by
    its lower blocks ``ub [N, K+1, 6, 6]`` (``ub[i, d]`` is block row ``i + d``, column ``i``)."""
    n, k1 = ub.shape[:2]
    ab = np.zeros((6 * k1, 6 * n))
    for d in range(k1):
        for a in range(6):
            for b in range(6):
                r = 6 * d + a - b
                if r >= 0:
                    ab[r, b: 6 * (n - d): 6] = ub[: n - d, d, a, b]
    return ab


def bundle_adjust(problem: BAProblem, rotvec: np.ndarray, trans: np.ndarray,
                  settings: BASettings | None = None, points: np.ndarray | None = None) -> BAResult:
    """Refine poses and points by sparse Levenberg–Marquardt.

    Cost (halved): ``Σ_o ρ(w_o |π(R_i X_p + t_i) − x_o|²)`` over observations (the robust
    loss sees each error standardised by its weight), plus the (robust) smoothness prior on
    second differences of ``(ω_i, t_i)``, the shape prior
    ``|X_p − X₀_p|²`` and a stiff gauge fixing the landmark points' centroid and scale to
    those of the prior. Each iteration builds the normal equations with IRLS weights
    ``w_o ρ'`` (and those of the smoothness loss), eliminates the track points (3×3 blocks)
    into a block-banded pose system bordered by the landmark points, and solves it with a banded Cholesky factorisation and
    a dense Schur complement on the border. OpenBLAS runs on one thread meanwhile
    (:func:`data_prep.subject.blas_threads`): on 2 cores its threads made the solve about
    3× as costly in CPU time and slower.

    Args:
        problem: observations and priors; starting points are ``problem.points_prior``.
        rotvec: ``[N, 3]`` starting rotation vectors (head → camera, radians).
        trans: ``[N, 3]`` starting translations (mm).
        settings: weights and stopping rules.
        points: ``[Q, 3]`` starting points (default ``problem.points_prior``).

    Returns:
        The refined estimate and solver statistics.
    """
    settings = settings or BASettings()
    solver = _Solver(problem, settings, trans)
    start = problem.points_prior if points is None else points
    with blas_threads(1):  # many small BLAS/LAPACK calls: threads cost more than they give
        return solver.run(np.array(rotvec, np.float64), np.array(trans, np.float64),
                          np.array(start, np.float64))


@dataclass
class SyntheticBA:
    """A random bundle-adjustment problem with its ground truth (:func:`synthetic_problem`):
    ``problem``, true ``rotvec``/``trans [N, 3]`` and ``points [Q, 3]``, and the perturbed
    ``rotvec0``/``trans0`` to start from."""

    problem: BAProblem
    rotvec: np.ndarray
    trans: np.ndarray
    points: np.ndarray
    rotvec0: np.ndarray
    trans0: np.ndarray


def synthetic_problem(n_frames: int, n_landmarks: int = 37, tracks_per_frame: int = 60,
                      max_track_len: int = 30, *, noise_px: float = 0.3, landmark_weight: float = 0.09,
                      shape_noise_mm: float = 1.0, pose_noise_deg: float = 1.0, seed: int = 0,
                      focal: float = 1024.0, size: int = 512) -> SyntheticBA:
    """A face-sized random BA problem for tests and benchmarks (no images).

    Head motion is a sum of random sinusoids (yaw ±15°, pitch ±7°, roll ±4°, a few mm of
    translation at 660 mm); points lie on a face-like paraboloid 120 × 150 mm. Landmark
    points are seen in every frame; each track point in ``max_track_len / 2 ..
    max_track_len`` consecutive frames, ``tracks_per_frame`` at a time. Observations get
    Gaussian noise, the shape prior is the truth plus ``shape_noise_mm`` noise and the start
    poses are the truth plus ``pose_noise_deg`` (and proportional translation) noise.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / 25.0

    def wave(amp: float) -> np.ndarray:
        f, ph = rng.uniform(0.04, 0.35, 4), rng.uniform(0, 2 * np.pi, 4)
        return amp * np.sin(2 * np.pi * f[:, None] * t + ph[:, None]).mean(0)

    rotvec = np.radians(np.stack([wave(7.0), wave(30.0), wave(8.0)], 1))  # pitch, yaw, roll
    trans = np.stack([wave(20.0), wave(20.0), 660.0 + wave(40.0)], 1)

    def surface(k: int) -> np.ndarray:
        xy = rng.uniform(-1, 1, (k, 2)) * [60.0, 75.0]
        return np.column_stack([xy, 0.006 * (xy ** 2).sum(1) - 25.0])

    life = rng.integers(max(2, max_track_len // 2), max_track_len + 1, n_frames * tracks_per_frame)
    starts, ends, used, active = [], [], 0, np.zeros(0, int)
    for i in range(n_frames):
        active = active[active > i]
        k = tracks_per_frame - len(active)
        starts += [i] * k
        ends.append(np.minimum(i + life[used:used + k], n_frames))
        active = np.concatenate([active, ends[-1]])
        used += k
    starts, ends = np.array(starts, np.int64), np.concatenate(ends).astype(np.int64)
    n_tr = len(starts)
    points = np.concatenate([surface(n_landmarks), surface(n_tr)])
    lens = ends - starts
    tr_pose = np.repeat(starts, lens) + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    tr_point = n_landmarks + np.repeat(np.arange(n_tr), lens)
    obs_pose = np.concatenate([np.repeat(np.arange(n_frames), n_landmarks), tr_pose])
    obs_point = np.concatenate([np.tile(np.arange(n_landmarks), n_frames), tr_point])
    xc = np.einsum("mij,mj->mi", so3_exp(rotvec)[obs_pose], points[obs_point]) + trans[obs_pose]
    xy = focal * xc[:, :2] / xc[:, 2:] + size / 2.0 + rng.normal(0, noise_px, (len(xc), 2))
    weight = np.where(obs_point < n_landmarks, landmark_weight, 1.0)
    smooth = np.arange(1, n_frames - 1)
    problem = BAProblem(focal, np.full(2, size / 2.0), n_frames, obs_pose, obs_point, xy, weight,
                        n_landmarks, points + rng.normal(0, shape_noise_mm, points.shape), smooth)
    rotvec0 = rotvec + np.radians(rng.normal(0, pose_noise_deg, rotvec.shape))
    trans0 = trans + rng.normal(0, pose_noise_deg * 10.0, trans.shape)
    return SyntheticBA(problem, rotvec, trans, points, rotvec0, trans0)


# ---------------------------------------------------------------------------- shot cuts
def shot_cuts(landmarks: np.ndarray, valid: np.ndarray, min_jump: float | None = 0.15,
              min_ratio: float = 8.0, rigid: Sequence[int] = RIGID_LANDMARKS) -> np.ndarray:
    """Frames that start a new shot: edits (jump cuts, re-framing) where the face jumps
    between two frames, which no head motion explains.

    The jump into frame ``t`` is the displacement of the rigid landmarks' centroid in units
    of their RMS radius plus ``|log|`` of the radius ratio (a zoom), between two consecutive
    valid frames. A cut is a jump of at least ``min_jump`` that is ``min_ratio`` times the
    median jump of the three frames before and of the three after (and 0.01): head motion,
    however fast, builds up and ends over several frames, a cut is one isolated step. On
    the real test clips natural motion stays below ratio 7 while cuts exceed 15.

    Args:
        landmarks: ``[N, 478, ≥2]`` px.
        valid: ``[N]`` bool.
        min_jump: the smallest jump that can be a cut; None finds no cuts.
        min_ratio: how much larger than the surrounding motion it must be.
        rigid: the landmarks whose centroid and radius are followed.

    Returns:
        ``[N]`` bool, True at the first frame of each new shot.
    """
    n = len(landmarks)
    cuts = np.zeros(n, bool)
    if min_jump is None or n < 2:
        return cuts
    pts = np.asarray(landmarks, np.float64)[:, list(rigid), :2]
    centre = pts.mean(1)
    radius = np.maximum(np.sqrt(np.sum((pts - centre[:, None]) ** 2, -1).mean(1)), 1e-6)
    jump = np.full(n, np.nan)
    with np.errstate(invalid="ignore"):
        jump[1:] = (np.linalg.norm(centre[1:] - centre[:-1], axis=1) / radius[1:]
                    + np.abs(np.log(radius[1:] / radius[:-1])))
    ok = np.r_[False, valid[1:] & valid[:-1]] & np.isfinite(jump)
    jump[~ok] = np.nan
    for t in np.flatnonzero(ok & (np.nan_to_num(jump) >= min_jump)):
        around = [jump[max(1, t - 3):t], jump[t + 1:t + 4]]
        typical = max([0.01] + [float(np.nanmedian(a)) for a in around if np.isfinite(a).any()])
        cuts[t] = jump[t] >= min_ratio * typical
    return cuts


# ---------------------------------------------------------------------------- KLT tracks
def rigid_skin_mask(landmarks_2d: np.ndarray, size: tuple[int, int], erode_px: int = 0) -> np.ndarray:
    """``[H, W]`` uint8 mask (255 inside) of rigid skin: the convex hulls of
    :data:`SKIN_REGIONS` (forehead, nose bridge, upper cheeks) in one frame.

    Args:
        landmarks_2d: ``[478, ≥2]`` landmark pixels of the frame.
        size: ``(H, W)``.
        erode_px: shrink the regions by this many pixels.
    """
    import cv2

    mask = np.zeros(size, np.uint8)
    for region in SKIN_REGIONS:
        hull = cv2.convexHull(np.round(landmarks_2d[list(region), :2]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255)
    if erode_px > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1,) * 2))
    return mask


@dataclass
class KltSettings:
    """Settings of :func:`track_klt`. Lengths ending in ``_px`` are pixels of a 512-px crop and
    scale with the crop side.

    Attributes:
        max_points: corners tracked at once at most.
        min_distance_px: least distance between corners.
        quality: corner quality relative to the best corner in the mask (OpenCV's
            ``qualityLevel``).
        window_px: Lucas–Kanade window side.
        levels: pyramid levels above the base image.
        fb_max_px: largest forward–backward error of a kept point.
        reseed_every: look for new corners every this many frames.
        max_track_len: frames a track lasts at most (limits drift). Each track's limit is
            spread over ``[max_track_len / 2, max_track_len]`` so that tracks seeded together
            do not all end together (a set of tracks sharing one lifetime leaves the poses of
            that stretch free to turn together with their points).
        min_track_len: shorter tracks are dropped.
        erode_px: the seeding mask is the rigid-skin mask shrunk by this much.
    """

    max_points: int = 150
    min_distance_px: float = 8.0
    quality: float = 0.005
    window_px: float = 21.0
    levels: int = 3
    fb_max_px: float = 0.2
    reseed_every: int = 4
    max_track_len: int = 30
    min_track_len: int = 3
    erode_px: float = 4.0


#: Threads tracking the groups of points of different anchor frames at once.
KLT_WORKERS = max(1, min(2, os.cpu_count() or 1))


@dataclass
class KltTracks:
    """Keypoint tracks, packed and sorted by (track, frame); each track spans consecutive
    frames. ``frame [M]`` int32, ``track [M]`` int32 in ``0 .. n_tracks − 1``,
    ``xy [M, 2]`` float32 px."""

    frame: np.ndarray
    track: np.ndarray
    xy: np.ndarray
    n_tracks: int


def track_klt(frames: Iterable[np.ndarray], landmarks: np.ndarray, valid: np.ndarray,
              settings: KltSettings | None = None, progress: Callable[[int], None] | None = None,
              cuts: np.ndarray | None = None) -> KltTracks:
    """Track corners on rigid skin with pyramidal Lucas–Kanade optical flow.

    Every ``reseed_every`` frames new corners (Shi–Tomasi) are sought in the rigid-skin mask
    away from the tracked ones. Each point is followed by matching the patch around it **in
    the frame where it was seeded** (its anchor) to the current frame, starting from its
    previous position: unlike chaining frame-to-frame flow, the small per-frame errors do
    not accumulate into drift (on H.264 video they are correlated across points and would
    bias the poses). A point is kept when the flow converges both ways, the forward–backward
    error is below ``fb_max_px``, it stays in the frame's rigid-skin mask and its track is
    within its length limit. All tracks end at a frame without valid landmarks and before a
    shot cut (where new corners are sought at once).

    Args:
        frames: the clip's frames in order, ``[H, W]`` grey or ``[H, W, 3]`` RGB uint8.
        landmarks: ``[N, 478, ≥2]`` px.
        valid: ``[N]`` bool.
        settings: tracker settings.
        progress: called with 1 after each frame.
        cuts: ``[N]`` bool, first frames of new shots (:func:`shot_cuts`).

    Returns:
        The tracks, at least ``min_track_len`` frames long, renumbered from 0.
    """
    import cv2

    st = settings or KltSettings()
    out_frame, out_id, out_xy = [], [], []
    # Active tracks: current and anchor positions, id, anchor frame, age and length limit.
    pts, anchor_xy = np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    ids, seed, age, life = (np.zeros(0, np.int64) for _ in range(4))
    anchors: dict[int, np.ndarray] = {}  # grey image of each anchor frame in use
    next_id = 0
    pool = ThreadPoolExecutor(KLT_WORKERS, thread_name_prefix="klt") if KLT_WORKERS > 1 else None
    try:
        for i, img in enumerate(frames):
            if i >= len(valid):
                break
            gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            scale = gray.shape[1] / 512.0
            cut = cuts is not None and bool(cuts[i])
            if valid[i]:
                mask = rigid_skin_mask(landmarks[i], gray.shape)
            if valid[i] and not cut:
                pts, keep = _follow(anchors, seed, anchor_xy, pts, gray, st, scale, pool)
                keep &= age < life
                xi, yi = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
                inside = (xi >= 0) & (yi >= 0) & (xi < gray.shape[1]) & (yi < gray.shape[0])
                keep &= inside
                keep[inside] &= mask[yi[inside], xi[inside]] > 0
            else:
                keep = np.zeros(len(pts), bool)
            pts, anchor_xy, ids, seed, age, life = (v[keep] for v in
                                                    (pts, anchor_xy, ids, seed, age, life))
            age += 1
            anchors = {s: im for s, im in anchors.items() if np.any(seed == s)}
            if valid[i] and (cut or i % st.reseed_every == 0) and len(pts) < st.max_points:
                new = _new_corners(gray, mask, pts, st, scale)
                new_ids = np.arange(next_id, next_id + len(new))
                next_id += len(new)
                spread = (new_ids * 0.6180339887) % 1.0  # golden-ratio sequence: even spread
                pts, anchor_xy = np.concatenate([pts, new]), np.concatenate([anchor_xy, new])
                ids = np.concatenate([ids, new_ids])
                seed = np.concatenate([seed, np.full(len(new), i)])
                age = np.concatenate([age, np.ones(len(new), np.int64)])
                limit = np.round(st.max_track_len * (0.5 + 0.5 * spread)).astype(np.int64)
                life = np.concatenate([life, limit])
                anchors[i] = gray
            out_frame.append(np.full(len(pts), i, np.int32))
            out_id.append(ids)
            out_xy.append(pts.copy())
            if progress:
                progress(1)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    frame = np.concatenate(out_frame) if out_frame else np.zeros(0, np.int32)
    track = np.concatenate(out_id) if out_id else np.zeros(0, np.int64)
    xy = np.concatenate(out_xy) if out_xy else np.zeros((0, 2), np.float32)
    keep = np.bincount(track, minlength=next_id)[track] >= st.min_track_len
    frame, track, xy = frame[keep], track[keep], xy[keep]
    _, track = np.unique(track, return_inverse=True)
    order = np.lexsort((frame, track))
    return KltTracks(frame[order], track[order].astype(np.int32), xy[order].astype(np.float32),
                     int(track.max()) + 1 if len(track) else 0)


def _follow(anchors: dict[int, np.ndarray], seed: np.ndarray, anchor_xy: np.ndarray,
            pts: np.ndarray, gray: np.ndarray, st: KltSettings, scale: float,
            pool: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lucas–Kanade from each point's anchor frame to ``gray``, starting at its last
    position ``pts [K, 2]``, and back. Returns the new positions ``[K, 2]`` and whether each
    converged both ways within the forward–backward limit ``[K]``. With ``pool`` the
    anchor frames' groups of points are tracked on its threads (same results)."""
    import cv2

    win = int(max(7, round(st.window_px * scale))) | 1
    lk = dict(winSize=(win, win), maxLevel=st.levels, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 0.001))
    nxt, ok = pts.copy(), np.zeros(len(pts), bool)

    def group(s: int) -> None:  # the points seeded in frame s; groups write disjoint rows
        sel = np.flatnonzero(seed == s)
        a = anchor_xy[sel].reshape(-1, 1, 2)
        start = pts[sel].reshape(-1, 1, 2).copy()
        fwd, ok1, _ = cv2.calcOpticalFlowPyrLK(anchors[s], gray, a, start, **lk)
        back, ok2, _ = cv2.calcOpticalFlowPyrLK(gray, anchors[s], fwd, a.copy(), **lk)
        nxt[sel] = fwd.reshape(-1, 2)
        fb = np.linalg.norm(back.reshape(-1, 2) - anchor_xy[sel], axis=1)
        ok[sel] = (ok1.ravel() == 1) & (ok2.ravel() == 1) & (fb < st.fb_max_px * scale)

    groups = [int(s) for s in np.unique(seed)]
    if pool is None or len(groups) < 2:
        for s in groups:
            group(s)
    else:  # OpenCV releases the GIL: the groups' flows run in parallel
        for f in [pool.submit(group, s) for s in groups]:
            f.result()
    return nxt, ok


def _new_corners(gray: np.ndarray, mask: np.ndarray, pts: np.ndarray, st: KltSettings,
                 scale: float) -> np.ndarray:
    """Shi–Tomasi corners ``[K, 2]`` in the eroded ``mask``, away from the tracked ``pts``,
    up to ``max_points`` in all."""
    import cv2

    erode = int(round(st.erode_px * scale))
    min_dist = max(2.0, st.min_distance_px * scale)
    free = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1,) * 2)) \
        if erode > 0 else mask.copy()
    for x, y in pts:
        cv2.circle(free, (int(round(x)), int(round(y))), int(np.ceil(min_dist)), 0, -1)
    new = cv2.goodFeaturesToTrack(gray, st.max_points - len(pts), st.quality, min_dist, mask=free)
    return np.zeros((0, 2), np.float32) if new is None else new.reshape(-1, 2).astype(np.float32)


# ---------------------------------------------------------------------------- track points
def _template_triangles(template: np.ndarray) -> np.ndarray:
    """``[F, 3]`` triangles of the face mesh (Delaunay of the frontal template's x, y; the
    iris points are left out)."""
    return Delaunay(template[:468, :2]).simplices.astype(np.int64)


def init_track_points(tracks: KltTracks, template: np.ndarray, rotvec: np.ndarray,
                      trans: np.ndarray, focal: float, center: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Start each track's 3-D point where its first observation's ray meets the template.

    The template mesh is projected with the frame's pose and the point is placed by
    barycentric interpolation in the projected triangle that contains it (the nearest one
    where several overlap).

    Args:
        tracks: keypoint tracks.
        template: ``[478, 3]`` mm head-frame template.
        rotvec, trans: ``[N, 3]`` head → camera poses (radians, mm).
        focal, center: intrinsics px.

    Returns:
        ``points [n_tracks, 3]`` mm (NaN for a track that starts off the mesh) and
        ``ok [n_tracks]`` bool.
    """
    tris = _template_triangles(template)
    first = np.flatnonzero(np.r_[True, tracks.track[1:] != tracks.track[:-1]])
    points = np.full((tracks.n_tracks, 3), np.nan)
    t_first = tracks.track[first]
    f_first = tracks.frame[first]
    for i in np.unique(f_first):
        sel = f_first == i
        xc = template @ so3_exp(rotvec[i]).T + trans[i]
        uv = focal * xc[:, :2] / xc[:, 2:] + np.asarray(center)
        a, b, c = uv[tris[:, 0]], uv[tris[:, 1]], uv[tris[:, 2]]
        m = np.stack([b - a, c - a], 2)  # [F, 2, 2]
        det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
        good = np.abs(det) > 1e-9
        inv = np.linalg.inv(np.where(good[:, None, None], m, np.eye(2)))
        p = tracks.xy[first[sel]].astype(np.float64)
        lam = np.einsum("fij,kfj->kfi", inv, p[:, None, :] - a[None])  # [K, F, 2]
        bary = np.concatenate([1.0 - lam.sum(2, keepdims=True), lam], 2)
        inside = (bary >= -1e-6).all(2) & good[None]
        depth = np.einsum("kfj,fj->kf", bary, xc[tris, 2])
        depth = np.where(inside, depth, np.inf)
        best = np.argmin(depth, 1)
        hit = np.isfinite(depth[np.arange(len(p)), best])
        w = bary[np.arange(len(p)), best]
        pts3 = np.einsum("kj,kjd->kd", w, template[tris[best]])
        points[t_first[sel][hit]] = pts3[hit]
    return points, np.isfinite(points).all(1)


# ---------------------------------------------------------------------------- focal length
def estimate_focal(face_px: np.ndarray, image_points: np.ndarray, valid: np.ndarray,
                   center: Sequence[float], size: int, *, max_frames: int = 200,
                   candidates: Sequence[float] = tuple(np.geomspace(1.0, 8.0, 7)),
                   rigid: Sequence[int] = RIGID_LANDMARKS) -> tuple[float, dict[float, float]]:
    """Focal length minimising the PnP reprojection error of the rigid landmarks against
    the subject's template lifted for that focal (:func:`lift_template`).

    The lifted template's perspective (near features magnified by ``1 + z/f``) and the
    perspective of the PnP both depend on the focal; the RMS error over up to
    ``max_frames`` evenly spaced valid frames is compared across candidates (multiples of
    the image side) and its minimum refined by a parabola in log-focal.

    The candidates start at one image side (a 53° field of view): MediaPipe's landmarks are
    consistent with its own ~63° camera and pull the estimate towards it on real faces,
    the worst choice for the head pose, while over-estimating the focal costs little.

    Args:
        face_px: ``[478, 3]`` median frontal face from :func:`frontal_landmarks`.
        image_points: ``[N, L, 2]`` px of the ``rigid`` landmarks.
        valid: ``[N]`` bool.
        center: principal point px. size: image side px (the candidates' unit).
        max_frames: frames used.
        candidates: focal lengths tried, in image sides.
        rigid: the landmark indices of ``image_points``.

    Returns:
        ``(focal px, {candidate focal px: RMS px})``.
    """
    idx = np.flatnonzero(valid)
    idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, min(max_frames, len(idx)))).astype(int))]
    obs = image_points[idx].astype(np.float64)
    rms = {}
    for c in candidates:
        f = float(c * size)
        template = lift_template(face_px, f, center, rigid)[list(rigid)]
        rv, t = initial_poses(template, obs, np.ones(len(idx), bool), f, center)
        err = project(template, rv, t, f, center) - obs
        rms[f] = float(np.sqrt(np.mean(np.sum(err ** 2, -1))))
    fs, es = np.array(list(rms)), np.array(list(rms.values()))
    k = int(np.argmin(es))
    if 0 < k < len(fs) - 1:
        x, y = np.log(fs[k - 1: k + 2]), es[k - 1: k + 2]
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            return float(np.exp(np.clip(-b / (2 * a), x[0], x[2]))), rms
    return float(fs[k]), rms


# ---------------------------------------------------------------------------- pipeline
@dataclass
class StabilizeParams:
    """Parameters of the stabilizer (the ``stabilize`` step's ``params``). Lengths ending in
    ``_px`` are pixels of a 512-px crop and scale with the crop side.

    Attributes:
        landmark_weight: scale of a rigid landmark's reprojection residual relative to a KLT
            track point's (its squared error counts ``landmark_weight²``, before the robust
            loss): MediaPipe's landmarks are noisier than the tracks. ``None`` estimates it
            per clip by one step of variance-component estimation: a first bundle
            adjustment with :data:`LANDMARK_WEIGHT_START`, then the weight becomes the ratio
            of the tracks' residual RMS to the landmarks' (within
            :data:`LANDMARK_WEIGHT_RANGE`) and the adjustment continues from its solution.
            Sharp video with accurate tracks gives the landmarks little say (≈ 0.1 on a
            synthetic clip), blurred or low-bit-rate video more (≈ 0.5).
        smooth_weight: second-difference pose prior (see :class:`BASettings`).
        smooth_loss, smooth_loss_scale_px: its robust loss (see :class:`BASettings`).
        shape_weight: prior keeping 3-D points near the template (see :class:`BASettings`).
        loss: ``"huber"`` or ``"cauchy"``.
        loss_scale_px: where the robust loss departs from least squares.
        rigid_landmarks: the face-mesh landmarks treated as rigid (template alignment,
            focal search, PnP, shot cuts, BA, and the reported landmark RMS); default
            :data:`RIGID_LANDMARKS`.
        focal_px: the focal length in px of the crop; ``None`` estimates it.
        principal_point: ``(cx, cy)`` px of the crop; ``None``: :func:`stabilize` takes the
            crop centre, the step (:func:`run`) chooses by ``principal_point_from``.
        principal_point_from: where the step takes the principal point from when none is
            given: ``"source"``, the source camera's (the source frame's centre mapped into
            the crop, :func:`subject_principal_point`; the crop centre when unknown);
            ``"crop"``, the crop's centre — for a source that was itself cut out of a larger
            video (re-framed, zoomed), whose frame centre is not its camera's. The landmarks
            cannot tell the two apart: on synthetic clips with a known camera their PnP fit
            is best with a principal point about a tenth of the focal length above the true
            one.
        cut_min_jump, cut_min_ratio: shot-cut detection (:func:`shot_cuts`; a None jump
            finds none): KLT tracks end at a cut and the smoothness prior does not span it.
        max_iterations: Levenberg–Marquardt iterations at most.
        klt_*: :class:`KltSettings` fields.
    """

    landmark_weight: float | None = None
    rigid_landmarks: tuple[int, ...] = RIGID_LANDMARKS
    smooth_weight: float = BASettings.smooth_weight
    smooth_loss: str = BASettings.smooth_loss
    smooth_loss_scale_px: float = BASettings.smooth_loss_scale_px
    shape_weight: float = BASettings.shape_weight
    loss: str = BASettings.loss
    loss_scale_px: float = BASettings.loss_scale_px
    focal_px: float | None = None
    principal_point: tuple[float, float] | None = None
    principal_point_from: str = "source"
    cut_min_jump: float | None = 0.15
    cut_min_ratio: float = 8.0
    max_iterations: int = 30
    klt_max_points: int = KltSettings.max_points
    klt_min_distance_px: float = KltSettings.min_distance_px
    klt_quality: float = KltSettings.quality
    klt_window_px: float = KltSettings.window_px
    klt_levels: int = KltSettings.levels
    klt_fb_max_px: float = KltSettings.fb_max_px
    klt_reseed_every: int = KltSettings.reseed_every
    klt_max_track_len: int = KltSettings.max_track_len
    klt_min_track_len: int = KltSettings.min_track_len
    klt_erode_px: float = KltSettings.erode_px

    @classmethod
    def from_dict(cls, params: dict | None) -> "StabilizeParams":
        """Build from a ``params`` dict; unknown keys are an :class:`InputError`."""
        params = dict(params or {})
        if params.get("principal_point") is not None:
            params["principal_point"] = tuple(float(v) for v in params["principal_point"])
        if "rigid_landmarks" in params:
            rigid = tuple(int(v) for v in params["rigid_landmarks"])
            if len(rigid) < 6 or len(set(rigid)) != len(rigid) or not all(0 <= v < 468
                                                                          for v in rigid):
                raise InputError(f"stabilize: rigid_landmarks must be at least 6 distinct "
                                 f"face-mesh indices in 0..467, got "
                                 f"{list(params['rigid_landmarks'])}")
            params["rigid_landmarks"] = rigid
        if params.get("principal_point_from", "source") not in PRINCIPAL_POINT_CHOICES:
            raise InputError(f"stabilize: principal_point_from must be one of "
                             f"{', '.join(PRINCIPAL_POINT_CHOICES)}, "
                             f"got {params['principal_point_from']!r}")
        return params_from_dict(cls, params, "stabilize")

    def ba_settings(self, width: int) -> BASettings:
        """The bundle adjustment's settings for frames ``width`` px wide."""
        scale = width / 512.0
        return BASettings(smooth_weight=self.smooth_weight, smooth_loss=self.smooth_loss,
                          smooth_loss_scale_px=self.smooth_loss_scale_px * scale,
                          shape_weight=self.shape_weight, loss=self.loss,
                          loss_scale_px=self.loss_scale_px * scale,
                          max_iterations=self.max_iterations)

    def klt(self) -> KltSettings:
        """The KLT tracker's settings."""
        return KltSettings(**{f.name: getattr(self, "klt_" + f.name) for f in fields(KltSettings)})


#: Values of :attr:`StabilizeParams.principal_point_from`.
PRINCIPAL_POINT_CHOICES = ("source", "crop")


#: The ``stabilize`` step's default ``params`` (JSON-able; :meth:`StabilizeParams.from_dict`).
DEFAULT_PARAMS = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                  for f in fields(StabilizeParams)}


@dataclass
class Stabilized:
    """Result of :func:`stabilize`.

    Attributes:
        rotvec, trans: ``[N, 3]`` head → camera poses after BA (radians, mm). Frames without
            valid landmarks between valid ones are bridged by the smoothness prior; before
            the first and after the last valid frame the pose is held.
        rotvec_raw, trans_raw: ``[N, 3]`` the PnP poses BA started from.
        focal: px. center: ``[2]`` principal point px. size: ``(H, W)`` of the frames.
        template: ``[478, 3]`` mm head-frame template.
        rigid: the ``L`` rigid landmark indices used.
        landmark_points: ``[L, 3]`` mm BA points of the rigid landmarks.
        tracks: the KLT tracks used (renumbered: only those on the template).
        track_points: ``[T, 3]`` mm BA points of the tracks.
        residual_px: ``[N]`` per-frame RMS reprojection error of the rigid landmarks (NaN
            where not valid).
        info: numbers for the manifest and report.
    """

    rotvec: np.ndarray
    trans: np.ndarray
    rotvec_raw: np.ndarray
    trans_raw: np.ndarray
    focal: float
    center: np.ndarray
    size: tuple[int, int]
    template: np.ndarray
    rigid: tuple[int, ...]
    landmark_points: np.ndarray
    tracks: KltTracks
    track_points: np.ndarray
    residual_px: np.ndarray
    info: dict

    def c2w(self) -> np.ndarray:
        """``[N, 4, 4]`` camera-to-world (head) matrices after BA."""
        return pose_to_c2w(self.rotvec, self.trans)


def _rms(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(err ** 2, -1)))) if err.size else float("nan")


def _track_errors(tracks: KltTracks, points: np.ndarray, rotvec: np.ndarray, trans: np.ndarray,
                  focal: float, center: np.ndarray) -> np.ndarray:
    """``[M, 2]`` reprojection errors (px) of track observations."""
    rot = so3_exp(rotvec[tracks.frame])
    xc = np.einsum("mij,mj->mi", rot, points[tracks.track]) + trans[tracks.frame]
    return focal * xc[:, :2] / xc[:, 2:] + center - tracks.xy


def stabilize(frames: Iterable[np.ndarray], landmarks: np.ndarray, valid: np.ndarray,
              matrices: np.ndarray | None, size: tuple[int, int],
              params: StabilizeParams | None = None,
              progress: Callable[[int], None] | None = None) -> Stabilized:
    """Head pose per frame by bundle adjustment over rigid landmarks and KLT tracks.

    Args:
        frames: the clip's frames in order (grey or RGB uint8, ``[H, W(, 3)]``).
        landmarks: ``[N, 478, 3]`` px of the frames (z width-scaled).
        valid: ``[N]`` bool; other frames are not observed (no landmarks, no tracks, no
            residuals); their poses are bridged by the smoothness prior or held at the ends.
        matrices: optional ``[N, 4, 4]`` MediaPipe transformation matrices (frontal-frame
            selection only).
        size: ``(H, W)`` of the frames.
        params: settings.
        progress: called with 1 per tracked frame.

    Returns:
        Poses, intrinsics, BA points and tracks, residuals and a summary.
    """
    p = params or StabilizeParams()
    valid = np.asarray(valid, bool) & np.isfinite(landmarks).all((1, 2))
    if valid.sum() < 3:
        raise InputError(f"only {int(valid.sum())} frames have face landmarks; the stabilizer "
                         "needs at least 3 — check the track step's output.")
    center = np.array(p.principal_point if p.principal_point is not None
                      else (size[1] / 2.0, size[0] / 2.0), np.float64)
    rigid = list(p.rigid_landmarks)
    obs = landmarks[:, rigid, :2].astype(np.float64)
    clock = time.perf_counter()
    face_px = frontal_landmarks(landmarks, valid, matrices, rigid=rigid)
    focal_table: dict[float, float] = {}
    if p.focal_px is not None:
        focal = float(p.focal_px)
    else:
        focal, focal_table = estimate_focal(face_px, obs, valid, center, size[1], rigid=rigid)
    template = lift_template(face_px, focal, center, rigid)
    rv0, tr0 = initial_poses(template[rigid], obs, valid, focal, center)
    seconds_init = time.perf_counter() - clock

    cuts = shot_cuts(landmarks, valid, p.cut_min_jump, p.cut_min_ratio, rigid)
    clock = time.perf_counter()
    tracks = track_klt(frames, landmarks, valid, p.klt(), progress, cuts)
    seconds_klt = time.perf_counter() - clock
    pts3, on_mesh = init_track_points(tracks, template, rv0, tr0, focal, center)
    new_id = np.cumsum(on_mesh) - 1
    keep = on_mesh[tracks.track]
    tracks = KltTracks(tracks.frame[keep], new_id[tracks.track[keep]].astype(np.int32),
                       tracks.xy[keep], int(on_mesh.sum()))
    pts3 = pts3[on_mesh]

    # One BA over the frames from the first to the last valid one. Frames without valid
    # landmarks in between have no observations: the smoothness prior bridges them.
    span = np.arange(np.flatnonzero(valid)[0], np.flatnonzero(valid)[-1] + 1)
    settings = p.ba_settings(size[1])
    weight = LANDMARK_WEIGHT_START if p.landmark_weight is None else float(p.landmark_weight)
    problem = _stabilizer_problem(obs, valid, span, tracks, template[rigid], pts3, focal, center,
                                  weight, cuts)
    estimate = p.landmark_weight is None and tracks.n_tracks > 0
    first = settings if not estimate else replace(
        settings, max_iterations=min(settings.max_iterations, LANDMARK_WEIGHT_FIRST_ITERATIONS))
    res = bundle_adjust(problem, rv0[span], tr0[span], first)
    iterations, seconds_ba = res.iterations, res.seconds
    if estimate:
        # One step of variance-component estimation: weigh the landmarks by the ratio of the
        # tracks' residual RMS to theirs at the first solution, and solve again from there.
        rv1, tr1 = _full(res.rotvec, span, len(valid)), _full(res.trans, span, len(valid))
        rms_lm = _rms((project(res.points[:len(rigid)], rv1, tr1, focal, center) - obs)[valid])
        rms_tr = _rms(_track_errors(tracks, res.points[len(rigid):], rv1, tr1, focal, center))
        weight = float(np.clip(rms_tr / max(rms_lm, 1e-9), *LANDMARK_WEIGHT_RANGE))
        problem = _stabilizer_problem(obs, valid, span, tracks, template[rigid], pts3, focal,
                                      center, weight, cuts)
        res = bundle_adjust(problem, res.rotvec, res.trans, settings, points=res.points)
        iterations, seconds_ba = iterations + res.iterations, seconds_ba + res.seconds
    rotvec, trans = rv0.copy(), tr0.copy()
    rotvec[span], trans[span] = res.rotvec, res.trans
    known = np.zeros(len(valid), bool)
    known[span] = True
    rotvec, trans = interpolate_poses(rotvec, trans, known)
    lm_pts, tr_pts = res.points[: len(rigid)], res.points[len(rigid):]

    err_lm = project(lm_pts, rotvec, trans, focal, center) - obs
    err_lm0 = project(template[rigid], rv0, tr0, focal, center) - obs
    residual = np.sqrt(np.mean(np.sum(err_lm ** 2, -1), 1))
    residual[~valid] = np.nan
    lengths = np.bincount(tracks.track, minlength=tracks.n_tracks)
    info = {
        "n_frames": int(len(valid)), "n_valid": int(valid.sum()),
        "focal_px": round(focal, 2), "focal_estimated": p.focal_px is None,
        "focal_search_rms_px": {f"{k:.1f}": round(v, 4) for k, v in focal_table.items()},
        "principal_point": [round(float(c), 2) for c in center],
        "shot_cuts": [int(i) for i in np.flatnonzero(cuts)],
        "n_rigid_landmarks": len(rigid), "rigid_landmarks": [int(v) for v in rigid],
        "landmark_weight": round(weight, 4), "landmark_weight_estimated": bool(estimate),
        "n_tracks": int(tracks.n_tracks),
        "n_track_obs": int(len(tracks.frame)),
        "track_len_mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        "tracks_per_frame": round(len(tracks.frame) / int(valid.sum()), 1),
        "landmark_rms_px_before": round(_rms(err_lm0[valid]), 4),
        "landmark_rms_px": round(_rms(err_lm[valid]), 4),
        "track_rms_px_before": round(_rms(_track_errors(tracks, pts3, rv0, tr0, focal, center)), 4),
        "track_rms_px": round(_rms(_track_errors(tracks, tr_pts, rotvec, trans, focal, center)), 4),
        "rotation_jitter_deg_before": round(rotation_jitter_deg(so3_exp(rv0)), 4),
        "rotation_jitter_deg": round(rotation_jitter_deg(so3_exp(rotvec)), 4),
        "ba_iterations": iterations,
        "ba_cost_before": round(res.cost_initial, 3), "ba_cost": round(res.cost_final, 3),
        "seconds_init": round(seconds_init, 2), "seconds_klt": round(seconds_klt, 2),
        "seconds_ba": round(seconds_ba, 2),
    }
    return Stabilized(rotvec, trans, rv0, tr0, focal, center, tuple(size), template,
                      tuple(rigid), lm_pts, tracks, tr_pts, residual, info)


def _full(values: np.ndarray, span: np.ndarray, n: int) -> np.ndarray:
    """``[n, ...]`` array holding ``values [len(span), ...]`` at the frames ``span`` (zeros
    elsewhere)."""
    out = np.zeros((n,) + values.shape[1:], values.dtype)
    out[span] = values
    return out


def _stabilizer_problem(obs: np.ndarray, valid: np.ndarray, span: np.ndarray, tracks: KltTracks,
                        landmarks3: np.ndarray, tracks3: np.ndarray, focal: float,
                        center: np.ndarray, landmark_weight: float,
                        cuts: np.ndarray | None = None) -> BAProblem:
    """The BA of :func:`stabilize`: poses of the frames ``span``, rigid landmarks ``obs
    [N, L, 2]`` seen in the valid frames (weight ``landmark_weight²``: a landmark's error
    counts as ``landmark_weight`` times its size in a track's units), KLT tracks (weight 1);
    points start at ``landmarks3 [L, 3]`` and ``tracks3 [T, 3]``. The smoothness prior does
    not reach across the shot cuts ``cuts [N]`` (bool, first frame of a new shot)."""
    centres = np.arange(1, len(span) - 1)
    if cuts is not None and len(centres):
        c = np.asarray(cuts, bool)[span]
        centres = centres[~(c[centres] | c[centres + 1])]
    vidx = np.flatnonzero(valid)
    pose_of = np.full(len(valid), -1)
    pose_of[span] = np.arange(len(span))
    n_lm = len(landmarks3)
    return BAProblem(
        focal=focal, center=center, n_poses=len(span),
        obs_pose=np.concatenate([np.repeat(pose_of[vidx], n_lm), pose_of[tracks.frame]]),
        obs_point=np.concatenate([np.tile(np.arange(n_lm), len(vidx)), n_lm + tracks.track]),
        obs_xy=np.concatenate([obs[vidx].reshape(-1, 2), tracks.xy.astype(np.float64)]),
        obs_weight=np.concatenate([np.full(len(vidx) * n_lm, landmark_weight ** 2),
                                   np.ones(len(tracks.frame))]),
        n_landmarks=n_lm, points_prior=np.concatenate([landmarks3, tracks3.reshape(-1, 3)]),
        smooth_centres=centres)


def landmark_only_poses(landmarks: np.ndarray, valid: np.ndarray, result: Stabilized,
                        params: StabilizeParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The bundle adjustment of :func:`stabilize` without KLT tracks, for comparison.

    Same template, focal, start poses and priors; the rigid landmarks are the only
    observations (weight 1).

    Args:
        landmarks: ``[N, 478, 3]`` px. valid: ``[N]`` bool.
        result: a :func:`stabilize` result on the same frames.
        params: the settings it was run with.

    Returns:
        ``rotvec [N, 3]``, ``trans [N, 3]`` head → camera.
    """
    p = params or StabilizeParams()
    rigid = list(result.rigid)
    valid = np.asarray(valid, bool) & np.isfinite(landmarks).all((1, 2))
    span = np.arange(np.flatnonzero(valid)[0], np.flatnonzero(valid)[-1] + 1)
    no_tracks = KltTracks(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32), 0)
    prob = _stabilizer_problem(landmarks[:, rigid, :2].astype(np.float64), valid, span, no_tracks,
                               result.template[rigid], np.zeros((0, 3)), result.focal,
                               result.center, 1.0,
                               shot_cuts(landmarks, valid, p.cut_min_jump, p.cut_min_ratio, rigid))
    res = bundle_adjust(prob, result.rotvec_raw[span], result.trans_raw[span],
                        p.ba_settings(result.size[1]))
    rotvec, trans = result.rotvec_raw.copy(), result.trans_raw.copy()
    rotvec[span], trans[span] = res.rotvec, res.trans
    known = np.zeros(len(valid), bool)
    known[span] = True
    return interpolate_poses(rotvec, trans, known)


# ---------------------------------------------------------------------------- step
def save_poses(path, result: Stabilized) -> None:
    """Write ``poses.npz`` atomically.

    Entries: ``c2w [N,4,4]`` and ``c2w_raw [N,4,4]`` (PnP, before BA) camera-to-world,
    ``intrinsics [3,3]`` px, ``focal_px``, ``unit`` and ``world`` (strings), ``valid [N]``
    (frames solved; the others interpolated), ``residual_px [N]`` (per-frame RMS of the
    rigid landmarks, NaN where not valid), ``landmark_rms_px``, ``track_rms_px``,
    ``rigid_landmarks [L]`` indices with their BA points ``landmark_points_3d [L,3]``,
    ``template [478,3]`` (mm), and the BA tracks: ``track_points_2d [M,2]`` px,
    ``track_ids [M]``, ``track_frames [M]`` and ``points_3d [T,3]`` mm (row = track id).
    """
    valid = np.isfinite(result.residual_px)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                c2w=result.c2w(), c2w_raw=pose_to_c2w(result.rotvec_raw, result.trans_raw),
                intrinsics=intrinsics_matrix(result.focal, result.center),
                focal_px=np.float64(result.focal), unit=np.array(UNIT), world=np.array(WORLD),
                valid=valid, residual_px=result.residual_px.astype(np.float32),
                landmark_rms_px=np.float64(result.info["landmark_rms_px"]),
                track_rms_px=np.float64(result.info["track_rms_px"]),
                rigid_landmarks=np.array(result.rigid, np.int32),
                landmark_points_3d=result.landmark_points.astype(np.float32),
                template=result.template.astype(np.float32),
                track_points_2d=result.tracks.xy.astype(np.float32),
                track_ids=result.tracks.track.astype(np.int32),
                track_frames=result.tracks.frame.astype(np.int32),
                points_3d=result.track_points.astype(np.float32),
            )


def subject_principal_point(subject_dir, frame_size: tuple[int, int]) -> tuple[float, float] | None:
    """The principal point ``(cx, cy)`` px of a subject's frames: the source camera's
    (:func:`data_prep.ingest.crop_principal_point` of the ingest record in the manifest),
    or None when the manifest has no ingest record or its crop size differs from the
    frames' ``(H, W)`` = ``frame_size``."""
    from data_prep.ingest import crop_principal_point
    from data_prep.subject import Manifest

    manifest = Manifest.load(subject_dir)
    rec = manifest.step("ingest") if manifest else None
    if not rec or rec.get("status") != "done":
        return None
    info = rec.get("info", {})
    if tuple(frame_size) != (info.get("size"), info.get("size")):
        log.warning("stabilize: the frames are %s px but ingest recorded %s px crops; assuming "
                    "the principal point at the frame centre", frame_size, info.get("size"))
        return None
    return crop_principal_point(info)


def _read_frames(frames_dir: Path, n: int) -> Iterable[np.ndarray]:
    """Grey frames ``frames/%06d.jpg`` 0 .. n − 1."""
    import cv2

    from data_prep.subject import frame_name

    for i in range(n):
        path = frames_dir / frame_name(i, "jpg")
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise InputError(f"frame {path} is missing or unreadable; re-run the ingest step.")
        yield img


def run(subject_dir, params: dict | None = None) -> dict:
    """The ``stabilize`` step: ``track.npz`` + ``frames/`` → ``poses.npz``.

    Args:
        subject_dir: the subject directory.
        params: :class:`StabilizeParams` fields.

    The principal point is ``params["principal_point"]`` when given, else, by
    ``params["principal_point_from"]``, the source camera's (the source frame's centre mapped
    into the crop by the ingest step's crop box, :func:`subject_principal_point`) or the
    crop centre (also when the source camera's is unknown); ``principal_point_from`` in the
    summary says which.

    Returns:
        The summary of :func:`stabilize` (focal, principal point and where it came from,
        tracks, errors and jitter before/after BA, solver iterations and timings).
    """
    import cv2
    from tqdm import tqdm

    from data_prep.ingest import prefetched
    from data_prep.subject import frame_name

    subject_dir = Path(subject_dir)
    p = StabilizeParams.from_dict(params)
    track_path = subject_dir / "track.npz"
    if not track_path.is_file():
        raise InputError(f"{track_path} not found; run the track step first.")
    with np.load(track_path) as tr:
        landmarks, valid = tr["landmarks"], tr["valid"].astype(bool)
        matrices = tr["matrices"] if "matrices" in tr.files else None
    first = cv2.imread(str(subject_dir / "frames" / frame_name(0, "jpg")), cv2.IMREAD_GRAYSCALE)
    if first is None:
        raise InputError(f"no frames in {subject_dir / 'frames'}; run the ingest step first.")
    n = len(landmarks)
    pp_from = "params"
    if p.principal_point is None:
        pp = (subject_principal_point(subject_dir, first.shape[:2])
              if p.principal_point_from == "source" else None)
        pp_from = "crop centre" if pp is None else "source frame centre"
        p = replace(p, principal_point=pp)
    with tqdm(total=n, desc="stabilize: KLT", unit="frame", leave=False, disable=None) as bar:
        result = stabilize(prefetched(_read_frames(subject_dir / "frames", n)), landmarks, valid,
                           matrices, first.shape[:2], p, progress=bar.update)
    save_poses(subject_dir / "poses.npz", result)
    info = {**result.info, "principal_point_from": pp_from}
    log.info("stabilize: %d frames, focal %.0f px, %d tracks; landmark RMS %.2f → %.2f px, "
             "jitter %.3f° → %.3f°; KLT %.1f s, BA %.1f s (%d it)", info["n_frames"],
             info["focal_px"], info["n_tracks"], info["landmark_rms_px_before"],
             info["landmark_rms_px"], info["rotation_jitter_deg_before"], info["rotation_jitter_deg"],
             info["seconds_klt"], info["seconds_ba"], info["ba_iterations"])
    return info

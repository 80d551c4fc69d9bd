"""Cameras, rays and the normalised head box.

World (from ``data_prep.stabilize``): the head frame in millimetres — origin at the
centroid of the rigid landmarks, x to image right, y down, z into the head. Cameras are
OpenCV (x right, y down, z forward); ``c2w [4, 4]`` maps camera to world, intrinsics
``K [3, 3]`` are in pixels of the (training-size) frame, pixel ``(u, v)`` has its centre at
``(u + 0.5, v + 0.5)``.

**Head box normalisation** (:class:`HeadBox`). The NeRF lives in the axis-aligned box
``x, z ∈ [−1, 1], y ∈ [−0.5, 0.5]`` (:data:`AABB`). A world point ``X`` (mm) maps to

    ``p = S · A · (X − c)``

with ``c`` the box centre in world mm, ``A`` the fixed rotation (:data:`AXES`)

    box x =  world x  (image right),
    box y = −world z  (towards the camera: the face's front is +y),
    box z =  world y  (down),

and ``S = diag(s_x, s_y, s_z)`` box units per mm, one per box axis, chosen so the head —
face, hair, ears, the jaw at its lowest — fills the box with a margin
(:func:`fit_head_box`). The scale is per axis (anisotropic) so the thin depth axis does not
cost resolution in the frontal plane. Rays are mapped to the box with their directions
re-normalised to unit length in box units; ray parameters ``t``, sample spacings and
densities are all in box units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: The head AABB in box units: (xmin, ymin, zmin, xmax, ymax, zmax).
AABB = (-1.0, -0.5, -1.0, 1.0, 0.5, 1.0)
#: World → box axis rotation (rows: box axes in world coordinates); det = +1.
AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class HeadBox:
    """The world (mm) → box transform ``p = diag(scale) · AXES · (X − centre_mm)``.

    Attributes:
        centre_mm: ``(3,)`` box centre in world millimetres.
        scale: ``(3,)`` box units per millimetre along the box x, y, z axes.
    """

    centre_mm: tuple[float, float, float]
    scale: tuple[float, float, float]

    @property
    def matrix(self) -> np.ndarray:
        """``[3, 3]`` linear part ``diag(scale) · AXES`` (box units per mm)."""
        return np.diag(self.scale) @ AXES

    def world_to_box(self, x: np.ndarray) -> np.ndarray:
        """``[..., 3]`` world mm → ``[..., 3]`` box units."""
        return (np.asarray(x, np.float64) - np.asarray(self.centre_mm)) @ self.matrix.T

    def box_to_world(self, p: np.ndarray) -> np.ndarray:
        """``[..., 3]`` box units → ``[..., 3]`` world mm."""
        return np.asarray(p, np.float64) @ np.linalg.inv(self.matrix).T + np.asarray(self.centre_mm)

    def to_dict(self) -> dict:
        return {"centre_mm": [float(v) for v in self.centre_mm],
                "scale_per_mm": [float(v) for v in self.scale],
                "axes": AXES.tolist(), "aabb": list(AABB),
                "formula": "box = diag(scale_per_mm) · axes · (world_mm − centre_mm)"}

    @classmethod
    def from_dict(cls, d: dict) -> "HeadBox":
        return cls(tuple(float(v) for v in d["centre_mm"]),  # type: ignore[arg-type]
                   tuple(float(v) for v in d["scale_per_mm"]))  # type: ignore[arg-type]


def fit_head_box(c2w: np.ndarray, K: np.ndarray, head_masks: list[tuple[int, np.ndarray]],
                 template: np.ndarray, *, margin: float = 0.1) -> HeadBox:
    """Choose the head box from the head silhouettes and the landmark template.

    The head-mask pixels of the given frames are back-projected onto the camera-parallel
    plane through the world origin (the head centre's depth), which gives the head's
    extent along world x and y in mm (0.2/99.8 percentiles over all pixels, robust to
    stray mask pixels); the face template adds the chin and the nose. Depth (world z)
    runs from the nose tip minus ``0.1·W`` to the nose tip plus ``0.9·W`` (W = the head's
    width): the visible part of a head, ears and side hair included.

    Args:
        c2w: ``[N, 4, 4]`` camera-to-world (mm).
        K: ``[3, 3]`` intrinsics (px of the masks).
        head_masks: ``(frame index, [H, W] bool head mask)`` pairs (a subset of frames).
        template: ``[478, 3]`` face landmarks in world mm (``poses.npz`` ``template``).
        margin: fraction of each half-extent added on every side.

    Returns:
        The :class:`HeadBox`.
    """
    pts = [template[:, :2]]
    Kinv = np.linalg.inv(K)
    for i, mask in head_masks:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        step = max(1, len(xs) // 4000)
        xs, ys = xs[::step], ys[::step]
        depth = np.linalg.inv(c2w[i])[2, 3]  # camera z of the world origin
        uv1 = np.stack([xs + 0.5, ys + 0.5, np.ones(len(xs))], 1)
        cam = (uv1 @ Kinv.T) * depth
        world = cam @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        pts.append(world[:, :2])
    xy = np.concatenate(pts)
    lo = np.minimum(np.percentile(xy, 0.2, axis=0), template[:, :2].min(0))
    hi = np.maximum(np.percentile(xy, 99.8, axis=0), template[:, :2].max(0))
    width = float(hi[0] - lo[0])
    z_front = float(template[:, 2].min()) - 0.1 * width
    z_back = float(template[:, 2].min()) + 0.9 * width
    lo3 = np.array([lo[0], lo[1], z_front])
    hi3 = np.array([hi[0], hi[1], z_back])
    centre = 0.5 * (lo3 + hi3)
    half = 0.5 * (hi3 - lo3) * (1.0 + margin)  # world x, y, z half-extents, mm
    box_half = np.array([AABB[3], AABB[4], AABB[5]])
    # box x ← world x, box y ← world z, box z ← world y
    scale = (box_half[0] / half[0], box_half[1] / half[2], box_half[2] / half[1])
    return HeadBox(tuple(float(v) for v in centre), tuple(float(v) for v in scale))  # type: ignore[arg-type]


def box_cameras(c2w: np.ndarray, box: HeadBox) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras in box units: ``(origins [N, 3], rot [N, 3, 3])`` float32, where a camera-space
    direction ``d_c`` maps to the (un-normalised) box direction ``rot @ d_c``."""
    M = box.matrix
    origins = box.world_to_box(c2w[:, :3, 3])
    rot = np.einsum("ij,njk->nik", M, c2w[:, :3, :3])
    return torch.from_numpy(origins).float(), torch.from_numpy(rot).float()


def pixel_rays(origins: torch.Tensor, rot: torch.Tensor, K: torch.Tensor, xy: torch.Tensor,
               cam_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres, in box units.

    Args:
        origins: ``[C, 3]`` camera centres (box units); rot: ``[C, 3, 3]`` (:func:`box_cameras`).
        K: ``[3, 3]`` intrinsics (px).
        xy: ``[R, 2]`` integer or float pixel coordinates (x = column, y = row); the ray goes
            through ``(x + 0.5, y + 0.5)``.
        cam_index: ``[R]`` int64 camera of each ray (default: all camera 0).

    Returns:
        ``(rays_o [R, 3], rays_d [R, 3])`` float32, directions of unit length.
    """
    xy = xy.to(torch.float32)
    dc = torch.stack([(xy[:, 0] + 0.5 - K[0, 2]) / K[0, 0], (xy[:, 1] + 0.5 - K[1, 2]) / K[1, 1],
                      torch.ones_like(xy[:, 0])], -1)
    if cam_index is None:
        cam_index = torch.zeros(len(xy), dtype=torch.long, device=xy.device)
    d = torch.einsum("rij,rj->ri", rot[cam_index], dc)
    d = d / d.norm(dim=-1, keepdim=True)
    return origins[cam_index].expand(len(xy), 3).contiguous(), d


def project_points(points_box: torch.Tensor, origins: torch.Tensor, rot: torch.Tensor,
                   K: torch.Tensor) -> torch.Tensor:
    """Project box-space points into cameras.

    Args:
        points_box: ``[P, 3]``; origins ``[C, 3]``, rot ``[C, 3, 3]`` (:func:`box_cameras`).

    Returns:
        ``[C, P, 3]``: pixel x, pixel y (continuous, pixel centres at ``+0.5``) and camera depth
        (in units of the camera frame scaled by ``rot``; > 0 in front of the camera).
    """
    rel = points_box[None] - origins[:, None]                       # [C, P, 3]
    cam = torch.linalg.solve(rot, rel.transpose(1, 2)).transpose(1, 2)  # camera coords
    z = cam[..., 2]
    u = K[0, 0] * cam[..., 0] / z + K[0, 2]
    v = K[1, 1] * cam[..., 1] / z + K[1, 2]
    return torch.stack([u, v, z], -1)


def aabb_corners() -> np.ndarray:
    """``[8, 3]`` corners of :data:`AABB`."""
    lo, hi = np.array(AABB[:3]), np.array(AABB[3:])
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

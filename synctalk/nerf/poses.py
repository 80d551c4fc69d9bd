"""Per-frame head-pose refinement: small rigid corrections of prep's poses, learned by the
photometric loss.

Prep's bundle adjustment registers the face to a fraction of a pixel but leaves the rest of
the head (hair, hat, ears — far from the tracked skin) off by about a pixel: face points
alone pin a rotation about the face poorly. The NeRF sees every head pixel, so the
training refines each frame's pose along with the field, and frames the field is not
trained on (the val split) are registered to the finished field with the field frozen
(the trainer's ``register`` stage) — the dense counterpart of prep's tracking, which already
uses those frames' images.

A frame's correction ``δ = (ω, τ) ∈ ℝ⁶`` is a rigid motion ``T(δ) = [exp(ω̂) | RADIUS_MM·τ]``
of the **head** (world) frame applied before the frame's pose: ``x_cam = R (T X) + t``, i.e.
``c2w' = T⁻¹ · c2w``. ``ω`` is in radians; ``τ`` is in units of :data:`RADIUS_MM` millimetres,
so a unit of either moves a point at the head's radius by about the same amount and one
learning rate suits both. The rotation is about the world origin (the centroid of the rigid
landmarks, mid-face), so it turns the back of the head more than the face, which is what the
tracking left free. Rows that are all zero leave their frame's camera exactly as prep made
it.
"""
from __future__ import annotations

import torch
from torch import nn

from synctalk.nerf.geometry import HeadBox

#: Millimetres per unit of the translation part of a correction (about a head's radius).
RADIUS_MM = 100.0


def _skew(w: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` → ``[B, 3, 3]`` cross-product matrices."""
    z = torch.zeros_like(w[:, 0])
    return torch.stack([torch.stack([z, -w[:, 2], w[:, 1]], -1),
                        torch.stack([w[:, 2], z, -w[:, 0]], -1),
                        torch.stack([-w[:, 1], w[:, 0], z], -1)], 1)


def correct_cameras(cam_o: torch.Tensor, cam_rot: torch.Tensor, delta: torch.Tensor,
                    box: HeadBox) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply corrections to box-space cameras (differentiable in ``delta``).

    Args:
        cam_o: ``[B, 3]`` camera centres, box units; cam_rot: ``[B, 3, 3]`` camera → box
            direction maps (:func:`~synctalk.nerf.geometry.box_cameras`).
        delta: ``[B, 6]`` corrections ``(ω rad, τ in RADIUS_MM)``.
        box: the head box (world mm ↔ box units).

    Returns:
        ``(cam_o [B, 3], cam_rot [B, 3, 3])`` of the corrected poses ``c2w' = T(δ)⁻¹ c2w``.
    """
    dtype, dev = cam_o.dtype, cam_o.device
    M = torch.as_tensor(box.matrix, dtype=dtype, device=dev)
    M_inv = torch.linalg.inv(M)
    c = torch.as_tensor(box.centre_mm, dtype=dtype, device=dev)
    q_t = torch.linalg.matrix_exp(_skew(delta[:, :3].to(dtype))).transpose(1, 2)  # Qᵀ [B, 3, 3]
    tau = delta[:, 3:].to(dtype) * RADIUS_MM
    o_world = cam_o @ M_inv.T + c                                   # [B, 3] mm
    o_new = torch.einsum("bij,bj->bi", q_t, o_world - tau)
    rot_new = M @ q_t @ M_inv @ cam_rot                             # M Qᵀ R_c2w
    return (o_new - c) @ M.T, rot_new


class PoseRefinement(nn.Module):
    """Learnable corrections ``delta [N, 6]`` (zeros: prep's poses), one row per subject frame."""

    def __init__(self, n_frames: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(n_frames, 6))

    def cameras(self, frames: torch.Tensor, cam_o: torch.Tensor, cam_rot: torch.Tensor,
                box: HeadBox, *, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrected cameras of ``frames [B]`` given their prep cameras ``cam_o [B, 3]``,
        ``cam_rot [B, 3, 3]`` (box space). ``grad=False`` detaches the corrections, and then
        returns the inputs themselves when none of the frames is corrected."""
        delta = self.delta[frames.to(self.delta.device)]
        if not grad:
            delta = delta.detach()
            if not bool(torch.any(delta != 0)):
                return cam_o, cam_rot
        return correct_cameras(cam_o, cam_rot, delta.to(cam_o.device), box)

    def subject_cameras(self, data, frames: torch.Tensor, *, grad: bool = True,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`cameras` of ``frames [B]`` of a :class:`~synctalk.nerf.data.SubjectData`
        (its prep cameras ``cam_o``/``cam_rot`` and ``box``), on ``device`` (default: the
        data's)."""
        o, rot = data.cam_o[frames], data.cam_rot[frames]
        if device is not None:
            o, rot = o.to(device), rot.to(device)
        return self.cameras(frames, o, rot, data.box, grad=grad)

    @torch.no_grad()
    def magnitude(self, frames: torch.Tensor) -> dict[str, float]:
        """RMS rotation (degrees) and translation (mm) of the corrections of ``frames``."""
        d = self.delta[frames.to(self.delta.device)].double()
        if len(d) == 0:
            return {"rot_deg": 0.0, "trans_mm": 0.0}
        rot = torch.rad2deg(d[:, :3].norm(dim=1)).pow(2).mean().sqrt()
        trans = (d[:, 3:].norm(dim=1) * RADIUS_MM).pow(2).mean().sqrt()
        return {"rot_deg": float(rot), "trans_mm": float(trans)}

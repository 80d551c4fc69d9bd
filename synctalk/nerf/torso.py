"""The torso field: a 2-D field over pixel coordinates that follows the head pose.

For a pixel ``p`` (normalised to [−1, 1]²) of frame ``f``:

1. ``K`` learnable anchor points (box units, initialised around the neck below the head) are
   projected with the frame's camera → ``[2K]`` normalised image positions: the head pose
   as the torso sees it.
2. A deformation MLP on ``[sin/cos encoding of p (4 octaves), anchors]`` → offset
   ``Δ = 0.2·tanh(·)``.
3. ``p + Δ`` is looked up in a 2-D multi-resolution grid (:func:`synctalk.ops.grid.grid_encode`).
4. An MLP on ``[grid features, torso code of f]`` → alpha (sigmoid) and RGB (sigmoid).

The torso layer is ``α·rgb + (1 − α)·background``, and the head is composited over it
(:mod:`synctalk.nerf.renderer`). The torso stage trains it, with the head frozen, against the
subject's torso images (``torso/`` RGBA over ``background.png``) and their neck/torso labels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from synctalk.nerf.field import mlp
from synctalk.nerf.geometry import project_points
from synctalk.ops.grid import GridEncoder, GridSpec

#: Octaves of the pixel-position encoding fed to the deformation MLP.
POS_OCTAVES = 4


def posenc(x: torch.Tensor, octaves: int = POS_OCTAVES) -> torch.Tensor:
    """``[N, D]`` → ``[N, D + 2·D·octaves]``: x, sin(2^k π x), cos(2^k π x)."""
    freq = (2.0 ** torch.arange(octaves, device=x.device, dtype=x.dtype)) * math.pi
    xf = x[..., None] * freq                                   # [N, D, O]
    return torch.cat([x, torch.sin(xf).flatten(1), torch.cos(xf).flatten(1)], -1)


class TorsoField(nn.Module):
    """The 2-D torso field (module docstring).

    Args:
        cfg: :class:`~synctalk.nerf.config.TrainConfig` (torso grid, anchors, code size).
        n_frames: frames of the subject (one torso code each).
        generator: seeds the grid table and the anchors.
    """

    def __init__(self, cfg, n_frames: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.spec = GridSpec(dim=2, n_levels=cfg.torso_levels, n_features=cfg.torso_features,
                             base_resolution=cfg.torso_base_res, max_resolution=cfg.torso_max_res,
                             log2_hashmap_size=max(cfg.grid_log2_hashmap, 16))
        self.grid = GridEncoder(self.spec, generator=generator)
        k = cfg.torso_anchors
        # around the neck: below the head box centre, spread sideways and in depth
        a = torch.rand(k, 3, generator=generator) * 2 - 1
        self.anchors = nn.Parameter(a * torch.tensor([0.5, 0.25, 0.2]) + torch.tensor([0.0, 0.0, 0.8]))
        d_pos = 2 + 4 * POS_OCTAVES
        self.deform = mlp(d_pos + 2 * k, 64, 2, 3)
        self.net = mlp(self.spec.out_dim + cfg.torso_code_dim, 64, 4, 3)
        self.codes = nn.Embedding(n_frames, cfg.torso_code_dim)
        nn.init.zeros_(self.codes.weight)

    @property
    def backend(self) -> str:
        return self.grid.backend

    @backend.setter
    def backend(self, name: str) -> None:
        self.grid.backend = name

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.grid.table]

    def net_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("grid.")]

    def anchor_positions(self, cam_o: torch.Tensor, cam_rot: torch.Tensor, K: torch.Tensor,
                         size: int) -> torch.Tensor:
        """Anchors projected by ``C`` cameras → ``[C, 2K]`` positions normalised to [−1, 1]."""
        uvz = project_points(self.anchors, cam_o, cam_rot, K)       # [C, K, 3]
        return (uvz[..., :2] / size * 2 - 1).flatten(1)

    def forward(self, xy: torch.Tensor, anchors: torch.Tensor, frames: torch.Tensor,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Torso colour and alpha at pixels.

        Args:
            xy: ``[R, 2]`` pixel coordinates (x, y; centres at +0.5).
            anchors: ``[R, 2K]`` projected anchors of each ray's frame (:meth:`anchor_positions`).
            frames: ``[R]`` int64 subject frames (torso codes).
            size: image side in px.

        Returns:
            ``(rgb [R, 3], alpha [R])`` in (0, 1).
        """
        p = (xy.float() + 0.5) / size * 2 - 1
        delta = 0.2 * torch.tanh(self.deform(torch.cat([posenc(p), anchors], -1)))
        u = ((p + delta + 1) / 2).clamp(0.0, 1.0)
        feat = self.grid(u)
        h = self.net(torch.cat([feat, self.codes(frames)], -1))
        return torch.sigmoid(h[:, 1:].float()), torch.sigmoid(h[:, 0].float())

"""Occupancy grid of the head box: which cells the ray marcher samples.

A ``R³`` grid over :data:`~synctalk.nerf.geometry.AABB` (index ``[ix, iy, iz]``) holds an
EMA-max of the head density (:func:`synctalk.ops.density.update_density_grid`): at each update
every cell seen by a training camera takes ``max(0.95 · old, σ(jittered point in the cell))``
and cells no camera sees stay empty; a cell is occupied when its value exceeds
``min(mean over seen cells, 10)``. Until the first update (``occ_warmup`` steps) every seen
cell counts as occupied.

The density depends on the frame's audio and blendshapes; each update uses the conditioning
of one random training frame, so over updates the max keeps every expression's extent.

State (all buffers, saved in checkpoints): ``density [R, R, R]`` float32, ``occupied`` and
``seen`` ``[R, R, R]`` bool.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from synctalk.nerf.geometry import AABB, project_points
from synctalk.ops.density import update_density_grid


def cells_seen(cam_o: torch.Tensor, cam_rot: torch.Tensor, K: torch.Tensor, size: int,
               resolution: int, max_cameras: int = 64) -> torch.Tensor:
    """``[R, R, R]`` bool: cells whose centre projects inside the ``size × size`` image, in
    front of the camera, for at least one of (up to ``max_cameras``, evenly spaced) cameras.

    Cameras are the box-space ones of :func:`~synctalk.nerf.geometry.box_cameras` (their
    linear part is not a rotation, hence not ``ops.density.cells_seen``'s ``c2w``)."""
    r = resolution
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    idx = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = lo + (idx + 0.5) * (hi - lo) / r  # [R³, 3], C order of [ix, iy, iz]
    step = max(1, len(cam_o) // max_cameras)
    seen = torch.zeros(len(centres), dtype=torch.bool)
    for c in range(0, len(cam_o), step):
        uvz = project_points(centres, cam_o[c:c + 1], cam_rot[c:c + 1], K)[0]
        seen |= ((uvz[:, 2] > 0) & (uvz[:, 0] >= 0) & (uvz[:, 0] < size)
                 & (uvz[:, 1] >= 0) & (uvz[:, 1] < size))
    return seen.view(r, r, r)


#: Jittered points per cell at the first update.
FIRST_UPDATE_POINTS = 4


class OccupancyGrid(nn.Module):
    """The occupancy state of one model (module docstring)."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        r = resolution
        self.resolution = r
        self.register_buffer("density", torch.zeros(r, r, r))
        self.register_buffer("occupied", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("seen", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def set_seen(self, seen: torch.Tensor) -> None:
        """Record the cells the training cameras see; before any update they are the occupied
        ones."""
        self.seen.copy_(seen)
        if int(self.updates) == 0:
            self.occupied.copy_(seen)

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], *, decay: float = 0.95,
               threshold_cap: float = 10.0, fraction: float = 1.0,
               generator: torch.Generator | None = None, chunk: int = 65536) -> dict:
        """One EMA-max update with ``density_fn([M, 3] box points) -> [M]`` densities, evaluating
        a random ``fraction`` of the seen cells. The first update evaluates every seen cell at
        :data:`FIRST_UPDATE_POINTS` jittered points (a cell left at 0 then would count as
        empty, and one point is a poor estimate of a young, diffuse field).

        Returns ``{"occupied_fraction", "mean_density"}`` for logging.
        """
        aabb = torch.tensor(AABB, device=self.density.device)
        first = int(self.updates) == 0
        new, occ = update_density_grid(self.density, density_fn, aabb, self.seen, decay=decay,
                                       threshold_cap=threshold_cap,
                                       fraction=1.0 if first else fraction,
                                       n_points_per_cell=FIRST_UPDATE_POINTS if first else 1,
                                       chunk=chunk, generator=generator)
        self.density.copy_(new)
        self.occupied.copy_(occ)
        self.updates += 1
        seen = self.seen
        return {"occupied_fraction": float(occ.sum()) / max(1, int(seen.sum())),
                "mean_density": float(new[seen].mean()) if bool(seen.any()) else 0.0}

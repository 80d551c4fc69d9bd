"""Ray–box intersection and occupancy-grid ray marching into packed samples.

Conventions:

* ``aabb`` is a ``[6]`` float tensor ``(xmin, ymin, zmin, xmax, ymax, zmax)`` in world units.
* Ray parameters ``t`` are in units of ``|rays_d|`` (world units for unit directions);
  a point is ``rays_o + t · rays_d``.
* An occupancy grid is a ``[R, R, R]`` tensor over the AABB indexed ``[ix, iy, iz]``; cell
  ``(ix, iy, iz)`` covers ``aabb_min + [ix, ix+1) · (aabb_max - aabb_min) / R`` per axis. Its
  flat index is the C order of that array, ``ix·R² + iy·R + iz``
  (``grid.reshape(-1)[occupancy_index(...)]`` looks a point up). The native backend stores
  grids in Morton order; :mod:`synctalk.ops.density` converts.
* Packed samples (:class:`PackedSamples`) list every kept sample once, sorted by ray and,
  within a ray, by ``t`` (nerfacc's packed layout).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from synctalk.errors import InputError
from synctalk.ops.backend import register_backend, resolve


def _check_rays(rays_o: Tensor, rays_d: Tensor) -> None:
    if rays_o.dim() != 2 or rays_o.shape[1] != 3 or rays_d.shape != rays_o.shape:
        raise InputError(f"rays_o and rays_d must both have shape [N, 3], got "
                         f"{list(rays_o.shape)} and {list(rays_d.shape)}")


def _check_aabb(aabb: Tensor) -> None:
    if aabb.shape != (6,):
        raise InputError(f"aabb must have shape [6] (xmin, ymin, zmin, xmax, ymax, zmax), got {list(aabb.shape)}")
    if aabb.device.type == "cpu" and not bool((aabb[3:] > aabb[:3]).all()):  # no GPU sync
        raise InputError(f"aabb must have max > min on every axis, got {aabb.tolist()}")


def to_unit_cube(xyz: Tensor, aabb: Tensor) -> Tensor:
    """Map world points into the AABB's unit cube (the grid encoders' input range).

    Args:
        xyz: ``[M, 3]`` world points.
        aabb: ``[6]`` box.

    Returns:
        ``[M, 3]`` ``(xyz - aabb_min) / (aabb_max - aabb_min)``; points inside land in [0,1]^3.
    """
    lo, hi = aabb[:3].to(xyz), aabb[3:].to(xyz)
    return (xyz - lo) / (hi - lo)


# ----------------------------------------------------------------------------------------
# ray-AABB


def _ray_aabb_torch(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, near: float) -> tuple[Tensor, Tensor]:
    lo, hi = aabb[:3].to(rays_o), aabb[3:].to(rays_o)
    parallel = rays_d == 0
    safe_d = torch.where(parallel, torch.ones_like(rays_d), rays_d)
    t_lo = (lo - rays_o) / safe_d
    t_hi = (hi - rays_o) / safe_d
    t_min = torch.minimum(t_lo, t_hi)
    t_max = torch.maximum(t_lo, t_hi)
    # A ray parallel to an axis' slabs spans all t when its origin lies within them
    # (boundary included), else none.
    inside = (rays_o >= lo) & (rays_o <= hi)
    inf = torch.full_like(t_min, float("inf"))
    t_min = torch.where(parallel, torch.where(inside, -inf, inf), t_min)
    t_max = torch.where(parallel, torch.where(inside, inf, -inf), t_max)
    t_near = t_min.amax(dim=1).clamp_min(near)
    t_far = t_max.amin(dim=1)
    hit = t_far > t_near
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero)


def ray_aabb(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, *, near: float = 0.0,
             backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Where each ray enters and leaves an axis-aligned box (slab method).

    Args:
        rays_o: ``[N, 3]`` float ray origins.
        rays_d: ``[N, 3]`` float ray directions (need not be unit length; a zero component
            means the ray is parallel to that axis' faces).
        aabb: ``[6]`` box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        near: smallest ``t`` kept (0: nothing behind the origin); a ray starting inside the
            box gets ``t_near = near``.
        backend: ``"auto"``, ``"torch"`` or another registered backend.

    Returns:
        ``(t_near [N], t_far [N])`` in units of ``|rays_d|``. A ray hits when
        ``t_far > t_near``; rays that miss (including ones that only graze an edge or whose
        box lies behind ``near``) get ``t_near = t_far = 0`` — finite, so arithmetic on them
        never produces NaN.
    """
    _check_rays(rays_o, rays_d)
    _check_aabb(aabb)
    return resolve("ray_aabb", backend)(rays_o, rays_d, aabb, float(near))


# ----------------------------------------------------------------------------------------
# packed samples


@dataclass
class PackedSamples:
    """Samples of ``n_rays`` rays, packed (all of ray 0's, then ray 1's, ...).

    Attributes:
        ray_indices: ``[S]`` int64, the ray of each sample, ascending.
        t_starts: ``[S]`` float, start of each sample's interval along its ray.
        t_ends: ``[S]`` float, end of the interval (> t_starts).
        offsets: ``[N]`` int64, index of each ray's first sample (= where it would be when
            the ray has none); ``offsets[r] = Σ_{q<r} counts[q]``.
        counts: ``[N]`` int64, samples per ray.
        n_rays: N.
        t_pos: ``[S]`` float or None, where along the ray the field is evaluated for each
            sample: the interval midpoint (None means exactly that) or, with
            ``perturb=True``, a uniform jitter inside ``[t_starts, t_ends)``.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    offsets: Tensor
    counts: Tensor
    n_rays: int
    t_pos: Tensor | None = None

    @property
    def n_samples(self) -> int:
        """S, the total number of samples."""
        return int(self.ray_indices.shape[0])

    @property
    def t_mid(self) -> Tensor:
        """``[S]`` interval midpoints ``(t_starts + t_ends) / 2``."""
        return (self.t_starts + self.t_ends) * 0.5

    @property
    def deltas(self) -> Tensor:
        """``[S]`` interval lengths ``t_ends - t_starts`` (units of ``|rays_d|``)."""
        return self.t_ends - self.t_starts

    @property
    def positions(self) -> Tensor:
        """``[S]`` the ``t`` at which to evaluate the field (``t_pos``, else ``t_mid``)."""
        return self.t_mid if self.t_pos is None else self.t_pos

    def points(self, rays_o: Tensor, rays_d: Tensor) -> Tensor:
        """``[S, 3]`` world positions ``rays_o + positions · rays_d`` of the samples."""
        return rays_o[self.ray_indices] + self.positions.unsqueeze(-1) * rays_d[self.ray_indices]

    def directions(self, rays_d: Tensor) -> Tensor:
        """``[S, 3]`` the (unnormalised) direction of each sample's ray."""
        return rays_d[self.ray_indices]

    @staticmethod
    def from_mask(mask: Tensor, t_starts: Tensor, t_ends: Tensor, t_pos: Tensor | None = None) -> "PackedSamples":
        """Pack the ``True`` entries of a ``[N, K]`` mask of per-ray candidate samples.

        Args:
            mask: ``[N, K]`` bool, which candidates to keep.
            t_starts, t_ends: ``[N, K]`` interval bounds of the candidates, sorted along K.
            t_pos: optional ``[N, K]`` evaluation positions.

        Returns:
            The packed samples (row-major order, so sorted by ray and by t).
        """
        counts = mask.sum(dim=1)
        offsets = torch.cumsum(counts, 0) - counts
        ray_indices = mask.nonzero()[:, 0]
        return PackedSamples(ray_indices=ray_indices, t_starts=t_starts[mask], t_ends=t_ends[mask],
                             offsets=offsets, counts=counts, n_rays=int(mask.shape[0]),
                             t_pos=None if t_pos is None else t_pos[mask])


# ----------------------------------------------------------------------------------------
# occupancy lookup and marching


def occupancy_index(xyz: Tensor, aabb: Tensor, resolution: int) -> Tensor:
    """Flat cell index of points in an ``R³`` occupancy grid over ``aabb``.

    Args:
        xyz: ``[M, 3]`` world points.
        aabb: ``[6]`` box.
        resolution: R, cells per axis.

    Returns:
        ``[M]`` int64 ``ix·R² + iy·R + iz`` (C order of an ``[R, R, R]`` grid indexed
        ``[ix, iy, iz]``); points on the max faces belong to the last cell; points outside
        the closed box get -1.
    """
    R = int(resolution)
    u = to_unit_cube(xyz, aabb)
    inside = ((u >= 0) & (u <= 1)).all(dim=-1)
    cell = (u * R).floor().clamp_(0, R - 1).to(torch.int64)
    index = (cell[:, 0] * R + cell[:, 1]) * R + cell[:, 2]
    return torch.where(inside, index, torch.full_like(index, -1))


def candidate_intervals(t_near: Tensor, t_far: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
    """``march_rays``' candidate intervals: ``(t_starts, t_ends)``, each ``[N, n_samples]``,
    ``[t_near, t_far]`` cut into ``n_samples`` equal parts (the expressions every backend
    rounds the same way)."""
    K = int(n_samples)
    steps = torch.arange(K + 1, device=t_near.device, dtype=t_near.dtype) / K         # [K+1]
    edges = t_near.unsqueeze(1) + (t_far - t_near).unsqueeze(1) * steps             # [N, K+1]
    return edges[:, :-1], edges[:, 1:]


def occupied_at(rays_o: Tensor, rays_d: Tensor, t_pos: Tensor, occupied: Tensor, aabb: Tensor) -> Tensor:
    """Whether the points ``rays_o + t_pos · rays_d`` (``t_pos [N, K]``) lie in occupied
    cells of ``occupied [R, R, R]``: ``[N, K]`` bool. Points are clamped into the grid (not
    rejected), so samples one rounding error outside a face of the box keep their cell."""
    R = occupied.shape[0]
    xyz = rays_o.unsqueeze(1) + t_pos.unsqueeze(-1) * rays_d.unsqueeze(1)           # [N, K, 3]
    cell = (to_unit_cube(xyz, aabb) * R).floor_().clamp_(0, R - 1).to(torch.int64)
    index = (cell[..., 0] * R + cell[..., 1]) * R + cell[..., 2]                       # [N, K]
    return occupied.reshape(-1).to(device=index.device, dtype=torch.bool)[index]


def _march_rays_torch(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor,
                      occupied: Tensor | None, aabb: Tensor, n_samples: int, perturb: bool,
                      generator: torch.Generator | None) -> PackedSamples:
    N = rays_o.shape[0]
    K = int(n_samples)
    hit = t_far > t_near
    t_starts, t_ends = candidate_intervals(t_near, t_far, K)
    if perturb:
        u = torch.rand((N, K), generator=generator, device=rays_o.device, dtype=rays_o.dtype)
        t_pos = t_starts + (t_ends - t_starts) * u
    else:
        t_pos = (t_starts + t_ends) * 0.5
    keep = hit.unsqueeze(1) & (t_ends > t_starts)                                    # [N, K]
    if occupied is not None:
        keep &= occupied_at(rays_o, rays_d, t_pos, occupied, aabb)
    return PackedSamples.from_mask(keep, t_starts, t_ends, t_pos if perturb else None)


def march_rays(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor,
               occupied: Tensor | None, aabb: Tensor, n_samples: int, *, perturb: bool = False,
               generator: torch.Generator | None = None, backend: str = "auto") -> PackedSamples:
    """Equal-interval samples along each ray, keeping those in occupied cells.

    Each hitting ray's ``[t_near, t_far]`` is cut into ``n_samples`` equal intervals; a
    candidate sample is evaluated at its interval's midpoint (or at a uniform jitter inside
    the interval when ``perturb``) and kept when that point lies in an occupied cell.
    ``t_starts``/``t_ends`` are always the interval bounds, so ``deltas`` are the
    compositing step; ``t_pos`` holds the jittered positions when ``perturb``.

    Args:
        rays_o, rays_d: ``[N, 3]`` float rays.
        t_near, t_far: ``[N]`` from :func:`ray_aabb`; rays with ``t_far <= t_near`` get none.
        occupied: ``[R, R, R]`` bool occupancy over ``aabb`` indexed ``[ix, iy, iz]``, or
            None to keep every candidate.
        aabb: ``[6]`` box of the grid.
        n_samples: intervals per hitting ray (the most samples a ray can get).
        perturb: jitter each evaluation position uniformly within its interval.
        generator: RNG for the jitter (same seed → same samples).
        backend: ``"auto"``, ``"torch"`` or another registered backend.

    Returns:
        :class:`PackedSamples` with ``S ≤ N · n_samples`` samples sorted by ray then ``t``.

    The torch reference materialises all ``N · n_samples`` candidates (about 40 bytes
    each); render full frames in chunks of rays.
    """
    _check_rays(rays_o, rays_d)
    _check_aabb(aabb)
    if t_near.shape != (rays_o.shape[0],) or t_far.shape != t_near.shape:
        raise InputError(f"t_near and t_far must have shape [{rays_o.shape[0]}], got "
                         f"{list(t_near.shape)} and {list(t_far.shape)}")
    if int(n_samples) < 1:
        raise InputError(f"n_samples must be ≥ 1, got {n_samples}")
    if occupied is not None and (occupied.dim() != 3 or len(set(occupied.shape)) != 1):
        raise InputError(f"occupied must be a cubic [R, R, R] grid, got {list(occupied.shape)}")
    return resolve("march_rays", backend)(rays_o, rays_d, t_near, t_far, occupied, aabb,
                                          int(n_samples), bool(perturb), generator)


register_backend("ray_aabb", "torch", _ray_aabb_torch)
register_backend("march_rays", "torch", _march_rays_torch)

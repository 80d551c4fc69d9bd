"""Occupancy (density) grid over the AABB: cell centres, camera visibility, EMA-max updates,
bitfield packing and Morton order.

A density grid is a ``[R, R, R]`` float32 tensor indexed ``[ix, iy, iz]`` over ``aabb`` (see
:mod:`synctalk.ops.raymarch` for the cell layout); the torch reference keeps grids in this
linear (C) order. The native backend stores them in Morton (Z-curve) order, 3-D bit
interleaving with x in the lowest bit: :func:`morton3`, :func:`morton3_decode`,
:func:`to_morton_order` and :func:`from_morton_order` convert. Bitfields pack 8 cells per
byte, cell ``8j + k`` in bit ``k`` (least significant first) of byte ``j``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from synctalk.errors import InputError


def _aabb_parts(aabb: Tensor, device, dtype) -> tuple[Tensor, Tensor]:
    aabb = torch.as_tensor(aabb, device=device, dtype=dtype)
    if aabb.shape != (6,):
        raise InputError(f"aabb must have shape [6], got {list(aabb.shape)}")
    return aabb[:3], aabb[3:]


def cell_centers(R: int, aabb: Tensor, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """World positions of the centres of an ``R³`` grid's cells.

    Args:
        R: cells per axis.
        aabb: ``[6]`` box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        device, dtype: of the result (device defaults to ``aabb``'s).

    Returns:
        ``[R³, 3]`` in the C order of ``[ix, iy, iz]`` (row ``ix·R² + iy·R + iz``).
    """
    device = aabb.device if device is None and isinstance(aabb, Tensor) else device
    lo, hi = _aabb_parts(aabb, device, dtype)
    ticks = (torch.arange(R, device=device, dtype=dtype) + 0.5) / R
    grid = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
    return lo + grid * (hi - lo)


def cells_seen(c2w: Tensor, intrinsics: Tensor, H: int, W: int, aabb: Tensor, R: int, *,
               cameras_per_chunk: int = 4, cells_per_chunk: int = 1 << 18) -> Tensor:
    """Cells whose centre some camera sees: in front of it and inside its image.

    Cameras follow OpenCV (x right, y down, z forward); a pixel centre ``(u, v)`` is at
    integer coordinates, so the image spans ``u ∈ [-0.5, W - 0.5)``, ``v ∈ [-0.5, H - 0.5)``.

    Args:
        c2w: ``[F, 4, 4]`` (or ``[F, 3, 4]``) camera-to-world matrices.
        intrinsics: ``[3, 3]`` shared, or ``[F, 3, 3]`` per camera, in pixels.
        H, W: image size in pixels.
        aabb: ``[6]`` box of the grid.
        R: cells per axis.
        cameras_per_chunk, cells_per_chunk: work size of one vectorised step (memory
            ≈ 40 bytes × their product). Cells already seen are not tested again, so the
            cost falls quickly after the first cameras.

    Returns:
        ``[R, R, R]`` bool.
    """
    if c2w.dim() != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise InputError(f"c2w must have shape [F, 4, 4] or [F, 3, 4], got {list(c2w.shape)}")
    F = c2w.shape[0]
    K = intrinsics if intrinsics.dim() == 3 else intrinsics.unsqueeze(0).expand(F, 3, 3)
    if K.shape != (F, 3, 3):
        raise InputError(f"intrinsics must have shape [3, 3] or [{F}, 3, 3], got {list(intrinsics.shape)}")
    device = c2w.device
    centers = cell_centers(R, aabb, device=device, dtype=torch.float32)
    seen = torch.zeros(R ** 3, dtype=torch.bool, device=device)
    rot = c2w[:, :3, :3].to(torch.float32)
    trans = c2w[:, :3, 3].to(torch.float32)
    K = K.to(device=device, dtype=torch.float32)
    todo = torch.arange(R ** 3, device=device)
    for start in range(0, F, cameras_per_chunk):
        if todo.numel() == 0:
            break
        rot_c, trans_c, k = (a[start:start + cameras_per_chunk] for a in (rot, trans, K))
        visible = torch.zeros(todo.numel(), dtype=torch.bool, device=device)
        for c0 in range(0, todo.numel(), cells_per_chunk):
            p = centers[todo[c0:c0 + cells_per_chunk]]                     # [M, 3]
            # camera coordinates R^T (p - t), as row vectors (p - t) @ R  -> [C, M, 3]
            cam = torch.einsum("mi,cij->cmj", p, rot_c) - torch.einsum("ci,cij->cj", trans_c, rot_c).unsqueeze(1)
            z = cam[..., 2]
            zs = torch.where(z > 0, z, torch.ones_like(z))
            u = (k[:, 0, 0, None] * cam[..., 0] + k[:, 0, 1, None] * cam[..., 1]) / zs + k[:, 0, 2, None]
            v = k[:, 1, 1, None] * cam[..., 1] / zs + k[:, 1, 2, None]
            inside = (z > 0) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
            visible[c0:c0 + cells_per_chunk] = inside.any(dim=0)
        seen[todo[visible]] = True
        todo = todo[~visible]
    return seen.view(R, R, R)


@torch.no_grad()
def update_density_grid(grid: Tensor, density_fn: Callable[[Tensor], Tensor], aabb: Tensor, seen: Tensor, *,
                        decay: float = 0.95, threshold_cap: float = 10.0, n_points_per_cell: int = 1,
                        fraction: float = 1.0, chunk: int = 65536,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One EMA-max update of a density grid, and the occupancy it implies.

    Each evaluated cell gets the density at ``n_points_per_cell`` uniformly jittered points
    inside it (their maximum); ``new = max(grid · decay, density)`` there,
    ``new = grid · decay`` on seen cells not evaluated this time (``fraction < 1``), and 0
    on unseen cells. ``occupied = seen & (new > min(mean(new[seen]), threshold_cap))``.

    Args:
        grid: ``[R, R, R]`` float32 current densities (not modified).
        density_fn: maps ``[M, 3]`` world points to ``[M]`` (or ``[M, 1]``) densities ≥ 0;
            called without gradients on chunks of at most ``chunk · n_points_per_cell``
            points.
        aabb: ``[6]`` box of the grid.
        seen: ``[R, R, R]`` bool, cells some training camera sees (:func:`cells_seen`).
        decay: EMA decay per update.
        threshold_cap: upper bound of the occupancy threshold.
        n_points_per_cell: jittered points per evaluated cell.
        fraction: share of the seen cells evaluated this update, drawn at random (1 = all).
        chunk: cells per ``density_fn`` call.
        generator: RNG of the jitter and the cell subset (same seed → same update).

    Returns:
        ``(new_grid [R, R, R] float32, occupied [R, R, R] bool)``.
    """
    if grid.dim() != 3 or len(set(grid.shape)) != 1:
        raise InputError(f"density grid must be a cubic [R, R, R] tensor, got {list(grid.shape)}")
    if seen.shape != grid.shape:
        raise InputError(f"seen must have the grid's shape {list(grid.shape)}, got {list(seen.shape)}")
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    R = grid.shape[0]
    device = grid.device
    lo, hi = _aabb_parts(aabb, device, torch.float32)
    cell_size = (hi - lo) / R
    seen_flat = seen.reshape(-1).to(torch.bool)
    new = grid.reshape(-1).to(torch.float32) * decay
    cells = seen_flat.nonzero()[:, 0]
    if fraction < 1.0 and cells.numel():
        keep = max(1, math.ceil(fraction * cells.numel()))
        pick = torch.randperm(cells.numel(), generator=generator, device=device)[:keep]
        cells = cells[pick].sort().values
    for start in range(0, cells.numel(), chunk):
        idx = cells[start:start + chunk]
        iz = idx % R
        iy = (idx // R) % R
        ix = idx // (R * R)
        corner = lo + torch.stack((ix, iy, iz), dim=-1).to(torch.float32) * cell_size     # [M, 3]
        jitter = torch.rand((n_points_per_cell, idx.numel(), 3), generator=generator, device=device)
        points = (corner + jitter * cell_size).reshape(-1, 3)
        density = density_fn(points).reshape(n_points_per_cell, idx.numel()).to(torch.float32).amax(dim=0)
        new[idx] = torch.maximum(new[idx], density)
    new = torch.where(seen_flat, new, torch.zeros_like(new))
    if seen_flat.any():
        threshold = torch.clamp(new[seen_flat].mean(), max=threshold_cap)
        occupied = seen_flat & (new > threshold)
    else:
        occupied = torch.zeros_like(seen_flat)
    return new.view(R, R, R), occupied.view(R, R, R)


def check_dilation(occupied: Tensor, radius: int) -> int:
    """Validate :func:`dilate_occupancy`'s arguments (shared with the native version);
    returns the radius as an int."""
    if occupied.dim() != 3 or occupied.dtype != torch.bool:
        raise InputError(f"dilate_occupancy: occupied must be a [X, Y, Z] bool grid, got "
                         f"{occupied.dtype} {list(occupied.shape)}")
    if int(radius) != radius or radius < 0:
        raise InputError(f"dilate_occupancy: radius must be an integer ≥ 0, got {radius}")
    return int(radius)


def dilate_occupancy(occupied: Tensor, radius: int = 1) -> Tensor:
    """Binary dilation of an occupancy grid by a ``(2·radius + 1)³`` cube.

    A cell is occupied afterwards when any cell within Chebyshev distance ``radius`` (in
    cells) was; the grid does not wrap and cells outside it count as empty. Used to keep a
    margin of samples around thin structures the density grid may prune.

    Args:
        occupied: ``[X, Y, Z]`` bool grid.
        radius: ≥ 0 cells (0 returns a copy).

    Returns:
        ``[X, Y, Z]`` bool, on ``occupied``'s device.
    """
    r = check_dilation(occupied, radius)
    if r == 0 or occupied.numel() == 0:
        return occupied.clone()
    x = occupied.to(torch.float32)[None, None]
    return torch.nn.functional.max_pool3d(x, 2 * r + 1, stride=1, padding=r)[0, 0] > 0


# ----------------------------------------------------------------------------------------
# bitfields and Morton order


def pack_bitfield(occupied: Tensor) -> Tensor:
    """Pack booleans 8 per byte.

    Args:
        occupied: bool tensor of any shape, read in its flattened (C) order; a length not
            divisible by 8 is padded with False.

    Returns:
        ``[ceil(n / 8)]`` uint8; element ``8j + k`` is bit ``k`` (LSB first) of byte ``j``.
    """
    flat = occupied.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    weights = (1 << torch.arange(8, device=flat.device, dtype=torch.int32))
    return (flat.view(-1, 8).to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


def unpack_bitfield(bits: Tensor, n: int | None = None) -> Tensor:
    """Inverse of :func:`pack_bitfield`.

    Args:
        bits: ``[B]`` uint8.
        n: number of elements to return (default ``8 · B``).

    Returns:
        ``[n]`` bool.
    """
    if bits.dtype != torch.uint8 or bits.dim() != 1:
        raise InputError(f"bitfield must be a 1-D uint8 tensor, got {bits.dtype} {list(bits.shape)}")
    shifts = torch.arange(8, device=bits.device, dtype=torch.int32)
    flat = ((bits.to(torch.int32).unsqueeze(1) >> shifts) & 1).to(torch.bool).reshape(-1)
    if n is not None:
        if n > flat.numel():
            raise InputError(f"bitfield of {bits.numel()} bytes holds {flat.numel()} bits, not {n}")
        flat = flat[:n]
    return flat


def _spread_bits(v: Tensor) -> Tensor:
    """Insert two zero bits after each of the low 21 bits of ``v`` (int64)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def _compact_bits(v: Tensor) -> Tensor:
    """Inverse of :func:`_spread_bits`: keep every third bit of ``v``, packed."""
    v = v & 0x1249249249249249
    v = (v | (v >> 2)) & 0x10C30C30C30C30C3
    v = (v | (v >> 4)) & 0x100F00F00F00F00F
    v = (v | (v >> 8)) & 0x1F0000FF0000FF
    v = (v | (v >> 16)) & 0x1F00000000FFFF
    v = (v | (v >> 32)) & 0x1FFFFF
    return v


def morton3(ix: Tensor, iy: Tensor, iz: Tensor) -> Tensor:
    """3-D Morton code: bit ``3b`` = bit ``b`` of ix, ``3b+1`` of iy, ``3b+2`` of iz.

    Args:
        ix, iy, iz: integer tensors (broadcastable), each in ``[0, 2^21)``.

    Returns:
        int64 codes, e.g. ``morton3(1,0,0) = 1``, ``(0,1,0) = 2``, ``(0,0,1) = 4``, ``(2,0,0) = 8``.
    """
    return (_spread_bits(torch.as_tensor(ix).to(torch.int64))
            | (_spread_bits(torch.as_tensor(iy).to(torch.int64)) << 1)
            | (_spread_bits(torch.as_tensor(iz).to(torch.int64)) << 2))


def morton3_decode(code: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`morton3`: ``(ix, iy, iz)`` int64 tensors."""
    code = torch.as_tensor(code).to(torch.int64)
    return _compact_bits(code), _compact_bits(code >> 1), _compact_bits(code >> 2)


def _check_pow2(R: int) -> None:
    if R < 1 or R & (R - 1):
        raise InputError(f"Morton order needs a power-of-two resolution, got R={R}")


def to_morton_order(grid: Tensor) -> Tensor:
    """``[R, R, R]`` grid (``[ix, iy, iz]``) → ``[R³]`` values in Morton order (R a power of 2)."""
    R = grid.shape[0]
    _check_pow2(R)
    ix, iy, iz = morton3_decode(torch.arange(R ** 3, device=grid.device))
    return grid[ix, iy, iz]


def from_morton_order(values: Tensor, R: int) -> Tensor:
    """``[R³]`` values in Morton order → ``[R, R, R]`` grid indexed ``[ix, iy, iz]``."""
    _check_pow2(R)
    if values.shape != (R ** 3,):
        raise InputError(f"expected {R ** 3} values for R={R}, got {list(values.shape)}")
    r = torch.arange(R, device=values.device)
    ix, iy, iz = torch.meshgrid(r, r, r, indexing="ij")
    return values[morton3(ix, iy, iz)]

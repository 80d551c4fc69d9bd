"""Multi-resolution dense/hash grid encoding in 2-D and 3-D, and the tri-plane encoding.

A :class:`GridSpec` describes ``L`` levels of ``F`` features each. Level ``l`` has
``res_l = floor(base · b^l)`` cells per axis (``b = (max/base)^(1/(L-1))``; ``b = 1`` when
``L = 1``) and so ``(res_l + 1)^dim`` vertices. A level is **dense** when its vertices fit in
``2^log2_hashmap_size`` rows (the table then holds exactly ``(res_l+1)^dim`` rows, vertex
``(i_0, .., i_{dim-1})`` at row ``Σ_d i_d · (res_l+1)^d``, i.e. ``i_0`` fastest) and
**hashed** otherwise (``2^log2_hashmap_size`` rows, vertex at row
``(XOR_d i_d · π_d) mod 2^log2_hashmap_size`` with ``π = (1, 2654435761, 805459861)``,
computed in int64 — bit-identical to a uint32 implementation). All levels live in one
table of ``spec.n_params`` rows; level ``l`` occupies rows ``offsets[l] : offsets[l+1]``.

Encoding a point ``x ∈ [0,1]^dim`` (clamped into that range first): ``p = x · res_l``,
corner ``c = clamp(floor(p), 0, res_l - 1)``, weights from ``p - c`` (bi-/tri-linear), so
``x = 1`` lands exactly on the last vertex. Features are level-major: level 0's ``F``
features, then level 1's, ...

Implementation (the ``"torch"`` backend): dense levels are bilinear/trilinear lookups in an
image of the level's vertices, done with :func:`torch.nn.functional.grid_sample`
(``align_corners=True``, which maps ``x`` to ``x · res_l`` exactly as above, with fused
vectorised forward and backward); hashed levels gather their ``2^dim`` corner rows with one
flat ``index_select`` and sum them weighted. :func:`encode_reference` is the same
encoding written with the gather formula for every level — the oracle the tests compare
against. Gradients flow to the table(s) and to ``x`` (except at ``x`` exactly on the
border 0 or 1 of a dense level, where ``grid_sample``'s border clamp gives a zero ``x``
gradient; a measure-zero set).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from synctalk.errors import InputError
from synctalk.ops.backend import register_backend, resolve

#: Per-axis multipliers of the spatial hash (instant-ngp's primes; axis 0 uses 1).
HASH_PRIMES: tuple[int, int, int] = (1, 2654435761, 805459861)

#: Input axes of the three tri-plane planes, in table / output order: (x,y), (y,z), (x,z).
TRIPLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 2))


@dataclass(frozen=True)
class GridSpec:
    """Shape of a multi-resolution grid (see the module docstring for the level rules).

    Attributes:
        dim: 2 (a plane) or 3 (a volume).
        n_levels: number of levels L (1..32).
        n_features: features per level F.
        base_resolution: cells per axis of level 0.
        max_resolution: cells per axis of level L-1 (≥ base_resolution).
        log2_hashmap_size: log2 of the most rows a level may hold (1..30).

    On CPU the torch reference encodes dense levels about twice as fast as hashed ones.
    Note that a 512-cell 2-D level has 513² = 263,169 vertices, just over 2^18: with
    ``log2_hashmap_size=19`` it stays dense for 0.4 % more rows than hashing it into 2^18.
    """

    dim: int
    n_levels: int
    n_features: int
    base_resolution: int
    max_resolution: int
    log2_hashmap_size: int

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise InputError(f"GridSpec.dim must be 2 or 3, got {self.dim}")
        if not 1 <= self.n_levels <= 32:
            raise InputError(f"GridSpec.n_levels must be in 1..32, got {self.n_levels}")
        if self.n_features < 1:
            raise InputError(f"GridSpec.n_features must be ≥ 1, got {self.n_features}")
        if self.base_resolution < 1 or self.max_resolution < self.base_resolution:
            raise InputError("GridSpec needs 1 ≤ base_resolution ≤ max_resolution, got "
                             f"{self.base_resolution} and {self.max_resolution}")
        if not 1 <= self.log2_hashmap_size <= 30:
            raise InputError(f"GridSpec.log2_hashmap_size must be in 1..30, got {self.log2_hashmap_size}")

    @property
    def growth(self) -> float:
        """Per-level scale factor b = (max/base)^(1/(L-1)) (1 when L = 1)."""
        if self.n_levels == 1:
            return 1.0
        return (self.max_resolution / self.base_resolution) ** (1.0 / (self.n_levels - 1))

    @functools.cached_property
    def resolutions(self) -> tuple[int, ...]:
        """Cells per axis of each level: ``floor(base · b^l)``, with a 1e-6 tolerance so
        that float rounding cannot drop a level by one (the last level is exactly
        ``max_resolution``)."""
        b = self.growth
        res = [int(math.floor(self.base_resolution * b ** level + 1e-6)) for level in range(self.n_levels)]
        if self.n_levels > 1:
            res[-1] = self.max_resolution
        return tuple(res)

    @functools.cached_property
    def hashed(self) -> tuple[bool, ...]:
        """Per level: True when ``(res+1)^dim > 2^log2_hashmap_size`` (the level is hashed)."""
        cap = 1 << self.log2_hashmap_size
        return tuple((r + 1) ** self.dim > cap for r in self.resolutions)

    @functools.cached_property
    def level_rows(self) -> tuple[int, ...]:
        """Rows of each level: ``(res+1)^dim`` when dense, ``2^log2_hashmap_size`` when hashed."""
        cap = 1 << self.log2_hashmap_size
        return tuple(cap if h else (r + 1) ** self.dim for r, h in zip(self.resolutions, self.hashed))

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Row offset of each level in the flat table, length L+1 (last = :attr:`n_params`)."""
        out = [0]
        for rows in self.level_rows:
            out.append(out[-1] + rows)
        return tuple(out)

    @property
    def n_params(self) -> int:
        """Rows of the table (each row holds F features)."""
        return self.offsets[-1]

    @property
    def out_dim(self) -> int:
        """Width of the encoding, L·F."""
        return self.n_levels * self.n_features


def init_table(spec: GridSpec, scale: float = 1e-4, generator: torch.Generator | None = None, *,
               planes: int | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
    """A table initialised uniformly in ``(-scale, scale)``.

    Args:
        spec: the grid.
        scale: half-width of the uniform distribution.
        generator: optional RNG (on ``device``) for reproducible tables.
        planes: None for one grid (``[n_params, F]``), or the number of planes (3 for a
            tri-plane) for a stacked table ``[planes, n_params, F]``.
        dtype: float32 or float16.
        device: where to create it (default: the current default device).

    Returns:
        ``[n_params, F]`` or ``[planes, n_params, F]`` of ``dtype``.
    """
    shape = (spec.n_params, spec.n_features) if planes is None else (planes, spec.n_params, spec.n_features)
    table = torch.rand(shape, generator=generator, dtype=torch.float32, device=device)
    return ((table * 2 - 1) * scale).to(dtype)


# ----------------------------------------------------------------------------------------
# torch reference


def _compute_dtype(x: Tensor, tables: Tensor) -> torch.dtype:
    dtype = torch.promote_types(x.dtype, tables.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _outer(pairs: list[Tensor], op) -> Tensor:
    """Combine per-axis corner pairs ``[P, N, 2]`` into ``[P, N, 2^dim]`` with ``op``,
    corner ``c`` using offset bit ``(c >> d) & 1`` on axis ``d`` (axis 0 fastest)."""
    out = pairs[0]
    for d in range(1, len(pairs)):
        out = op(pairs[d].unsqueeze(-1), out.unsqueeze(-2)).flatten(-2)
    return out


def _gather_level(x: Tensor, level_table: Tensor, spec: GridSpec, level: int) -> Tensor:
    """One level by the gather formula (hashed levels; every level in the oracle).

    Args:
        x: ``[P, N, dim]`` in [0,1].
        level_table: ``[P, level_rows[level], F]`` this level's rows of every plane.

    Returns:
        ``[P, F, N]`` interpolated features of this level (a view).
    """
    P, N, dim = x.shape
    rows, F = level_table.shape[1:]
    res = spec.resolutions[level]
    p = x * res
    corner = p.detach().floor().clamp_(0, res - 1)
    frac = p - corner                                            # [P, N, dim], in [0, 1]
    corner = corner.to(torch.int64)
    ends = torch.stack((corner, corner + 1), dim=-1)             # [P, N, dim, 2] vertex coords
    if spec.hashed[level]:
        terms = [ends[:, :, d] * HASH_PRIMES[d] for d in range(dim)]
        row = _outer(terms, torch.bitwise_xor) & ((1 << spec.log2_hashmap_size) - 1)
    else:
        terms = [ends[:, :, d] * (res + 1) ** d for d in range(dim)]
        row = _outer(terms, torch.add)                          # Σ_d i_d (res+1)^d
    row = row + torch.arange(P, device=x.device, dtype=torch.int64).view(P, 1, 1) * rows  # [P, N, C]
    w = _outer([torch.stack((1 - frac[:, :, d], frac[:, :, d]), dim=-1) for d in range(dim)], torch.mul)
    feats = level_table.reshape(P * rows, F).index_select(0, row.reshape(-1)).view(P, N, 1 << dim, F)
    out = feats[:, :, 0] * w[:, :, 0:1]
    for c in range(1, 1 << dim):
        out = out + feats[:, :, c] * w[:, :, c:c + 1]
    return out.transpose(1, 2)


def _sample_dense_level(x: Tensor, level_table: Tensor, res: int) -> Tensor:
    """One dense level by ``grid_sample``.

    Args:
        x: ``[P, N, dim]`` in [0,1].
        level_table: ``[P, (res+1)^dim, F]`` this level's rows of every plane.

    Returns:
        ``[P, F, N]``.
    """
    P, N, dim = x.shape
    F = level_table.shape[-1]
    image = level_table.view(P, *([res + 1] * dim), F).movedim(-1, 1)  # [P, F, (res+1)...] i_0 last
    grid = (x * 2 - 1).view(P, *([1] * (dim - 1)), N, dim)
    out = nnf.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(P, F, N)


class _PointMajor(torch.autograd.Function):
    """``[C, N]`` → contiguous ``[N, C]``, with a backward that makes the gradient a
    contiguous ``[C, N]`` in one copy (so each level's slice of it is contiguous for its own
    backward, instead of being gathered with stride C once per level)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.t().contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.t().contiguous()


def _encode_planes(x: Tensor, tables: Tensor, spec: GridSpec, *, reference: bool = False) -> Tensor:
    """Encode ``P`` independent grids of the same spec at once.

    Args:
        x: ``[P, N, dim]`` coordinates (clamped into [0,1]).
        tables: ``[P, n_params, F]``.
        reference: use the gather formula for dense levels too (the test oracle).

    Returns:
        ``[N, P·L·F]`` contiguous (plane-major, then level-major), in the compute dtype.
    """
    dtype = _compute_dtype(x, tables)
    x = x.to(dtype).clamp(0.0, 1.0)
    per_level = tables.to(dtype).split(spec.level_rows, dim=1)
    outs = []
    for level in range(spec.n_levels):
        if spec.hashed[level] or reference:
            outs.append(_gather_level(x, per_level[level], spec, level))
        else:
            outs.append(_sample_dense_level(x, per_level[level], spec.resolutions[level]))
    P, N = x.shape[:2]
    # Stack in the natural [P, L, F, N] layout and transpose once (cheaper than stacking views).
    return _PointMajor.apply(torch.stack(outs, dim=1).view(P * spec.out_dim, N))


def _check_x(x: Tensor, dim: int, what: str) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise InputError(f"{what} must have shape [N, {dim}], got {list(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point tensor, got {x.dtype}")


def _check_table(table: Tensor, spec: GridSpec, planes: int | None) -> None:
    want = [spec.n_params, spec.n_features] if planes is None else [planes, spec.n_params, spec.n_features]
    if list(table.shape) != want:
        raise InputError(f"grid table must have shape {want} for {spec}, got {list(table.shape)}")
    if not table.is_floating_point():
        raise InputError(f"grid table must be float32 or float16, got {table.dtype}")


def _grid_encode_torch(x: Tensor, table: Tensor, spec: GridSpec) -> Tensor:
    return _encode_planes(x.unsqueeze(0), table.unsqueeze(0), spec)


def _triplane_encode_torch(xyz: Tensor, tables: Tensor, spec: GridSpec) -> Tensor:
    axes = torch.tensor(TRIPLANE_AXES, device=xyz.device)
    x = xyz[:, axes].transpose(0, 1)                             # [3, N, 2]
    return _encode_planes(x, tables, spec)


def encode_reference(x: Tensor, tables: Tensor, spec: GridSpec) -> Tensor:
    """The encoding of ``P`` grids by the plain gather formula on every level (test oracle).

    Args:
        x: ``[P, N, dim]`` in [0,1].
        tables: ``[P, n_params, F]``.

    Returns:
        ``[N, P·L·F]`` (plane-major, then level-major), float32 (float64 for float64 inputs).
    """
    return _encode_planes(x, tables, spec, reference=True)


# ----------------------------------------------------------------------------------------
# public ops


def grid_encode(x: Tensor, table: Tensor, spec: GridSpec, backend: str = "auto") -> Tensor:
    """Multi-resolution grid encoding of points.

    Args:
        x: ``[N, dim]`` float, coordinates in ``[0, 1]^dim`` (values outside are clamped).
        table: ``[spec.n_params, F]`` float32 or float16 (see :func:`init_table`).
        spec: the grid (``spec.dim`` must equal ``x.shape[1]``).
        backend: ``"auto"``, ``"torch"`` or another registered backend
            (:func:`synctalk.ops.available`).

    Returns:
        ``[N, L·F]`` float32 (float64 when ``x`` or ``table`` is float64), level-major.
        Differentiable w.r.t. ``table`` and ``x``.
    """
    _check_x(x, spec.dim, "grid_encode x")
    _check_table(table, spec, None)
    return resolve("grid_encode", backend)(x, table, spec)


def triplane_encode(xyz: Tensor, tables: Tensor, spec: GridSpec, backend: str = "auto") -> Tensor:
    """Tri-plane encoding: three 2-D grids on the (x,y), (y,z) and (x,z) planes.

    Args:
        xyz: ``[N, 3]`` float, points in ``[0, 1]^3`` (values outside are clamped).
        tables: ``[3, spec.n_params, F]`` float32 or float16, planes in
            :data:`TRIPLANE_AXES` order.
        spec: the per-plane grid; ``spec.dim`` must be 2.
        backend: as for :func:`grid_encode`.

    Returns:
        ``[N, 3·L·F]`` float32 (float64 for float64 inputs): plane (x,y)'s L·F features,
        then (y,z)'s, then (x,z)'s, each level-major. Differentiable w.r.t. ``tables``
        and ``xyz``.
    """
    if spec.dim != 2:
        raise InputError(f"triplane_encode needs a 2-D GridSpec, got dim={spec.dim}")
    _check_x(xyz, 3, "triplane_encode xyz")
    _check_table(tables, spec, 3)
    return resolve("triplane_encode", backend)(xyz, tables, spec)


class GridEncoder(nn.Module):
    """A multi-resolution grid with its table as a parameter.

    Args:
        spec: the grid.
        backend: op backend used in :meth:`forward`.
        init_scale, generator, dtype: as for :func:`init_table`.

    Shapes: ``forward(x [N, dim] in [0,1]) -> [N, out_dim]`` with ``out_dim = L·F``.
    """

    def __init__(self, spec: GridSpec, backend: str = "auto", *, init_scale: float = 1e-4,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.backend = backend
        self.table = nn.Parameter(init_table(spec, init_scale, generator, dtype=dtype))

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return grid_encode(x, self.table, self.spec, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.spec}, backend={self.backend!r}"


class TriPlaneEncoder(nn.Module):
    """Three 2-D grids on the (x,y), (y,z), (x,z) planes; tables ``[3, n_params, F]``.

    Args:
        spec2d: the per-plane grid (``dim`` = 2).
        backend: op backend used in :meth:`forward`.
        init_scale, generator, dtype: as for :func:`init_table`.

    Shapes: ``forward(xyz [N, 3] in [0,1]^3) -> [N, out_dim]`` with ``out_dim = 3·L·F``.
    """

    def __init__(self, spec2d: GridSpec, backend: str = "auto", *, init_scale: float = 1e-4,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if spec2d.dim != 2:
            raise InputError(f"TriPlaneEncoder needs a 2-D GridSpec, got dim={spec2d.dim}")
        self.spec = spec2d
        self.backend = backend
        self.tables = nn.Parameter(init_table(spec2d, init_scale, generator, planes=3, dtype=dtype))

    @property
    def out_dim(self) -> int:
        return 3 * self.spec.out_dim

    def forward(self, xyz: Tensor) -> Tensor:
        return triplane_encode(xyz, self.tables, self.spec, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.spec}, backend={self.backend!r}"


register_backend("grid_encode", "torch", _grid_encode_torch)
register_backend("triplane_encode", "torch", _triplane_encode_torch)

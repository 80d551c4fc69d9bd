"""The inference loop over *alive* rays (instant-NGP style): a few samples per ray per round.

Instead of marching every sample of every ray up front (:func:`~synctalk.ops.raymarch.march_rays`)
and then compositing them all, inference keeps a set of alive rays and, each round,

1. :func:`march_next` gives every alive ray its next ``≤ k`` occupied samples,
2. the caller evaluates the field on them,
3. :func:`composite_step` composites them front to back into the rays' accumulators
   (:class:`AliveState`), stopping within a ray once its transmittance falls below
   ``early_stop``,
4. :func:`compact` drops the rays that are done (transmittance below ``early_stop``, or no
   candidate interval left),

until no ray is alive::

    state = AliveState.create(N, n_color=3, device=rays_o.device)
    alive = torch.arange(N, device=rays_o.device)
    while alive.numel():
        step = march_next(rays_o, rays_d, t_near, t_far, state.next_index, alive, occupied, aabb,
                          n_samples, k)
        sigmas, rgbs = field(step, alive)                   # [A, k], [A, k, 3]
        composite_step(sigmas, rgbs, step, alive, state, early_stop)
        alive = compact(alive, state.transmittance, state.next_index, n_samples, early_stop)
    color = state.color + (1 - state.opacity)[:, None] * bg

Samples are exactly those of ``march_rays(..., perturb=False)`` (same intervals, same
midpoint occupancy test, same order), so the rounds of a ray concatenated are its
``march_rays`` samples, and with ``early_stop = 0`` the accumulators equal
:func:`~synctalk.ops.composite.composite` over all of them (up to fp32 round-off).

Per-sample math is :func:`~synctalk.ops.composite.composite`'s: ``α = 1 − exp(−σ δ)``,
``w = T α`` with ``T`` the transmittance before the sample. Within a round a ray's ``T`` is
its stored transmittance times ``exp(−Σ σ δ)`` over the round's earlier samples (that sum in
float64). A sample *contributes* when ``T ≥ early_stop`` before it and every earlier sample
of the round contributed; samples after the first that does not contribute get weight 0 and
change nothing. Inference only: nothing here is differentiable.

Both ops are dispatched (:mod:`synctalk.ops.backend`): ``"torch"`` (this module) and
``"native"`` (``cuda_ext/include/synctalk/alive.h``, OpenMP loops and CUDA kernels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from synctalk.errors import InputError
from synctalk.ops.backend import register_backend, resolve
from synctalk.ops.raymarch import _check_aabb, _check_rays, candidate_intervals, occupied_at


@dataclass
class StepSamples:
    """One round's samples of ``A`` alive rays, in fixed-stride rows (from :func:`march_next`).

    Attributes:
        t_starts: ``[A, k]`` float, interval starts (units of ``|rays_d|``); row ``a`` holds
            alive ray ``a``'s ``count[a]`` samples first, in ``t`` order, then zeros.
        t_ends: ``[A, k]`` float, interval ends (zeros past ``count``).
        count: ``[A]`` int64, samples of each alive ray this round (``0 ≤ count ≤ k``).
    """

    t_starts: Tensor
    t_ends: Tensor
    count: Tensor

    @property
    def k(self) -> int:
        """Row stride: the most samples a ray gets this round."""
        return int(self.t_starts.shape[1])

    @property
    def n_alive(self) -> int:
        """A, the number of alive rays of the round."""
        return int(self.t_starts.shape[0])

    @property
    def valid(self) -> Tensor:
        """``[A, k]`` bool, which entries are samples (``j < count[a]``)."""
        return torch.arange(self.k, device=self.count.device) < self.count.unsqueeze(1)

    @property
    def t_mid(self) -> Tensor:
        """``[A, k]`` interval midpoints, where the field is evaluated."""
        return (self.t_starts + self.t_ends) * 0.5

    @property
    def deltas(self) -> Tensor:
        """``[A, k]`` interval lengths."""
        return self.t_ends - self.t_starts


@dataclass
class AliveState:
    """Per-ray state of the alive-ray loop for ``N`` rays (updated in place by the ops).

    Attributes:
        transmittance: ``[N]`` float, transmittance after the samples composited so far (1
            at the start).
        opacity: ``[N]`` float, ``Σ w``.
        depth: ``[N]`` float, ``Σ w · t_mid`` (units of ``|rays_d|``).
        color: ``[N, C]`` float, ``Σ w · rgb`` (no background; add ``(1 − opacity) · bg``).
        next_index: ``[N]`` int64, the candidate interval (``0 … n_samples``) each ray's
            marching resumes at.
        extras: ``[N, E]`` float ``Σ w · extra`` of extra per-sample channels, or None.

    All float tensors share one dtype (float32 or float64) and are contiguous.
    """

    transmittance: Tensor
    opacity: Tensor
    depth: Tensor
    color: Tensor
    next_index: Tensor
    extras: Tensor | None = None

    @staticmethod
    def create(n_rays: int, n_color: int = 3, n_extras: int = 0, *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> "AliveState":
        """Fresh state: transmittance 1, sums 0, ``next_index`` 0, ``extras`` only when
        ``n_extras > 0``."""
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"AliveState: dtype must be float32 or float64, got {dtype}")
        zeros = dict(device=device, dtype=dtype)
        return AliveState(transmittance=torch.ones(n_rays, **zeros), opacity=torch.zeros(n_rays, **zeros),
                          depth=torch.zeros(n_rays, **zeros), color=torch.zeros(n_rays, n_color, **zeros),
                          next_index=torch.zeros(n_rays, device=device, dtype=torch.int64),
                          extras=torch.zeros(n_rays, n_extras, **zeros) if n_extras > 0 else None)

    @property
    def n_rays(self) -> int:
        """N."""
        return int(self.transmittance.shape[0])


# ----------------------------------------------------------------------------------------
# checks (shared by every backend)


def _check_index(name: str, t: Tensor, length: int | None = None) -> None:
    if t.dtype != torch.int64 or t.dim() != 1 or (length is not None and t.shape[0] != length):
        want = f"[{length}]" if length is not None else "1-D"
        raise InputError(f"{name} must be a {want} int64 tensor, got {t.dtype} {list(t.shape)}"
                         f"{' (convert with .long())' if t.dtype != torch.int64 else ''}")


def _check_alive_rows(op: str, alive: Tensor, n_rays: int) -> None:
    """Rows in range (checked on CPU tensors only: no device sync)."""
    if alive.is_cpu and alive.numel() and (int(alive.min()) < 0 or int(alive.max()) >= n_rays):
        raise InputError(f"{op}: alive holds rows outside [0, {n_rays}) "
                         f"(min {int(alive.min())}, max {int(alive.max())})")


def _check_march_next(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, next_index: Tensor,
                      alive: Tensor, occupied: Tensor | None, aabb: Tensor, n_samples: int, k: int) -> None:
    _check_rays(rays_o, rays_d)
    _check_aabb(aabb)
    N = rays_o.shape[0]
    if t_near.shape != (N,) or t_far.shape != (N,):
        raise InputError(f"march_next: t_near and t_far must have shape [{N}], got "
                         f"{list(t_near.shape)} and {list(t_far.shape)}")
    if int(n_samples) != n_samples or n_samples < 1 or int(k) != k or k < 1:
        raise InputError(f"march_next: n_samples and k must be integers ≥ 1, got {n_samples} and {k}")
    _check_index("march_next: next_index", next_index, N)
    if not next_index.is_contiguous():
        raise InputError("march_next: next_index is updated in place and must be contiguous "
                         "(pass AliveState.next_index, or .contiguous())")
    _check_index("march_next: alive", alive)
    if occupied is not None and (occupied.dim() != 3 or len(set(occupied.shape)) != 1):
        raise InputError(f"march_next: occupied must be a cubic [R, R, R] grid, got {list(occupied.shape)}")
    _check_alive_rows("march_next", alive, N)
    if next_index.is_cpu and N and (int(next_index.min()) < 0 or int(next_index.max()) > n_samples):
        raise InputError(f"march_next: next_index must lie in [0, {n_samples}] (n_samples)")


def _check_state(op: str, state: AliveState) -> None:
    N = state.n_rays
    dtype = state.transmittance.dtype
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"{op}: state.transmittance must be float32 or float64, got {dtype}")
    shapes = {"transmittance": (N,), "opacity": (N,), "depth": (N,)}
    tensors = {"transmittance": state.transmittance, "opacity": state.opacity, "depth": state.depth,
               "color": state.color}
    if state.extras is not None:
        tensors["extras"] = state.extras
    for name, t in tensors.items():
        if name in shapes and t.shape != shapes[name]:
            raise InputError(f"{op}: state.{name} must have shape [{N}], got {list(t.shape)}")
        if name in ("color", "extras") and (t.dim() != 2 or t.shape[0] != N):
            raise InputError(f"{op}: state.{name} must have shape [{N}, channels], got {list(t.shape)}")
        if t.dtype != dtype or not t.is_contiguous() or t.device != state.transmittance.device:
            raise InputError(f"{op}: state.{name} is updated in place and must be a contiguous {dtype} "
                             f"tensor on {state.transmittance.device} like state.transmittance, got "
                             f"{t.dtype} on {t.device}{'' if t.is_contiguous() else ', not contiguous'} "
                             f"(make the state with AliveState.create)")


def _check_composite_step(sigmas: Tensor, rgbs: Tensor | None, samples: StepSamples, alive: Tensor,
                          state: AliveState, early_stop: float, extras: Tensor | None) -> None:
    op = "composite_step"
    A, k = samples.t_starts.shape if samples.t_starts.dim() == 2 else (-1, -1)
    if samples.t_starts.dim() != 2 or samples.t_ends.shape != samples.t_starts.shape:
        raise InputError(f"{op}: samples.t_starts/t_ends must both be [A, k], got "
                         f"{list(samples.t_starts.shape)} and {list(samples.t_ends.shape)}")
    _check_index(f"{op}: samples.count", samples.count, A)
    _check_index(f"{op}: alive", alive, A)
    if sigmas.shape != (A, k):
        raise InputError(f"{op}: sigmas must have shape [{A}, {k}] (like samples.t_starts), got {list(sigmas.shape)}")
    for name, t in (("sigmas", sigmas), ("rgbs", rgbs), ("extras", extras), ("samples.t_starts", samples.t_starts),
                    ("samples.t_ends", samples.t_ends)):
        if t is not None and not t.is_floating_point():
            raise InputError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    _check_state(op, state)
    if rgbs is not None:
        C = state.color.shape[1]
        if rgbs.shape != (A, k, C):
            raise InputError(f"{op}: rgbs must have shape [{A}, {k}, {C}] (state.color has {C} channels), "
                             f"got {list(rgbs.shape)}")
        E = 0 if state.extras is None else state.extras.shape[1]
        if (extras is None) != (state.extras is None) or (extras is not None and extras.shape != (A, k, E)):
            raise InputError(f"{op}: extras must be [{A}, {k}, E] exactly when state.extras is [N, E] "
                             f"(state.extras: {None if state.extras is None else list(state.extras.shape)}, "
                             f"extras: {None if extras is None else list(extras.shape)})")
    if not (math.isfinite(early_stop) and early_stop >= 0):
        raise InputError(f"{op}: early_stop must be a finite number ≥ 0, got {early_stop}")
    _check_alive_rows(op, alive, state.n_rays)


# ----------------------------------------------------------------------------------------
# torch reference


@torch.no_grad()
def _march_next_torch(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, next_index: Tensor,
                      alive: Tensor, occupied: Tensor | None, aabb: Tensor, n_samples: int, k: int) -> StepSamples:
    K = int(n_samples)
    o, d, tn, tf = rays_o[alive], rays_d[alive], t_near[alive], t_far[alive]
    A = o.shape[0]
    t0, t1 = candidate_intervals(tn, tf, K)                                         # march_rays' own
    start = next_index[alive]
    keep = ((tf > tn).unsqueeze(1) & (t1 > t0)
            & (torch.arange(K, device=rays_o.device) >= start.unsqueeze(1)))        # [A, K]
    if occupied is not None:
        keep &= occupied_at(o, d, (t0 + t1) * 0.5, occupied, aabb)
    rank = torch.cumsum(keep, 1)                                                    # kept so far, inclusive
    take = keep & (rank <= k)
    count = take.sum(1)
    # Resume after the k-th kept candidate; a ray with fewer than k left is through.
    kth = (keep & (rank == k)).to(torch.int8).argmax(1)
    nxt = torch.where(rank[:, -1] >= k, kth + 1, torch.full_like(kth, K))
    next_index[alive] = nxt
    slot = torch.where(take, rank - 1, torch.full_like(rank, k))                    # k: discarded column
    zeros = t0.new_zeros(A, k + 1)
    t_starts = zeros.scatter(1, slot, torch.where(take, t0, 0.0))[:, :k]
    t_ends = zeros.scatter(1, slot, torch.where(take, t1, 0.0))[:, :k]
    return StepSamples(t_starts=t_starts.contiguous(), t_ends=t_ends.contiguous(), count=count)


@torch.no_grad()
def _composite_step_torch(sigmas: Tensor, rgbs: Tensor | None, samples: StepSamples, alive: Tensor,
                          state: AliveState, early_stop: float, extras: Tensor | None) -> Tensor:
    dtype = state.transmittance.dtype
    valid = samples.valid
    t0, t1 = samples.t_starts.to(dtype), samples.t_ends.to(dtype)                   # in the state's dtype
    s = torch.where(valid, sigmas.to(dtype) * (t1 - t0), 0.0)                     # [A, k] σ δ
    s64 = s.to(torch.float64)
    inclusive = torch.cumsum(s64, 1)
    T0 = state.transmittance[alive]
    T = T0.unsqueeze(1) * torch.exp(-(inclusive - s64).to(dtype))                   # before each sample
    contrib = torch.cumprod((valid & (T >= early_stop)).to(torch.int8), 1).to(torch.bool)
    weights = torch.where(contrib, T * -torch.expm1(-s), 0.0)
    if rgbs is None:
        return weights
    n_contrib = contrib.sum(1)
    last = inclusive.gather(1, (n_contrib - 1).clamp_min(0).unsqueeze(1))[:, 0]
    optical = torch.where(n_contrib > 0, last, 0.0)
    state.transmittance[alive] = T0 * torch.exp(-optical.to(dtype))

    def wsum(values: Tensor) -> Tensor:  # Σ_j w_j values_j over contributing samples
        return torch.where(contrib.unsqueeze(-1), weights.unsqueeze(-1) * values.to(dtype), 0.0).sum(1)

    state.opacity[alive] += weights.sum(1)
    state.depth[alive] += wsum(((t0 + t1) * 0.5).unsqueeze(-1))[:, 0]
    state.color[alive] += wsum(rgbs)
    if extras is not None:
        state.extras[alive] += wsum(extras)
    return weights


# ----------------------------------------------------------------------------------------
# public ops


def march_next(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, next_index: Tensor,
               alive: Tensor, occupied: Tensor | None, aabb: Tensor, n_samples: int, k: int, *,
               backend: str = "auto") -> StepSamples:
    """The next ``≤ k`` occupied samples of each alive ray (``march_rays``' samples, in order).

    Each ray's ``[t_near, t_far]`` is cut into ``n_samples`` equal intervals (the candidates
    of :func:`~synctalk.ops.raymarch.march_rays`; a candidate is kept when its midpoint lies
    in an occupied cell). For each alive ray the candidates from ``next_index[ray]`` on are
    scanned until ``k`` are kept or none are left.

    Args:
        rays_o, rays_d: ``[N, 3]`` float rays.
        t_near, t_far: ``[N]`` from :func:`~synctalk.ops.raymarch.ray_aabb` (rays with
            ``t_far ≤ t_near`` have no samples).
        next_index: ``[N]`` int64, contiguous, each ray's first candidate not scanned yet
            (``0 … n_samples``; 0 at the start). **Updated in place** at the alive rows: the
            candidate after the ``k``-th kept one, or ``n_samples`` when fewer than ``k`` were
            left (the ray is through).
        alive: ``[A]`` int64, distinct rows of the ``N`` rays to march.
        occupied: ``[R, R, R]`` bool occupancy over ``aabb`` (``[ix, iy, iz]``) or None (keep
            every candidate).
        aabb: ``[6]`` box of the grid.
        n_samples: candidate intervals per ray (``march_rays``' ``n_samples``).
        k: the most samples a ray gets in this call (≥ 1).
        backend: ``"auto"``, ``"torch"`` or ``"native"``.

    Returns:
        :class:`StepSamples` with ``[A, k]`` rows in the rays' dtype (valid entries first,
        zeros after) and ``count [A]`` int64. Not differentiable.
    """
    _check_march_next(rays_o, rays_d, t_near, t_far, next_index, alive, occupied, aabb, n_samples, k)
    return resolve("march_next", backend)(rays_o, rays_d, t_near, t_far, next_index, alive, occupied, aabb,
                                          int(n_samples), int(k))


def composite_step(sigmas: Tensor, rgbs: Tensor | None, samples: StepSamples, alive: Tensor,
                   state: AliveState, early_stop: float, *, extras: Tensor | None = None,
                   backend: str = "auto") -> Tensor:
    """Composite one round's samples of the alive rays into their accumulators, front to back.

    Per ray, sample ``j`` (``j < count``) reached with transmittance ``T_j`` (the stored
    transmittance times ``exp(−Σ_{i<j} σ_i δ_i)``) contributes when ``T_j ≥ early_stop`` and
    sample ``j − 1`` contributed: weight ``w_j = T_j (1 − exp(−σ_j δ_j))``. The state gets
    ``opacity += Σ w``, ``depth += Σ w t_mid``, ``color += Σ w rgb``, ``extras += Σ w extra``
    and the transmittance after the last contributing sample (below ``early_stop`` when the
    ray stopped in this round).

    Args:
        sigmas: ``[A, k]`` float densities ≥ 0 (per unit of ``t``); entries past ``count``
            are ignored.
        rgbs: ``[A, k, C]`` float colours, or None to only compute the weights (the state is
            then left untouched: a probe that tells which samples need a colour).
        samples: this round's :class:`StepSamples` (from :func:`march_next`).
        alive: ``[A]`` int64 distinct rows of the state, as given to :func:`march_next`.
        state: :class:`AliveState` of the ``N`` rays, updated in place.
        early_stop: transmittance below which a ray stops (≥ 0; 0 composites every sample).
        extras: ``[A, k, E]`` float extra channels, exactly when ``state.extras`` is ``[N, E]``.
        backend: ``"auto"``, ``"torch"`` or ``"native"``.

    Returns:
        ``[A, k]`` weights in the state's dtype (0 where a sample did not contribute or is
        past ``count``). Not differentiable.
    """
    _check_composite_step(sigmas, rgbs, samples, alive, state, float(early_stop), extras)
    return resolve("composite_step", backend)(sigmas, rgbs, samples, alive, state, float(early_stop),
                                              extras if rgbs is not None else None)


def compact(alive: Tensor, transmittance: Tensor, next_index: Tensor, n_samples: int,
            early_stop: float) -> Tensor:
    """The rows of ``alive`` still alive: transmittance ≥ ``early_stop`` and candidates left.

    Args:
        alive: ``[A]`` int64 rows.
        transmittance: ``[N]`` (``AliveState.transmittance``).
        next_index: ``[N]`` int64 (``AliveState.next_index``).
        n_samples: candidate intervals per ray.
        early_stop: the threshold given to :func:`composite_step`.

    Returns:
        ``[A']`` int64, ``A' ≤ A``, in the order of ``alive``.
    """
    keep = (transmittance[alive] >= early_stop) & (next_index[alive] < n_samples)
    return alive[keep]


register_backend("march_next", "torch", _march_next_torch)
register_backend("composite_step", "torch", _composite_step_torch)

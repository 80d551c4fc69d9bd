"""Volume compositing of packed samples (emission–absorption, piecewise-constant density).

For sample ``i`` of a ray with density ``σ_i`` over an interval of length ``δ_i``:
``α_i = 1 - exp(-σ_i δ_i)``, transmittance before it ``T_i = exp(-Σ_{j<i} σ_j δ_j)`` (over
the same ray), weight ``w_i = T_i α_i``. Per ray: opacity ``Σ w``, depth ``Σ w t_mid``,
colour ``Σ w rgb (+ (1 - opacity) bg)`` and any extra channels ``Σ w extra``.

The per-ray exclusive prefix sums are a segment scan: one global cumulative sum over all
packed samples minus its value at each ray's first sample, done in float64 so that the
cancellation costs no precision however many samples precede a ray. Per-ray sums use
``index_add`` over the sorted ray indices. Everything is differentiable by autograd.
"""
from __future__ import annotations

import torch
from torch import Tensor

from synctalk.errors import InputError
from synctalk.ops.backend import register_backend, resolve
from synctalk.ops.raymarch import PackedSamples


def segment_sum(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Sum per ray of packed per-sample values.

    Args:
        values: ``[S, ...]`` per-sample values.
        ray_indices: ``[S]`` int64 ray of each sample.
        n_rays: N.

    Returns:
        ``[N, ...]`` sums (0 for rays without samples); differentiable w.r.t. ``values``.
    """
    out = values.new_zeros((n_rays, *values.shape[1:]))
    return out.index_add(0, ray_indices, values)


def exclusive_segment_cumsum(values: Tensor, samples: PackedSamples) -> Tensor:
    """Per-ray exclusive prefix sums of packed ``values``: ``out_i = Σ_{j<i, same ray} v_j``.

    Args:
        values: ``[S]`` float.
        samples: the packing (``ray_indices``, ``offsets``).

    Returns:
        ``[S]`` in ``values``' dtype (computed in float64); differentiable.
    """
    v64 = values.to(torch.float64)
    exclusive = torch.cumsum(v64, 0) - v64
    first = exclusive[samples.offsets[samples.ray_indices]]
    return (exclusive - first).to(values.dtype)


def _composite_torch(sigmas: Tensor, rgbs: Tensor, samples: PackedSamples, extras: Tensor | None,
                     bg: Tensor | None) -> dict[str, Tensor]:
    tau = sigmas * samples.deltas.to(sigmas.dtype)
    transmittance = torch.exp(-exclusive_segment_cumsum(tau, samples))
    alphas = -torch.expm1(-tau)
    weights = transmittance * alphas
    rays, N = samples.ray_indices, samples.n_rays
    opacity = segment_sum(weights, rays, N)
    out = {
        "weights": weights,
        "transmittance": transmittance,
        "alphas": alphas,
        "opacity": opacity,
        "depth": segment_sum(weights * samples.t_mid.to(weights.dtype), rays, N),
        "color": segment_sum(weights.unsqueeze(-1) * rgbs, rays, N),
    }
    if bg is not None:
        out["color"] = out["color"] + (1 - opacity).unsqueeze(-1) * bg
    if extras is not None:
        out["extras"] = segment_sum(weights.unsqueeze(-1) * extras, rays, N)
    return out


def composite(sigmas: Tensor, rgbs: Tensor, samples: PackedSamples, *, extras: Tensor | None = None,
              bg: Tensor | None = None, backend: str = "auto") -> dict[str, Tensor]:
    """Composite packed samples along their rays.

    Args:
        sigmas: ``[S]`` float densities ≥ 0, per unit of ``t`` (units of ``|rays_d|``).
        rgbs: ``[S, C]`` float per-sample colours.
        samples: :class:`PackedSamples` (``ray_indices``, ``t_starts``, ``t_ends``,
            ``offsets``, ``n_rays``).
        extras: optional ``[S, K]`` per-sample channels summed with the same weights
            (e.g. ambient/audio attention, uncertainty).
        bg: optional background ``[N, C]`` (or ``[C]``, broadcast) blended as
            ``(1 - opacity) · bg``.
        backend: ``"auto"``, ``"torch"`` or another registered backend.

    Returns:
        dict with ``weights [S]`` (``T_i α_i``), ``transmittance [S]`` (``T_i``, before
        sample i), ``alphas [S]``, ``opacity [N]``, ``depth [N]`` (``Σ w t_mid``, 0 for
        empty rays), ``color [N, C]``, and ``extras [N, K]`` only when ``extras`` is
        given. Differentiable w.r.t. ``sigmas``, ``rgbs``, ``extras`` and ``bg``.
    """
    S = samples.n_samples
    if sigmas.shape != (S,):
        raise InputError(f"sigmas must have shape [{S}] (one per packed sample), got {list(sigmas.shape)}")
    if rgbs.dim() != 2 or rgbs.shape[0] != S:
        raise InputError(f"rgbs must have shape [{S}, C], got {list(rgbs.shape)}")
    if extras is not None and (extras.dim() != 2 or extras.shape[0] != S):
        raise InputError(f"extras must have shape [{S}, K], got {list(extras.shape)}")
    if bg is not None and bg.shape not in ((samples.n_rays, rgbs.shape[1]), (rgbs.shape[1],)):
        raise InputError(f"bg must have shape [{samples.n_rays}, {rgbs.shape[1]}] or "
                         f"[{rgbs.shape[1]}], got {list(bg.shape)}")
    return resolve("composite", backend)(sigmas, rgbs, samples, extras, bg)


def early_termination_mask(transmittance: Tensor, threshold: float = 1e-4) -> Tensor:
    """Samples an inference renderer may skip: those reached with ``T < threshold``.

    Args:
        transmittance: ``[S]`` ``T_i`` from :func:`composite`.
        threshold: transmittance below which a ray counts as terminated.

    Returns:
        ``[S]`` bool, True where the sample would be skipped. Skipping them changes each
        ray's colour/opacity by at most ``threshold`` (times the colour range).
    """
    return transmittance < threshold


register_backend("composite", "torch", _composite_torch)

"""Volume rendering of the head over a per-ray background (the torso/background colour).

:func:`render_rays`: rays in box units (:func:`synctalk.nerf.geometry.pixel_rays`) →
:func:`~synctalk.ops.raymarch.ray_aabb` → only the rays that hit the head AABB are marched
(:func:`~synctalk.ops.raymarch.march_rays`, ≤ ``n_samples`` per ray, samples only in occupied
cells) → :class:`~synctalk.nerf.field.HeadField` → :func:`~synctalk.ops.composite.composite`
over the background colour. Rays that miss the box take the background colour.

Inference (``early_stop`` given): the density part runs progressively — on each ray's
first few occupied samples, then on the next few of the rays whose transmittance is still
above ``early_stop``, and so on — so an opaque head costs a handful of density evaluations
per ray; samples reached with transmittance below ``early_stop``
(:func:`~synctalk.ops.composite.early_termination_mask`) get no colour evaluation. Skipping
them changes a pixel by at most ``early_stop``.

Training may *prune* the same way (``prune``): a gradient-free progressive density pass finds
each ray's termination point and only the samples before it are evaluated with gradients.

:func:`render_rays_alive` renders the same inference image with the alive-ray loop of
:mod:`synctalk.ops.alive` instead: no sample is marched before it is needed; each round
every alive ray gets its next few occupied samples (:func:`~synctalk.ops.alive.march_next`),
the density is evaluated on them, a weights-only :func:`~synctalk.ops.alive.composite_step`
tells which need a colour (weight > 0, i.e. reached with transmittance ≥ ``early_stop``),
a second one composites them, and finished rays are dropped
(:func:`~synctalk.ops.alive.compact`).

Outputs per ray: ``rgb [R, 3]`` (head over background), ``opacity [R]`` (head alpha),
``depth [R]`` (box units along the ray), ``amb_audio [R]`` / ``amb_bs [R]`` (composited
region-attention magnitudes), ``unc [R]`` (composited uncertainty); ``n_samples`` (int);
``timings`` ``{"march", "field", "composite"}`` seconds when asked for.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from synctalk.errors import InputError
from synctalk.nerf.field import FrameConditioning, HeadField
from synctalk.nerf.geometry import AABB
from synctalk.nerf.occupancy import OccupancyGrid
from synctalk.ops.alive import AliveState, compact, composite_step, march_next
from synctalk.ops.composite import composite, early_termination_mask
from synctalk.ops.raymarch import PackedSamples, march_rays, ray_aabb


@contextmanager
def _timed(timings: dict | None, key: str, device: torch.device) -> Iterator[None]:
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t


def _hit_box(rays_o: torch.Tensor, rays_d: torch.Tensor, backend: str):
    """The rays that hit the head AABB: ``(aabb [6], hit [R] bool, hit_idx [H], t_near [H],
    t_far [H])`` (the entry/exit ``t`` of the hitting rays only)."""
    aabb = torch.tensor(AABB, device=rays_o.device, dtype=rays_o.dtype)
    t_near, t_far = ray_aabb(rays_o, rays_d, aabb, backend=backend)
    hit = t_far > t_near
    hit_idx = hit.nonzero()[:, 0]
    return aabb, hit, hit_idx, t_near[hit_idx], t_far[hit_idx]


def render_rays(field: HeadField, occ: OccupancyGrid, rays_o: torch.Tensor, rays_d: torch.Tensor,
                cond: FrameConditioning, bg: torch.Tensor, *, ray_frame: torch.Tensor | None = None,
                n_samples: int = 16, perturb: bool = False,
                generator: torch.Generator | None = None, early_stop: float | None = None,
                prune: float | None = None, backend: str = "auto",
                timings: dict | None = None) -> dict:
    """Render ``R`` rays of the head over ``bg``.

    Args:
        field, occ: the head field and its occupancy grid.
        rays_o, rays_d: ``[R, 3]`` box-unit origins and unit directions.
        cond: per-frame conditioning of ``B`` frames.
        bg: ``[R, 3]`` colour behind the head (torso over background), in [0, 1].
        ray_frame: ``[R]`` int64 row of ``cond`` for each ray (None: ``B`` = 1).
        n_samples: samples per ray before occupancy pruning.
        perturb: jitter samples within their intervals (training), drawn from ``generator``.
        early_stop: inference transmittance threshold (None: training, no termination).
        prune: training only — drop the samples a gradient-free progressive density pass
            finds behind transmittance ``prune`` before the differentiable evaluation (their
            weights are below ``prune``; None keeps every sample).
        timings: dict to add ``march``/``field``/``composite`` seconds to.

    Returns:
        See the module docstring.
    """
    device = rays_o.device
    n_rays = len(rays_o)
    with _timed(timings, "march", device):
        aabb, hit, hit_idx, t_near, t_far = _hit_box(rays_o, rays_d, backend)
        o, d = rays_o[hit_idx], rays_d[hit_idx]
        samples = march_rays(o, d, t_near, t_far, occ.occupied, aabb, n_samples,
                             perturb=perturb, generator=generator, backend=backend)
        ridx = samples.ray_indices
        xyz = o[ridx] + d[ridx] * samples.positions[:, None]
        dirs = d[ridx]
        index = None if ray_frame is None else ray_frame[hit_idx][ridx]
        if prune is not None and early_stop is None and samples.n_samples:
            samples, _, keep = _progressive_density(field, xyz.detach(), cond, index, samples, prune)
            xyz, dirs = xyz[keep], dirs[keep]
            index = None if index is None else index[keep]
    with _timed(timings, "field", device):
        if early_stop is None:
            dens = field.density(xyz, cond, index)
            sigma = dens["sigma"]
            n_s = len(sigma)
            rgb, unc = field.color(dirs, dens["geo"], cond, index)
        else:
            samples, dens, keep = _progressive_density(field, xyz, cond, index, samples, early_stop)
            xyz, dirs = xyz[keep], dirs[keep]
            index = None if index is None else index[keep]
            sigma = dens["sigma"]
            n_s = len(sigma)
            probe = composite(sigma, torch.zeros(n_s, 1, device=device), samples, backend=backend)
            live = (~early_termination_mask(probe["transmittance"], early_stop)
                    & (probe["weights"] > 0)).nonzero()[:, 0]
            rgb = torch.zeros(n_s, 3, device=device)
            unc = torch.zeros(n_s, device=device)
            if len(live):
                rgb_k, unc_k = field.color(dirs[live], dens["geo"][live], cond,
                                           None if index is None else index[live])
                rgb = rgb.index_put((live,), rgb_k.to(rgb.dtype))
                unc = unc.index_put((live,), unc_k.to(unc.dtype))
    with _timed(timings, "composite", device):
        extras = torch.stack([dens["amb_audio"].float(), dens["amb_bs"].float(), unc], -1)
        comp = composite(sigma, rgb, samples, extras=extras, bg=bg[hit_idx], backend=backend)
        out_rgb = bg.clone().to(comp["color"].dtype).index_put((hit_idx,), comp["color"])
        zeros = torch.zeros(n_rays, device=device, dtype=comp["opacity"].dtype)
        opacity = zeros.index_put((hit_idx,), comp["opacity"])
        depth = zeros.index_put((hit_idx,), comp["depth"])
        ex = torch.zeros(n_rays, 3, device=device, dtype=comp["extras"].dtype).index_put(
            (hit_idx,), comp["extras"])
    return {"rgb": out_rgb, "opacity": opacity, "depth": depth, "amb_audio": ex[:, 0],
            "amb_bs": ex[:, 1], "unc": ex[:, 2], "n_samples": n_s, "hit": hit}


def subset_samples(samples: PackedSamples, keep: torch.Tensor) -> PackedSamples:
    """The samples where ``keep [S]`` (bool) is True, re-packed (order preserved)."""
    ri = samples.ray_indices[keep]
    counts = torch.bincount(ri, minlength=samples.n_rays)
    offsets = torch.cumsum(counts, 0) - counts
    return PackedSamples(ray_indices=ri, t_starts=samples.t_starts[keep], t_ends=samples.t_ends[keep],
                         offsets=offsets, counts=counts, n_rays=samples.n_rays,
                         t_pos=None if samples.t_pos is None else samples.t_pos[keep])


@torch.no_grad()
def _progressive_density(field: HeadField, xyz: torch.Tensor, cond: FrameConditioning,
                         index: torch.Tensor | None, samples: PackedSamples, early_stop: float,
                         first: int = 2) -> tuple[PackedSamples, dict, torch.Tensor]:
    """Density of each ray's samples in rounds — its first ``first`` samples, then twice as
    many each round — until its transmittance (from the optical depth so far) drops below
    ``early_stop``.

    Returns:
        ``(evaluated samples, their density outputs, keep [S] bool over the input samples)``.
    """
    S = samples.n_samples
    device = xyz.device
    ray = samples.ray_indices
    rank = torch.arange(S, device=device) - samples.offsets[ray]
    depth_limit = -math.log(early_stop)
    tau = torch.zeros(samples.n_rays, device=device)
    keep = torch.zeros(S, dtype=torch.bool, device=device)
    parts: list[tuple[torch.Tensor, dict]] = []
    max_rank = int(samples.counts.max()) if S else 0
    r0, group = 0, first
    while r0 < max_rank:
        alive = tau < depth_limit
        sel = ((rank >= r0) & (rank < r0 + group) & alive[ray]).nonzero()[:, 0]
        r0, group = r0 + group, group * 2
        if len(sel) == 0:
            break
        out = field.density(xyz[sel], cond, None if index is None else index[sel])
        tau.index_add_(0, ray[sel], out["sigma"].float() * samples.deltas[sel].float())
        keep[sel] = True
        parts.append((sel, out))
    order = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.long, device=device)
    perm = torch.argsort(order)  # back to packed (ray, t) order
    dens = {}
    for key in ("sigma", "geo", "amb_audio", "amb_bs"):
        vals = torch.cat([p[1][key] for p in parts]) if parts else torch.zeros(0, device=device)
        dens[key] = vals[perm]
    return subset_samples(samples, keep), dens, keep


#: Samples per ray in the first round of :func:`render_rays_alive` and the most in any round
#: (the count doubles each round up to the cap).
ALIVE_FIRST_STEP = 2
ALIVE_MAX_STEP = 8


@torch.no_grad()
def render_rays_alive(field: HeadField, occ: OccupancyGrid, rays_o: torch.Tensor, rays_d: torch.Tensor,
                      cond: FrameConditioning, bg: torch.Tensor, *, early_stop: float,
                      ray_frame: torch.Tensor | None = None, n_samples: int = 16, backend: str = "auto",
                      timings: dict | None = None, first_step: int = ALIVE_FIRST_STEP,
                      max_step: int = ALIVE_MAX_STEP) -> dict:
    """Inference render of ``R`` rays of the head over ``bg`` with the alive-ray loop.

    The same image as ``render_rays(..., early_stop=early_stop)`` (the samples are
    ``march_rays``' and the compositing is the same, so pixels agree to float round-off
    except for samples after a ray's termination point: ``render_rays`` counts their tiny
    weights in the opacity, this stops at the first sample reached with transmittance below
    ``early_stop``; a pixel differs by less than ``early_stop``).

    Round ``i`` gives each alive ray its next ``min(first_step · 2^i, max_step, n_samples)``
    occupied samples. With ``first_step = 2`` and ``max_step`` a power of two (the defaults:
    2, 4, 8, 8, …) the round boundaries include ``render_rays``' (2, 6, 14, 30, …), so no ray
    gets more density evaluations than there (up to round-off at the threshold) and a ray
    that stops deep inside its samples wastes fewer than 8 instead of up to half of them.
    Colour is evaluated only on samples with a non-zero weight (as in ``render_rays``).

    Args:
        field, occ, rays_o, rays_d, cond, bg, ray_frame, n_samples, backend, timings: as
            for :func:`render_rays`.
        early_stop: transmittance below which a ray stops (> 0 for any saving; 0 composites
            every sample).
        first_step, max_step: samples per ray in the first round and the most in any round
            (integers ≥ 1).

    Returns:
        As :func:`render_rays`: ``rgb [R, 3]``, ``opacity``, ``depth``, ``amb_audio``,
        ``amb_bs``, ``unc`` ``[R]``, ``n_samples`` (density evaluations), ``hit [R]``; plus
        ``n_color_samples`` (colour evaluations) and ``rounds``.
    """
    if int(first_step) != first_step or int(max_step) != max_step or not 1 <= first_step <= max_step:
        raise InputError(f"render_rays_alive: need integers 1 ≤ first_step ≤ max_step, got "
                         f"{first_step}, {max_step}")
    device = rays_o.device
    n_rays = len(rays_o)
    with _timed(timings, "march", device):
        aabb, hit, hit_idx, tn, tf = _hit_box(rays_o, rays_d, backend)
        o, d = rays_o[hit_idx], rays_d[hit_idx]
        frame = None if ray_frame is None else ray_frame[hit_idx]
    state = AliveState.create(len(hit_idx), 3, 3, device=device)  # extras: amb_audio, amb_bs, unc
    alive = torch.arange(len(hit_idx), device=device)
    k, n_density, n_color, rounds = min(int(first_step), n_samples), 0, 0, 0
    while alive.numel():
        if rounds > n_samples:  # every round moves each alive ray ≥ 1 candidate on
            raise RuntimeError(f"render_rays_alive: rays still alive after {rounds} rounds of {n_samples} "
                               f"candidates: march_next (backend {backend!r}) does not advance next_index")
        rounds += 1
        A = alive.numel()
        with _timed(timings, "march", device):
            step = march_next(o, d, tn, tf, state.next_index, alive, occ.occupied, aabb, n_samples, k,
                              backend=backend)
            ai, ji = step.valid.nonzero(as_tuple=True)      # round-major (ray, sample) order
            rows = alive[ai]
            xyz = o[rows] + d[rows] * step.t_mid[ai, ji].unsqueeze(-1)
            index = None if frame is None else frame[rows]
        if len(ai):
            with _timed(timings, "field", device):
                dens = field.density(xyz, cond, index)
            sigma = torch.zeros(A, k, device=device).index_put_((ai, ji), dens["sigma"].float())
            with _timed(timings, "composite", device):
                weights = composite_step(sigma, None, step, alive, state, early_stop, backend=backend)
                live = (weights[ai, ji] > 0).nonzero()[:, 0]
            extras = torch.zeros(A, k, 3, device=device)
            extras[ai, ji, 0] = dens["amb_audio"].float()
            extras[ai, ji, 1] = dens["amb_bs"].float()
            rgb = torch.zeros(A, k, 3, device=device)
            if len(live):
                with _timed(timings, "field", device):
                    rgb_l, unc_l = field.color(d[rows[live]], dens["geo"][live], cond,
                                               None if index is None else index[live])
                rgb[ai[live], ji[live]] = rgb_l.float()
                extras[ai[live], ji[live], 2] = unc_l.float()
            with _timed(timings, "composite", device):
                composite_step(sigma, rgb, step, alive, state, early_stop, extras=extras, backend=backend)
            n_density += len(ai)
            n_color += len(live)
        with _timed(timings, "march", device):
            alive = compact(alive, state.transmittance, state.next_index, n_samples, early_stop)
        k = min(2 * k, int(max_step), n_samples)
    with _timed(timings, "composite", device):
        bg_hit = bg[hit_idx].to(state.color.dtype)
        color = state.color + (1 - state.opacity).unsqueeze(-1) * bg_hit
        out_rgb = bg.clone().to(color.dtype).index_put((hit_idx,), color)
        zeros = torch.zeros(n_rays, device=device, dtype=state.opacity.dtype)
        opacity = zeros.index_put((hit_idx,), state.opacity)
        depth = zeros.index_put((hit_idx,), state.depth)
        ex = torch.zeros(n_rays, 3, device=device, dtype=state.extras.dtype).index_put((hit_idx,), state.extras)
    return {"rgb": out_rgb, "opacity": opacity, "depth": depth, "amb_audio": ex[:, 0], "amb_bs": ex[:, 1],
            "unc": ex[:, 2], "n_samples": n_density, "n_color_samples": n_color, "rounds": rounds, "hit": hit}

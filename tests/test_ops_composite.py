"""Volume compositing of packed samples (synctalk.ops.composite)."""
from __future__ import annotations

import math

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import (PackedSamples, composite, early_termination_mask, exclusive_segment_cumsum, march_rays,
                          ray_aabb, segment_sum)


def packed(counts, dtype=torch.float64, seed=0):
    """Random packed samples: ``counts[r]`` sorted, disjoint intervals on ray r."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor(counts, dtype=torch.int64)
    rays = torch.repeat_interleave(torch.arange(len(counts)), counts)
    S = int(counts.sum())
    lengths = 0.05 + torch.rand(S, generator=gen, dtype=dtype) * 0.2
    gaps = torch.rand(S, generator=gen, dtype=dtype) * 0.1
    offsets = torch.cumsum(counts, 0) - counts
    starts = torch.empty(S, dtype=dtype)
    for r in range(len(counts)):                      # test helper only
        a, n = int(offsets[r]), int(counts[r])
        starts[a:a + n] = 1 + torch.cumsum(gaps[a:a + n] + lengths[a:a + n], 0) - lengths[a:a + n]
    return PackedSamples(ray_indices=rays, t_starts=starts, t_ends=starts + lengths, offsets=offsets,
                         counts=counts, n_rays=len(counts))


def naive(sigmas, rgbs, s: PackedSamples, extras=None, bg=None):
    """Per-ray Python loop, the textbook recurrence."""
    N, C = s.n_rays, rgbs.shape[1]
    w = torch.zeros_like(sigmas)
    T_all = torch.zeros_like(sigmas)
    color = torch.zeros(N, C, dtype=rgbs.dtype)
    opacity = torch.zeros(N, dtype=sigmas.dtype)
    depth = torch.zeros(N, dtype=sigmas.dtype)
    ext = None if extras is None else torch.zeros(N, extras.shape[1], dtype=extras.dtype)
    for r in range(N):
        T = 1.0
        for i in range(int(s.offsets[r]), int(s.offsets[r] + s.counts[r])):
            alpha = 1 - math.exp(-float(sigmas[i]) * float(s.t_ends[i] - s.t_starts[i]))
            T_all[i] = T
            w[i] = T * alpha
            opacity[r] += w[i]
            depth[r] += w[i] * (s.t_starts[i] + s.t_ends[i]) / 2
            color[r] += w[i] * rgbs[i]
            if ext is not None:
                ext[r] += w[i] * extras[i]
            T *= 1 - alpha
        if bg is not None:
            color[r] += (1 - opacity[r]) * bg[r]
    return dict(weights=w, transmittance=T_all, opacity=opacity, depth=depth, color=color, extras=ext)


def test_constant_density_slab_opacity_and_depth_are_analytic():
    """A ray through a slab of constant σ over [a, b]: opacity 1 - exp(-σL) (exact for any
    number of intervals) and depth a(1 - e^{-σL}) + 1/σ - (L + 1/σ) e^{-σL} (midpoint rule)."""
    box = torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    o = torch.tensor([[0.2, -0.3, -1.5]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    near, far = ray_aabb(o, d, box)
    a, L = 1.5, 2.0
    torch.testing.assert_close(near, torch.tensor([a], dtype=torch.float64))
    for sigma in (0.3, 1.0, 3.0):
        for n in (1, 7, 512):
            s = march_rays(o, d, near, far, None, box, n)
            rgb = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
            out = composite(torch.full((n,), sigma, dtype=torch.float64), rgb.expand(n, 3), s)
            opacity = 1 - math.exp(-sigma * L)
            assert float(out["opacity"][0]) == pytest.approx(opacity, abs=1e-12)
            torch.testing.assert_close(out["color"][0], opacity * rgb)
            if n == 512:
                depth = a * opacity + 1 / sigma - (L + 1 / sigma) * math.exp(-sigma * L)
                assert float(out["depth"][0]) == pytest.approx(depth, abs=1e-5)
                torch.testing.assert_close(out["transmittance"],
                                           torch.exp(-sigma * (s.t_starts - a)))


def test_equals_naive_loop_on_random_packed_input():
    s = packed([3, 0, 1, 7, 2, 0, 5], seed=1)
    gen = torch.Generator().manual_seed(2)
    S = s.n_samples
    sigmas = torch.rand(S, generator=gen, dtype=torch.float64) * 8
    rgbs = torch.rand(S, 3, generator=gen, dtype=torch.float64)
    extras = torch.rand(S, 2, generator=gen, dtype=torch.float64)
    bg = torch.rand(7, 3, generator=gen, dtype=torch.float64)
    out = composite(sigmas, rgbs, s, extras=extras, bg=bg)
    ref = naive(sigmas, rgbs, s, extras, bg)
    for key in ("weights", "transmittance", "opacity", "depth", "color", "extras"):
        torch.testing.assert_close(out[key], ref[key], msg=key)
    out32 = composite(sigmas.float(), rgbs.float(), s, extras=extras.float(), bg=bg.float())
    for key in ("weights", "opacity", "color", "extras"):
        assert out32[key].dtype == torch.float32
        torch.testing.assert_close(out32[key], ref[key].float(), rtol=1e-5, atol=1e-6)


def test_scan_keeps_precision_after_many_preceding_samples():
    """The global scan must not lose a late ray's transmittance to float32 cancellation."""
    n_before = 200_000
    counts = torch.tensor([n_before, 4])
    t = torch.arange(n_before + 4, dtype=torch.float32) * 0.01
    t[n_before:] = torch.tensor([0.0, 0.5, 1.0, 1.5])
    s = PackedSamples(ray_indices=torch.repeat_interleave(torch.arange(2), counts), t_starts=t, t_ends=t + 0.5,
                      offsets=torch.tensor([0, n_before]), counts=counts, n_rays=2)
    sigmas = torch.full((n_before + 4,), 50.0)              # Σσδ ≈ 5e6 before the last ray
    sigmas[n_before:] = torch.tensor([0.2, 0.4, 0.6, 0.8])
    T = composite(sigmas, torch.zeros(n_before + 4, 3), s)["transmittance"][n_before:]
    torch.testing.assert_close(T, torch.exp(-torch.tensor([0.0, 0.1, 0.3, 0.6])), rtol=1e-6, atol=0)


def test_empty_sample_set_and_background():
    s = PackedSamples(ray_indices=torch.zeros(0, dtype=torch.int64), t_starts=torch.zeros(0), t_ends=torch.zeros(0),
                      offsets=torch.zeros(3, dtype=torch.int64), counts=torch.zeros(3, dtype=torch.int64), n_rays=3)
    bg = torch.rand(3, 3)
    out = composite(torch.zeros(0), torch.zeros(0, 3), s, bg=bg, extras=torch.zeros(0, 2))
    assert out["weights"].shape == (0,) and out["opacity"].abs().sum() == 0 and out["depth"].abs().sum() == 0
    torch.testing.assert_close(out["color"], bg)
    assert out["extras"].shape == (3, 2)
    out = composite(torch.zeros(0), torch.zeros(0, 3), s, bg=torch.tensor([1.0, 1.0, 1.0]))  # [C] broadcast
    torch.testing.assert_close(out["color"], torch.ones(3, 3))
    assert "extras" not in composite(torch.zeros(0), torch.zeros(0, 3), s)


def test_single_ray_and_opaque_sample_blocks_the_rest():
    s = packed([4], seed=3)
    sigmas = torch.tensor([0.0, 1e4, 2.0, 3.0], dtype=torch.float64)
    rgbs = torch.eye(4, 3, dtype=torch.float64)
    out = composite(sigmas, rgbs, s, bg=torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(out["weights"], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out["color"], torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out["depth"], s.t_mid[1:2])


def test_gradcheck_sigmas_rgbs_extras_bg():
    s = packed([2, 0, 3, 1], seed=4)
    gen = torch.Generator().manual_seed(5)
    S = s.n_samples
    args = (torch.rand(S, generator=gen, dtype=torch.float64) * 3, torch.rand(S, 3, generator=gen, dtype=torch.float64),
            torch.rand(S, 2, generator=gen, dtype=torch.float64), torch.rand(4, 3, generator=gen, dtype=torch.float64))
    args = tuple(a.requires_grad_() for a in args)

    def f(sig, rgb, ext, bg):
        out = composite(sig, rgb, s, extras=ext, bg=bg)
        return out["color"], out["opacity"], out["depth"], out["extras"], out["weights"]

    assert torch.autograd.gradcheck(f, args)


def test_early_termination_bound():
    s = packed([30, 12], seed=6)
    gen = torch.Generator().manual_seed(7)
    sigmas = torch.rand(s.n_samples, generator=gen, dtype=torch.float64) * 40
    rgbs = torch.rand(s.n_samples, 3, generator=gen, dtype=torch.float64)
    out = composite(sigmas, rgbs, s)
    skip = early_termination_mask(out["transmittance"], 1e-4)
    assert skip.any() and not skip.all()
    kept = segment_sum(out["weights"].unsqueeze(-1) * rgbs * (~skip).unsqueeze(-1), s.ray_indices, 2)
    assert float((out["color"] - kept).abs().max()) <= 1e-4


def test_exclusive_segment_cumsum_and_shape_errors():
    s = packed([2, 3], seed=8)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    want = torch.tensor([0.0, 1.0, 0.0, 3.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(exclusive_segment_cumsum(v, s), want)
    with pytest.raises(InputError, match="sigmas"):
        composite(torch.zeros(4), torch.zeros(5, 3), s)
    with pytest.raises(InputError, match="bg"):
        composite(torch.zeros(5), torch.zeros(5, 3), s, bg=torch.zeros(5, 3))

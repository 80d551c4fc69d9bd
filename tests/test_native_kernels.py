"""The vectorised CPU kernels of the native backend against the torch reference: the
2-D / tri-plane grid loops (super-chunks, sub-chunks, large and small levels, every
feature-count path), the instruction-set variants (each one this CPU supports), the
exp / alpha approximations of compositing and the candidate loops of marching.

``tests/test_native_ops.py`` covers the op contracts (shapes, dtypes, errors, CUDA);
these tests push the CPU loops through the code paths that only large or unusual inputs
reach.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from synctalk.ops.grid import TRIPLANE_AXES, GridSpec, encode_reference, init_table

native = importlib.import_module("synctalk.ops.native")
grid_mod = importlib.import_module("synctalk.ops.grid")
raymarch_mod = importlib.import_module("synctalk.ops.raymarch")
composite_mod = importlib.import_module("synctalk.ops.composite")

ISAS = ("base", "avx2", "avx512")


@pytest.fixture(scope="module")
def ext(native_ext):
    return native_ext


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """One torch (and OpenMP) thread unless a test asks for more."""


def _supported_isas(ext) -> list[str]:
    best = ext.cpu_isa()
    return list(ISAS[: ISAS.index(best) + 1])


@pytest.fixture
def each_isa(ext):
    """Run a test body once per instruction set this CPU supports; restores the best one."""
    best = ext.cpu_isa()

    def run(body):
        for isa in _supported_isas(ext):
            assert ext.set_cpu_isa(isa) == isa
            body(isa)

    yield run
    ext.set_cpu_isa(best)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, what: str = "") -> None:
    """Equal within ``rtol`` relative to the tensor's magnitude (fp32 round-off)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-6), msg=what or None)


def _points(n: int, seed: int, dim: int = 3) -> torch.Tensor:
    """Uniform points plus the borders 0 and 1 and a few outside [0, 1] (clamped)."""
    x = torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))
    x[:6, 0] = torch.tensor([0.0, 1.0, 1.3, -0.2, 0.5, 1.0])
    x[6:9, -1] = torch.tensor([1.0, 0.0, 2.0])
    return x


def _triplane_oracle(xyz: torch.Tensor, tables: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """The gather formula on every level (the native kernels' contract, borders included)."""
    axes = torch.tensor(TRIPLANE_AXES)
    return encode_reference(xyz[:, axes].transpose(0, 1), tables, spec)


def _encode_and_grads(fn, x: torch.Tensor, tables: torch.Tensor, g: torch.Tensor):
    x, tables = x.clone().requires_grad_(), tables.clone().requires_grad_()
    out = fn(x, tables)
    gx, gt = torch.autograd.grad(out, (x, tables), g)
    return out.detach(), gx, gt


# ----------------------------------------------------------------------------------------
# 2-D grids and the tri-plane


def test_triplane_large_batch_matches_reference_on_every_isa(ext, each_isa):
    """70,000 points: two super-chunks, many sub-chunks, one large (hashed) level and
    small dense ones, prefetching on the large level; values and gradients w.r.t. the
    tables and the points."""
    spec = GridSpec(dim=2, n_levels=6, n_features=2, base_resolution=8, max_resolution=300,
                    log2_hashmap_size=16)
    assert spec.hashed[-1] and not any(spec.hashed[:-1])
    xyz = _points(70_000, 1)
    tables = init_table(spec, 1.0, torch.Generator().manual_seed(2), planes=3)
    g = torch.randn(xyz.shape[0], 3 * spec.out_dim, generator=torch.Generator().manual_seed(3))
    ref = _encode_and_grads(lambda a, b: _triplane_oracle(a, b, spec), xyz, tables, g)

    def check(isa):
        got = _encode_and_grads(lambda a, b: native.triplane_encode(a, b, spec), xyz, tables, g)
        for a, b, name in zip(got, ref, ("out", "grad xyz", "grad tables")):
            _close(a, b, what=f"{name} ({isa})")

    each_isa(check)


@pytest.mark.parametrize("features", [1, 3, 4, 8])
def test_plane_kernels_every_feature_count(ext, features):
    """F = 1, 4, 8 take compile-time paths, F = 3 the runtime one; one plane (grid_encode
    with dim 2) and the tri-plane."""
    spec = GridSpec(dim=2, n_levels=4, n_features=features, base_resolution=4, max_resolution=90,
                    log2_hashmap_size=12)
    assert any(spec.hashed) and not all(spec.hashed)
    gen = torch.Generator().manual_seed(features)
    table = init_table(spec, 1.0, gen)
    x2 = _points(3000, features, dim=2)
    g2 = torch.randn(x2.shape[0], spec.out_dim, generator=gen)
    got = _encode_and_grads(lambda a, b: native.grid_encode(a, b, spec), x2, table, g2)
    ref = _encode_and_grads(lambda a, b: encode_reference(a.unsqueeze(0), b.unsqueeze(0), spec), x2, table, g2)
    for a, b in zip(got, ref):
        _close(a, b)
    tables = init_table(spec, 1.0, gen, planes=3)
    xyz = _points(3000, features + 10)
    g3 = torch.randn(xyz.shape[0], 3 * spec.out_dim, generator=gen)
    got = _encode_and_grads(lambda a, b: native.triplane_encode(a, b, spec), xyz, tables, g3)
    ref = _encode_and_grads(lambda a, b: _triplane_oracle(a, b, spec), xyz, tables, g3)
    for a, b in zip(got, ref):
        _close(a, b)


def test_plane_kernels_give_the_same_bits_on_two_threads(ext):
    """Two OpenMP threads split super-chunks (forward) and columns (backward); each column
    is still accumulated in point order, so values and table gradients are bit-identical
    (the point gradient sums the threads' partial sums in either order)."""
    spec = GridSpec(dim=2, n_levels=5, n_features=2, base_resolution=8, max_resolution=400,
                    log2_hashmap_size=15)
    xyz = _points(40_000, 4)
    tables = init_table(spec, 1.0, torch.Generator().manual_seed(5), planes=3)
    g = torch.randn(xyz.shape[0], 3 * spec.out_dim, generator=torch.Generator().manual_seed(6))
    one = _encode_and_grads(lambda a, b: native.triplane_encode(a, b, spec), xyz, tables, g)
    torch.set_num_threads(2)
    two = _encode_and_grads(lambda a, b: native.triplane_encode(a, b, spec), xyz, tables, g)
    assert torch.equal(one[0], two[0]) and torch.equal(one[2], two[2])
    _close(two[1], one[1], rtol=1e-6)


def test_plane_table_gradient_is_zeroed_by_the_kernel(ext):
    """The table gradient comes from uninitialised memory that the kernel zeroes level by
    level: rows no point touches must be exactly 0."""
    spec = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=4, max_resolution=64,
                    log2_hashmap_size=14)
    xyz = torch.full((50, 3), 0.3)  # every point in one cell per level, no weight 0
    tables = init_table(spec, 1.0, planes=3).requires_grad_()
    for _ in range(3):  # reused heap memory holds earlier gradients
        (grad,) = torch.autograd.grad(native.triplane_encode(xyz, tables, spec).sum(), (tables,))
        assert int((grad != 0).sum()) == 3 * spec.n_levels * 4 * spec.n_features
        assert torch.isfinite(grad).all()


def test_plane_two_feature_vector_paths_give_the_same_bits_on_every_isa(ext, each_isa):
    """F = 2 float32 tri-plane, table gradient only (training: the points need none): the
    AVX-512 variant gathers 8 points' corners at once, adds 16 points' corner gradients
    computed in vectors and transposes rows / columns in 8 x 8 blocks. Point counts that
    are not multiples of 8 / 16 (tails), 3 levels (9 columns, not a multiple of 8), dense
    and hashed levels, one large enough to prefetch: every variant gives the same bits,
    and all match the gather oracle."""
    spec = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=8, max_resolution=700,
                    log2_hashmap_size=17)
    assert spec.hashed == (False, False, True)
    xyz = _points(5_003, 11)
    tables = init_table(spec, 1.0, torch.Generator().manual_seed(12), planes=3)
    g = torch.randn(xyz.shape[0], 3 * spec.out_dim, generator=torch.Generator().manual_seed(13))
    leaf = tables.clone().requires_grad_()
    ref_out = _triplane_oracle(xyz, leaf, spec)
    (ref_grad,) = torch.autograd.grad(ref_out, (leaf,), g)
    results = {}

    def check(isa):
        out = native.triplane_encode(xyz, leaf, spec)
        (grad,) = torch.autograd.grad(out, (leaf,), g)
        _close(out.detach(), ref_out.detach(), what=f"out ({isa})")
        _close(grad, ref_grad, what=f"grad tables ({isa})")
        results[isa] = (out.detach(), grad)

    each_isa(check)
    base_out, base_grad = results["base"]
    for isa, (out, grad) in results.items():
        assert torch.equal(out, base_out) and torch.equal(grad, base_grad), isa


def test_buffer_cache_reuses_large_outputs(ext):
    """Large CPU outputs (the encoding, the table gradient) come back from a cache of freed
    buffers: a second call of the same size reuses the first one's memory, dirty, and
    still computes the right values; the 3-D grid's table gradient is zeroed first."""
    ext.buffer_cache_clear()
    spec = GridSpec(dim=3, n_levels=4, n_features=2, base_resolution=4, max_resolution=128,
                    log2_hashmap_size=17)  # table 1.5 MB: cached
    table = init_table(spec, 1.0, torch.Generator().manual_seed(21))
    x = _points(20_000, 22)  # output 20000 x 8 floats = 640 KB: not cached
    g = torch.randn(x.shape[0], spec.out_dim, generator=torch.Generator().manual_seed(23))
    assert table.numel() * 4 >= 1 << 20 and g.numel() * 4 < 1 << 20
    leaf = table.clone().requires_grad_()
    ref = encode_reference(x.unsqueeze(0), leaf.unsqueeze(0), spec)
    (ref_grad,) = torch.autograd.grad(ref, (leaf,), g)
    (first,) = torch.autograd.grad(native.grid_encode(x, leaf, spec), (leaf,), g)
    ptr = first.data_ptr()
    _close(first, ref_grad)
    del first
    assert ext.buffer_cache_info() == [1, 2 << 20]  # capacity rounded up to 2 MB
    (second,) = torch.autograd.grad(native.grid_encode(x, leaf, spec), (leaf,), 2 * g)
    assert second.data_ptr() == ptr and ext.buffer_cache_info() == [0, 0]
    _close(second, 2 * ref_grad)
    del second
    assert ext.buffer_cache_clear() == 2 << 20 and ext.buffer_cache_info() == [0, 0]


def test_buffer_cache_can_be_turned_off(ext):
    """SYNCTALK_NATIVE_BUFFER_CACHE_MB=0 (read once per process): large outputs are freed
    as usual and nothing is kept."""
    import os
    import subprocess
    import sys

    code = ("import torch\n"
            "from synctalk.ops import native\n"
            "from synctalk.ops.grid import GridSpec, init_table\n"
            "spec = GridSpec(dim=3, n_levels=4, n_features=2, base_resolution=4, max_resolution=128,\n"
            "                log2_hashmap_size=17)\n"
            "t = init_table(spec, 1.0).requires_grad_()\n"
            "native.grid_encode(torch.rand(1000, 3), t, spec).sum().backward()\n"
            "t.grad = None\n"
            "print(native.load().buffer_cache_info())\n")
    env = {**os.environ, "SYNCTALK_NATIVE_BUFFER_CACHE_MB": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 0]"


def test_cpu_isa_selection(ext):
    best = ext.cpu_isa()
    assert best in ISAS
    try:
        assert ext.set_cpu_isa("base") == "base"
        assert ext.cpu_isa() == "base"
        with pytest.raises(RuntimeError, match="unknown instruction set"):
            ext.set_cpu_isa("sse9")
        for isa in ISAS[ISAS.index(best) + 1:]:
            with pytest.raises(RuntimeError, match="does not support"):
                ext.set_cpu_isa(isa)
    finally:
        ext.set_cpu_isa(best)


# ----------------------------------------------------------------------------------------
# compositing


def _one_ray(s: torch.Tensor) -> raymarch_mod.PackedSamples:
    """One ray with unit intervals, so sigma = the thickness s."""
    n = s.shape[0]
    t = torch.arange(n + 1, dtype=s.dtype)
    return raymarch_mod.PackedSamples(
        ray_indices=torch.zeros(n, dtype=torch.int64), t_starts=t[:-1], t_ends=t[1:],
        offsets=torch.zeros(1, dtype=torch.int64), counts=torch.tensor([n]), n_rays=1)


def test_composite_alpha_and_transmittance_are_accurate_on_every_isa(ext, each_isa):
    """alpha = 1 - exp(-s) to a few ulp relative even for tiny s (no cancellation), around
    the series / 1 - e switch at 1/4, for large s and infinite density; transmittance
    to float precision until it underflows."""
    s = torch.tensor([0.0, 1e-9, 1e-6, 1e-3, 0.1, 0.2499, 0.25, 0.2501, 0.7, 1.0, 3.0, 10.0, 40.0,
                      90.0, 1e4, float("inf")])
    samples = _one_ray(s)
    ref_alpha = -torch.expm1(-s.double())
    ref_t = composite_mod._composite_torch(s, torch.ones(s.shape[0], 3), samples, None, None)["transmittance"]

    def check(isa):
        out = native.composite(s, torch.ones(s.shape[0], 3), samples, None, None)
        rel = ((out["alphas"].double() - ref_alpha).abs() / ref_alpha.clamp_min(1e-30))[1:]
        assert float(rel.max()) < 1e-6, isa
        assert out["alphas"][0].item() == 0.0 and out["alphas"][-1].item() == 1.0
        # (the reference's exclusive sum is inf - inf = NaN at the infinite sample)
        assert torch.allclose(out["transmittance"][:-1], ref_t[:-1], rtol=3e-7, atol=1e-37), isa
        assert out["transmittance"][-1].item() == 0.0 and torch.isfinite(out["weights"]).all()

    each_isa(check)


def test_composite_long_rays_match_reference(ext, each_isa):
    """400 thin samples per ray (transmittance from a long prefix sum), four rays."""
    n_rays, per_ray = 4, 400
    gen = torch.Generator().manual_seed(11)
    t = torch.sort(torch.rand(n_rays, per_ray + 1, generator=gen) * 3, dim=1).values
    counts = torch.full((n_rays,), per_ray, dtype=torch.int64)
    samples = raymarch_mod.PackedSamples(
        ray_indices=torch.arange(n_rays).repeat_interleave(per_ray), t_starts=t[:, :-1].reshape(-1),
        t_ends=t[:, 1:].reshape(-1), offsets=torch.arange(n_rays) * per_ray, counts=counts, n_rays=n_rays)
    sig = (torch.rand(n_rays * per_ray, generator=gen) * 2).requires_grad_()
    rgb = torch.rand(n_rays * per_ray, 3, generator=gen).requires_grad_()
    ref = composite_mod._composite_torch(sig, rgb, samples, None, None)
    ref_g = torch.autograd.grad(ref["color"].sum() + ref["depth"].sum(), (sig, rgb))

    def check(isa):
        got = native.composite(sig, rgb, samples, None, None)
        for key in ref:
            _close(got[key], ref[key], what=f"{key} ({isa})")
        got_g = torch.autograd.grad(got["color"].sum() + got["depth"].sum(), (sig, rgb))
        for a, b in zip(got_g, ref_g):
            _close(a, b, what=isa)

    each_isa(check)


@pytest.mark.parametrize("channels", [(3, 0), (3, 1), (3, 3), (3, 4), (3, 5), (1, 2), (4, 0)])
def test_composite_every_channel_path(ext, channels):
    """3 colours with 0..4 extras take compile-time paths, other counts the generic one."""
    C, K = channels
    o = torch.randn(300, 3, generator=torch.Generator().manual_seed(C * 10 + K)) * 2
    d = -o + 0.3 * torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    box = torch.tensor((-1.0, -1.0, -1.0, 1.0, 1.0, 1.0))
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, box, 0.0)
    samples = raymarch_mod._march_rays_torch(o, d, t_near, t_far, None, box, 16, False, None)
    gen = torch.Generator().manual_seed(C + K)
    S, N = samples.n_samples, samples.n_rays
    sig = (torch.rand(S, generator=gen) * 5).requires_grad_()
    rgb = torch.rand(S, C, generator=gen).requires_grad_()
    ex = torch.rand(S, K, generator=gen).requires_grad_() if K else None
    bg = torch.rand(N, C, generator=gen).requires_grad_()
    inputs = [t for t in (sig, rgb, ex, bg) if t is not None]
    proj = {key: torch.randn(v.shape, generator=gen)
            for key, v in composite_mod._composite_torch(sig, rgb, samples, ex, bg).items()}
    results = []
    for out in (native.composite(sig, rgb, samples, ex, bg), composite_mod._composite_torch(sig, rgb, samples, ex, bg)):
        loss = sum((out[k] * proj[k]).sum() for k in out)
        results.append((out, torch.autograd.grad(loss, inputs)))
    (got, got_g), (ref, ref_g) = results
    for key in ref:
        _close(got[key].detach(), ref[key].detach(), what=key)
    for a, b in zip(got_g, ref_g):
        _close(a, b)


# ----------------------------------------------------------------------------------------
# marching


@pytest.mark.parametrize("n_samples", [1, 7, 24, 33])
@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("box", [(-1.0, -0.5, -1.0, 1.0, 0.5, 1.0), (-1.3, -0.7, -0.9, 1.1, 0.6, 1.2)],
                         ids=["pow2-extents", "other-extents"])
def test_march_candidates_are_bit_identical_on_every_isa(ext, each_isa, n_samples, perturb, box):
    """Candidate counts that are not a multiple of any vector width, a grid size that is
    not a power of two, jittered or not; a box whose extents are powers of two (the head
    box: its cell divisions become exact multiplications) and one whose are not."""
    gen = torch.Generator().manual_seed(n_samples)
    o = torch.randn(400, 3, generator=gen) * 2.5
    d = torch.randn(400, 3, generator=gen)
    box = torch.tensor(box)
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, box, 0.0)
    occupied = torch.rand(20, 20, 20, generator=gen) > 0.5
    ref = raymarch_mod._march_rays_torch(o, d, t_near, t_far, occupied, box, n_samples, perturb,
                                         torch.Generator().manual_seed(3))
    assert ref.n_samples > 0

    def check(isa):
        got = native.march_rays(o, d, t_near, t_far, occupied, box, n_samples, perturb,
                                torch.Generator().manual_seed(3))
        for key in ("ray_indices", "t_starts", "t_ends", "offsets", "counts"):
            assert torch.equal(getattr(got, key), getattr(ref, key)), (key, isa)
        if perturb:
            assert torch.equal(got.t_pos, ref.t_pos), isa

    each_isa(check)


def test_march_occupancy_bitfield_cache_follows_grid_updates(ext):
    """The CPU kernel reads a cached bitfield of the grid: in-place updates of the grid
    (or of a view of it) and new grids must be seen by the next march."""
    gen = torch.Generator().manual_seed(21)
    o = torch.randn(300, 3, generator=gen) * 2.5
    d = torch.randn(300, 3, generator=gen)
    box = torch.tensor((-1.0, -1.0, -1.0, 1.0, 1.0, 1.0))
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, box, 0.0)

    def both(grid):
        got = native.march_rays(o, d, t_near, t_far, grid, box, 16, False, None)
        ref = raymarch_mod._march_rays_torch(o, d, t_near, t_far, grid, box, 16, False, None)
        assert torch.equal(got.t_starts, ref.t_starts) and torch.equal(got.counts, ref.counts)
        return got.n_samples

    grid = torch.rand(9, 9, 9, generator=gen) > 0.5
    n_first = both(grid)
    assert n_first > 0
    assert both(grid) == n_first          # cached
    grid.zero_()                          # in place
    assert both(grid) == 0
    grid[:, :, 4:].fill_(True)            # through a view
    assert 0 < both(grid) < n_first * 2
    assert both(torch.ones(9, 9, 9, dtype=torch.bool)) > 0  # a new grid
    assert both(torch.zeros(4, 4, 4, dtype=torch.bool)) == 0

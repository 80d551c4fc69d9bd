"""The native backend (``cuda_ext/``) against the torch reference, op by op.

Values must match to fp32 round-off (most are bit-identical: the kernels evaluate the same
formulas in the same order), gradients are checked with ``gradcheck`` in float64 and
against the reference's autograd in float32. Every test runs on the CPU; the same tests
run on CUDA (marked ``gpu``) when a device and a CUDA build are present.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import backend
from synctalk.ops.grid import GridSpec, encode_reference, init_table

native = importlib.import_module("synctalk.ops.native")
grid_mod = importlib.import_module("synctalk.ops.grid")
raymarch_mod = importlib.import_module("synctalk.ops.raymarch")
composite_mod = importlib.import_module("synctalk.ops.composite")
density_mod = importlib.import_module("synctalk.ops.density")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]

#: Specs with dense and hashed levels: 2-D (tri-plane style) and 3-D.
SPEC2 = GridSpec(dim=2, n_levels=5, n_features=2, base_resolution=4, max_resolution=96, log2_hashmap_size=10)
SPEC3 = GridSpec(dim=3, n_levels=4, n_features=2, base_resolution=3, max_resolution=40, log2_hashmap_size=11)
AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


@pytest.fixture(scope="module", autouse=True)
def extension(native_ext):
    """Every test here needs the built extension."""
    return native_ext


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """Kernels and reference on one thread: steadier on a shared 2-core machine."""


def _device_ok(device: str) -> None:
    if device == "cuda" and not native.load().with_cuda:
        pytest.skip("the native ops were built without CUDA")


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal within ``rtol`` relative to the tensor's magnitude (at least 1e-6): fp32 round-off."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-6))


# ----------------------------------------------------------------------------------------
# grid encoding


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", [SPEC2, SPEC3], ids=["2d", "3d"])
@pytest.mark.parametrize("n", [0, 1, 777])
def test_grid_encode_matches_reference(device, spec, n):
    _device_ok(device)
    gen = torch.Generator().manual_seed(n)
    x = torch.rand(n, spec.dim, generator=gen)
    if n > 10:  # the borders, and points outside [0,1] (clamped)
        x[0], x[1], x[2, 0], x[3, -1] = 0.0, 1.0, 1.7, -0.3
    table = init_table(spec, 1.0, gen)
    x, table = x.to(device), table.to(device)
    out = native.grid_encode(x, table, spec)
    _close(out, encode_reference(x.unsqueeze(0), table.unsqueeze(0), spec))
    _close(out, grid_mod.grid_encode(x, table, spec, backend="torch"))
    assert out.shape == (n, spec.out_dim) and out.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_grid_encode_fp16_table_and_float64(device):
    _device_ok(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(300, 3, generator=gen).to(device)
    half = init_table(SPEC3, 1.0, gen, dtype=torch.float16).to(device)
    out = native.grid_encode(x, half, SPEC3)
    assert out.dtype == torch.float32
    _close(out, encode_reference(x.unsqueeze(0), half.unsqueeze(0), SPEC3))
    x64, t64 = x.double(), half.double()
    out64 = native.grid_encode(x64, t64, SPEC3)
    assert out64.dtype == torch.float64
    _close(out64, encode_reference(x64.unsqueeze(0), t64.unsqueeze(0), SPEC3), rtol=1e-12)
    # A float32 table with float64 points computes in float64, like the reference.
    _close(native.grid_encode(x64, half.float(), SPEC3), grid_mod.grid_encode(x64, half.float(), SPEC3,
                                                                              backend="torch"), rtol=1e-12)


@pytest.mark.parametrize("spec", [SPEC2, SPEC3], ids=["2d", "3d"])
def test_grid_encode_gradcheck_float64(spec):
    small = GridSpec(spec.dim, 3, 2, 2, 9, 5)  # levels 2 (dense), 4, 9 (hashed)
    assert True in small.hashed and False in small.hashed
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(12, spec.dim, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    table = init_table(small, 1.0, gen).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: native.grid_encode(a, b, small), (x, table))


@pytest.mark.parametrize("device", DEVICES)
def test_grid_encode_grads_match_reference(device):
    _device_ok(device)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(500, 3, generator=gen)
    x[0, 0], x[1, 1] = 1.4, -0.2  # clamped coordinates get no gradient
    x = x.to(device).requires_grad_()
    table = init_table(SPEC3, 1.0, gen).to(device).requires_grad_()
    g = torch.randn(500, SPEC3.out_dim, generator=gen).to(device)
    ref = torch.autograd.grad(encode_reference(x.unsqueeze(0), table.unsqueeze(0), SPEC3), (x, table), g)
    got = torch.autograd.grad(native.grid_encode(x, table, SPEC3), (x, table), g)
    for a, b in zip(got, ref):
        _close(a, b)
    assert got[0][0, 0] == 0 and got[0][1, 1] == 0 and got[0][0, 1] != 0
    # Only the table: no gradient for x is computed or returned.
    (gt,) = torch.autograd.grad(native.grid_encode(x.detach(), table, SPEC3), (table,), g)
    _close(gt, ref[1])


def test_grid_encode_fp16_table_gets_fp16_gradient():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(200, 2, generator=gen)
    half = init_table(SPEC2, 1.0, gen, dtype=torch.float16).requires_grad_()
    (gn,) = torch.autograd.grad(native.grid_encode(x, half, SPEC2).sum(), (half,))
    (gr,) = torch.autograd.grad(grid_mod.grid_encode(x, half, SPEC2, backend="torch").sum(), (half,))
    assert gn.dtype == torch.float16
    torch.testing.assert_close(gn.float(), gr.float(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_triplane_matches_reference_and_gradcheck(device):
    _device_ok(device)
    gen = torch.Generator().manual_seed(5)
    xyz = torch.rand(400, 3, generator=gen).to(device).requires_grad_()
    tables = init_table(SPEC2, 1.0, gen, planes=3).to(device).requires_grad_()
    out = native.triplane_encode(xyz, tables, SPEC2)
    ref = grid_mod._triplane_encode_torch(xyz, tables, SPEC2)
    _close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (xyz, tables), g), torch.autograd.grad(ref, (xyz, tables), g)):
        _close(a, b)
    small = GridSpec(2, 2, 2, 3, 7, 5)
    x64 = (torch.rand(8, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05).to(device).requires_grad_()
    t64 = init_table(small, 1.0, gen, planes=3).double().to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: native.triplane_encode(a, b, small), (x64, t64))


def test_grid_encode_noncontiguous_inputs_are_copied():
    gen = torch.Generator().manual_seed(6)
    wide = torch.rand(100, 6, generator=gen)
    x = wide[:, ::2]  # [100, 3] non-contiguous view
    table_t = init_table(SPEC3, 1.0, gen).t().contiguous().t()  # [rows, F] with transposed strides
    assert not x.is_contiguous() and not table_t.is_contiguous()
    _close(native.grid_encode(x, table_t, SPEC3), native.grid_encode(x.contiguous(), table_t.contiguous(), SPEC3))


def test_grid_encode_rejects_bad_inputs():
    table = init_table(SPEC2, 1.0)
    with pytest.raises(InputError, match="floating-point"):
        native.grid_encode(torch.zeros(4, 2, dtype=torch.int64), table, SPEC2)
    with pytest.raises(InputError, match="one device"):
        native.grid_encode(torch.rand(4, 2, device="meta"), table, SPEC2)
    with pytest.raises(InputError, match="shape"):  # the public op checks shapes for every backend
        grid_mod.grid_encode(torch.rand(4, 3), table, SPEC2, backend="native")


# ----------------------------------------------------------------------------------------
# ray-AABB and marching


def _rays(n: int, seed: int, dtype=torch.float32, device="cpu"):
    """Rays from around the box, some aimed at it, some away, some axis-parallel."""
    gen = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=gen, dtype=dtype) * 2.0
    d = torch.randn(n, 3, generator=gen, dtype=dtype)
    if n >= 12:
        o[0], d[0] = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])    # starts inside
        o[1], d[1] = torch.tensor([0.5, 2.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])    # parallel, outside
        o[2], d[2] = torch.tensor([-3.0, 0.2, -0.1]), torch.tensor([1.0, 0.0, 0.0])  # parallel, hits
        o[3], d[3] = torch.tensor([-3.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])   # grazes a face
        o[4], d[4] = torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])    # box behind it
        o[5:8] = torch.tensor([0.3, -0.2, 0.1])                                      # inside, random d
        o[8], d[8] = torch.tensor([3.0, 0.0, 0.0]), 0.0                                 # zero direction
    box = torch.tensor(AABB, dtype=dtype)
    return o.to(device), d.to(device), box.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 513])
@pytest.mark.parametrize("near", [0.0, 0.7])
def test_ray_aabb_is_bit_identical(device, n, near):
    _device_ok(device)
    o, d, box = _rays(n, n + 1, device=device)
    ref = raymarch_mod._ray_aabb_torch(o, d, box, near)
    got = native.ray_aabb(o, d, box, near)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    if n > 12:
        hit = ref[1] > ref[0]
        assert bool(hit[0]) and bool(hit[2]) and not bool(hit[1]) and not bool(hit[4])
        assert 0 < int(hit.sum()) < n


def _assert_same_samples(a, b) -> None:
    assert a.n_rays == b.n_rays
    for key in ("ray_indices", "t_starts", "t_ends", "offsets", "counts"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and torch.equal(x, y), key
    assert (a.t_pos is None) == (b.t_pos is None)
    if a.t_pos is not None:
        assert torch.equal(a.t_pos, b.t_pos)


def _occupancy(kind: str, R: int, seed: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "empty":
        return torch.zeros(R, R, R, dtype=torch.bool)
    if kind == "full":
        return torch.ones(R, R, R, dtype=torch.bool)
    return torch.rand(R, R, R, generator=torch.Generator().manual_seed(seed)) > 0.6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grid", ["random", "empty", "full", "none"])
@pytest.mark.parametrize("perturb", [False, True])
def test_march_rays_is_bit_identical(device, grid, perturb):
    _device_ok(device)
    o, d, box = _rays(700, 11, device=device)
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, box, 0.0)
    occupied = _occupancy(grid, 16, 3)
    occupied = None if occupied is None else occupied.to(device)
    gens = [torch.Generator(device=device).manual_seed(7) for _ in range(2)]
    ref = raymarch_mod._march_rays_torch(o, d, t_near, t_far, occupied, box, 48, perturb, gens[0])
    got = native.march_rays(o, d, t_near, t_far, occupied, box, 48, perturb, gens[1])
    _assert_same_samples(got, ref)
    hit = t_far > t_near
    if grid == "empty":
        assert got.n_samples == 0
    if grid in ("full", "none"):  # saturation: every hitting ray gets exactly n_samples
        assert torch.equal(got.counts, hit.to(torch.int64) * 48)
    if grid == "random":
        assert 0 < got.n_samples < int(hit.sum()) * 48
    assert int(got.counts[~hit].sum()) == 0


@pytest.mark.parametrize("n", [0, 1])
def test_march_rays_tiny_batches_and_float64(n):
    o, d, box = _rays(n, 21, dtype=torch.float64)
    if n:
        o[0], d[0] = torch.tensor([0.1, -2.0, 0.2], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0],
                                                                                       dtype=torch.float64)
    t_near, t_far = native.ray_aabb(o, d, box, 0.0)
    occupied = _occupancy("random", 8, 5)
    ref = raymarch_mod._march_rays_torch(o, d, t_near, t_far, occupied, box, 1, False, None)
    got = native.march_rays(o, d, t_near, t_far, occupied, box, 1, False, None)
    _assert_same_samples(got, ref)
    assert got.t_starts.dtype == torch.float64 and got.n_rays == n
    got = native.march_rays(o, d, t_near, t_far, None, box, 5, True, torch.Generator().manual_seed(1))
    assert got.n_samples == 5 * n and got.t_pos is not None


def test_march_rays_backend_dispatch_and_errors():
    o, d, box = _rays(50, 4)
    t_near, t_far = raymarch_mod.ray_aabb(o, d, box, backend="native")
    ref = raymarch_mod.march_rays(o, d, t_near, t_far, None, box, 8, backend="torch")
    _assert_same_samples(raymarch_mod.march_rays(o, d, t_near, t_far, None, box, 8, backend="native"), ref)
    with pytest.raises(InputError, match="dtype"):
        native.march_rays(o, d.double(), t_near, t_far, None, box, 8, False, None)
    with pytest.raises(InputError, match="floating-point"):
        native.ray_aabb(o.to(torch.int32), d, box, 0.0)
    with pytest.raises(InputError, match="one device"):
        native.ray_aabb(o, d.to("meta"), box, 0.0)
    # Non-contiguous rays are copied, with the same result.
    o_nc = torch.stack((o, o), dim=2)[..., 0]
    assert not o_nc.is_contiguous()
    _assert_same_samples(native.march_rays(o_nc, d, t_near, t_far, None, box, 8, False, None), ref)


def test_ray_ops_fall_back_to_the_reference_when_rays_need_grad():
    o, d, box = _rays(20, 8)
    o.requires_grad_()
    t_near, t_far = native.ray_aabb(o, d, box, 0.0)
    assert t_near.requires_grad  # differentiable, as the torch reference is
    t_near.sum().backward()
    assert o.grad is not None


# ----------------------------------------------------------------------------------------
# compositing


def _packed(n_rays: int, seed: int, device="cpu", dtype=torch.float32):
    o, d, box = _rays(n_rays, seed, dtype=dtype)
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, box, 0.0)
    s = raymarch_mod._march_rays_torch(o, d, t_near, t_far, _occupancy("random", 8, seed), box, 24, False, None)
    return raymarch_mod.PackedSamples(**{k: (getattr(s, k).to(device) if torch.is_tensor(getattr(s, k))
                                            else getattr(s, k)) for k in s.__dataclass_fields__})


def _fields(S: int, N: int, seed: int, device="cpu", dtype=torch.float32, C=3, K=2):
    gen = torch.Generator().manual_seed(seed)
    sig = torch.rand(S, generator=gen, dtype=dtype) * 4
    rgb = torch.rand(S, C, generator=gen, dtype=dtype)
    ex = torch.rand(S, K, generator=gen, dtype=dtype)
    bg = torch.rand(N, C, generator=gen, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (sig, rgb, ex, bg)]


def _loss(out: dict) -> torch.Tensor:
    """Uses every output, so every backward path is exercised."""
    w = torch.arange(out["color"].shape[1], dtype=out["color"].dtype, device=out["color"].device) + 1
    total = (out["color"] * w).sum() + 0.3 * out["depth"].sum() + 0.5 * out["opacity"].square().sum()
    total = total + (out["weights"] ** 2).sum() + 0.1 * out["transmittance"].sum() + 0.2 * out["alphas"].sum()
    if "extras" in out:
        total = total + (out["extras"] * torch.tensor([1.0, -2.0], dtype=w.dtype, device=w.device)).sum()
    return total


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_extras", [True, False])
@pytest.mark.parametrize("bg_kind", ["rays", "color", "none"])
def test_composite_matches_reference(device, with_extras, bg_kind):
    _device_ok(device)
    samples = _packed(400, 2, device)
    sig, rgb, ex, bg = _fields(samples.n_samples, samples.n_rays, 3, device)
    bg = {"rays": bg, "color": bg[0].detach().clone().requires_grad_(), "none": None}[bg_kind]
    ex = ex if with_extras else None
    ref = composite_mod._composite_torch(sig, rgb, samples, ex, bg)
    got = native.composite(sig, rgb, samples, ex, bg)
    assert got.keys() == ref.keys()
    for key in ref:
        _close(got[key], ref[key])
    inputs = [t for t in (sig, rgb, ex, bg) if t is not None]
    for a, b in zip(torch.autograd.grad(_loss(got), inputs), torch.autograd.grad(_loss(ref), inputs)):
        _close(a, b)
    assert bool((samples.counts == 0).any())  # rays without samples are part of the batch


def test_composite_gradcheck_float64():
    samples = _packed(12, 5, dtype=torch.float64)
    assert samples.n_samples > 10
    sig, rgb, ex, bg = _fields(samples.n_samples, samples.n_rays, 6, dtype=torch.float64)

    def fn(s, r, e, b):
        out = native.composite(s, r, samples, e, b)
        return tuple(out[k] for k in ("weights", "transmittance", "alphas", "opacity", "depth", "color",
                                      "extras"))

    assert torch.autograd.gradcheck(fn, (sig, rgb, ex, bg))


def test_composite_is_differentiable_once():
    """The C++ autograd function gives first-order gradients; asking for a graph of them
    (create_graph=True) is an error that names the torch backend, not a silent zero."""
    samples = _packed(20, 8)
    sig, rgb, ex, bg = _fields(samples.n_samples, samples.n_rays, 9)
    out = native.composite(sig, rgb, samples, ex, bg)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(_loss(out), (sig,), create_graph=True)
    (g,) = torch.autograd.grad(_loss(native.composite(sig, rgb, samples, ex, bg)), (sig,))
    assert g.shape == sig.shape and not g.requires_grad


@pytest.mark.parametrize("n_rays", [0, 1, 5])
def test_composite_without_samples(n_rays):
    samples = raymarch_mod.PackedSamples(
        ray_indices=torch.zeros(0, dtype=torch.int64), t_starts=torch.zeros(0), t_ends=torch.zeros(0),
        offsets=torch.zeros(n_rays, dtype=torch.int64), counts=torch.zeros(n_rays, dtype=torch.int64),
        n_rays=n_rays)
    sig = torch.zeros(0, requires_grad=True)
    rgb = torch.zeros(0, 3, requires_grad=True)
    bg = torch.rand(n_rays, 3, requires_grad=True)
    got = native.composite(sig, rgb, samples, None, bg)
    ref = composite_mod._composite_torch(sig, rgb, samples, None, bg)
    for key in ref:
        _close(got[key], ref[key])
    assert torch.equal(got["color"], bg.detach())
    got["color"].sum().backward()
    assert torch.equal(bg.grad, torch.ones_like(bg))


def test_composite_single_ray_and_saturation():
    """One ray, densities high enough that transmittance underflows to 0 along it."""
    t = torch.linspace(0, 1, 65)
    samples = raymarch_mod.PackedSamples(
        ray_indices=torch.zeros(64, dtype=torch.int64), t_starts=t[:-1], t_ends=t[1:],
        offsets=torch.zeros(1, dtype=torch.int64), counts=torch.tensor([64]), n_rays=1)
    sig = torch.full((64,), 5000.0, requires_grad=True)
    rgb = torch.rand(64, 3, requires_grad=True)
    got, ref = native.composite(sig, rgb, samples, None, None), composite_mod._composite_torch(sig, rgb, samples,
                                                                                               None, None)
    for key in ref:
        _close(got[key], ref[key])
    assert got["opacity"].item() == pytest.approx(1.0) and got["transmittance"][-1].item() == 0.0
    ga = torch.autograd.grad(_loss(got), (sig, rgb))
    gr = torch.autograd.grad(_loss(ref), (sig, rgb))
    for a, b in zip(ga, gr):
        assert torch.isfinite(a).all()
        _close(a, b)


def test_composite_rejects_bad_inputs():
    samples = _packed(30, 7)
    sig, rgb, ex, bg = (t.detach() for t in _fields(samples.n_samples, samples.n_rays, 1))
    with pytest.raises(InputError, match="floating-point"):
        native.composite(sig.to(torch.int64), rgb, samples, None, None)
    with pytest.raises(InputError, match="one device"):
        native.composite(sig, rgb.to("meta"), samples, None, None)
    broken = raymarch_mod.PackedSamples(samples.ray_indices, samples.t_starts, samples.t_ends,
                                        samples.offsets + 5, samples.counts, samples.n_rays)
    with pytest.raises(InputError, match="outside the packed samples"):
        native.composite(sig, rgb, broken, None, None)
    # Non-contiguous per-sample inputs are copied, with the same result.
    rgb_nc = torch.cat((rgb, rgb), dim=1)[:, ::2]
    assert not rgb_nc.is_contiguous()
    _close(native.composite(sig, rgb_nc, samples, None, None)["color"],
           native.composite(sig, rgb_nc.contiguous(), samples, None, None)["color"])


def test_march_then_composite_end_to_end_matches_torch():
    o, d, box = _rays(300, 13)
    occupied = _occupancy("random", 16, 9)
    results = {}
    for name in ("torch", "native"):
        t_near, t_far = raymarch_mod.ray_aabb(o, d, box, backend=name)
        s = raymarch_mod.march_rays(o, d, t_near, t_far, occupied, box, 32, perturb=True,
                                    generator=torch.Generator().manual_seed(0), backend=name)
        pts = s.points(o, d)
        sig = (pts.norm(dim=-1) < 0.8).float() * 10
        results[name] = composite_mod.composite(sig, (pts + 1) / 2, s, backend=name)
    for key in results["torch"]:
        _close(results["native"][key], results["torch"][key])


# ----------------------------------------------------------------------------------------
# density helpers and registration


def test_dilation_reference_on_analytic_cases():
    grid = torch.zeros(7, 6, 5, dtype=torch.bool)
    grid[3, 2, 1] = True
    d1 = density_mod.dilate_occupancy(grid, 1)
    assert d1.sum() == 27 and d1[2:5, 1:4, 0:3].all()
    # Chebyshev radius 2, clipped at the z = 0 face (no wrap-around)
    d2 = density_mod.dilate_occupancy(grid, 2)
    assert d2.sum() == 5 * 5 * 4 and not d2[:, :, 4].any() and not d2[0].any()
    assert torch.equal(density_mod.dilate_occupancy(grid, 0), grid)
    full = torch.ones(3, 3, 3, dtype=torch.bool)
    assert torch.equal(density_mod.dilate_occupancy(full, 3), full)
    with pytest.raises(InputError, match="bool grid"):
        density_mod.dilate_occupancy(grid.float(), 1)
    with pytest.raises(InputError, match="radius"):
        density_mod.dilate_occupancy(grid, -1)


@pytest.mark.parametrize("device", DEVICES)
def test_dilation_matches_reference(device):
    _device_ok(device)
    gen = torch.Generator().manual_seed(12)
    for shape, p, r in (((16, 16, 16), 0.01, 1), ((9, 5, 13), 0.05, 2), ((32, 32, 32), 0.001, 3),
                        ((1, 1, 1), 1.0, 1), ((4, 4, 4), 0.0, 1), ((0, 3, 3), 0.5, 1), ((8, 8, 8), 0.3, 0)):
        grid = (torch.rand(shape, generator=gen) < p).to(device)
        ref = density_mod.dilate_occupancy(grid.cpu(), r)
        got = native.dilate_occupancy(grid, r)
        assert got.device.type == device and got.dtype == torch.bool
        assert torch.equal(got.cpu(), ref), (shape, r)
    # a non-contiguous view gives the same answer
    grid = (torch.rand(12, 10, 8, generator=gen) < 0.02).to(device)
    view = grid.transpose(0, 2)
    assert torch.equal(native.dilate_occupancy(view, 1).cpu(), density_mod.dilate_occupancy(view.cpu(), 1))
    with pytest.raises(InputError, match="bool grid"):
        native.dilate_occupancy(grid.to(torch.uint8), 1)


@pytest.mark.parametrize("device", DEVICES)
def test_density_helpers_match_reference(device):
    _device_ok(device)
    gen = torch.Generator().manual_seed(8)
    ix, iy, iz = (torch.randint(0, 1024, (500,), generator=gen).to(device) for _ in range(3))
    codes = native.morton3(ix, iy, iz)
    assert torch.equal(codes, density_mod.morton3(ix, iy, iz))
    for a, b in zip(native.morton3_decode(codes), (ix, iy, iz)):
        assert torch.equal(a, b)
    for n in (0, 1, 8, 13, 4096):
        cells = (torch.rand(n, generator=gen) > 0.5).to(device)
        bits = native.pack_bitfield(cells)
        assert torch.equal(bits, density_mod.pack_bitfield(cells))
        assert torch.equal(native.unpack_bitfield(bits, n), cells)
        assert torch.equal(native.unpack_bitfield(bits), density_mod.unpack_bitfield(bits))
    with pytest.raises(InputError, match="1024"):
        native.morton3(torch.tensor([1024]), torch.tensor([0]), torch.tensor([0]))


def test_native_backend_is_registered_and_preferred():
    for op in backend.OPS:
        assert backend.resolve(op, "native") is native.IMPLEMENTATIONS[op]
        assert backend.available(op)[:2] == ["native", "torch"]
        assert backend.resolve(op, "auto") is native.IMPLEMENTATIONS[op]
    assert native.native_status()["state"] == "loaded"

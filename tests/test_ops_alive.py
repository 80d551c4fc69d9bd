"""The alive-ray inference loop (synctalk.ops.alive): march_next, composite_step, compact —
the torch reference on analytic cases and against march_rays / composite, the native
kernels against the reference, and render_rays_alive against render_rays."""
from __future__ import annotations

import importlib
import math

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import AliveState, StepSamples, compact, composite_step, march_next

alive_mod = importlib.import_module("synctalk.ops.alive")
raymarch_mod = importlib.import_module("synctalk.ops.raymarch")
composite_mod = importlib.import_module("synctalk.ops.composite")

BOX = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
#: Extents that are not powers of two: the kernels' cell lookup divides instead of multiplying.
ODD_BOX = torch.tensor([-1.1, -0.7, -0.9, 1.3, 0.45, 1.0])

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """One torch thread: steadier on a shared machine."""


def _rays(n: int, seed: int, box: torch.Tensor = BOX, dtype=torch.float32):
    """Rays from around the box: most aimed into it, some away, a few axis-parallel."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = box[:3].to(dtype), box[3:].to(dtype)
    o = torch.randn(n, 3, generator=gen, dtype=dtype) * 2.5
    target = lo + (hi - lo) * (torch.rand(n, 3, generator=gen, dtype=dtype) * 1.4 - 0.2)
    d = target - o
    if n >= 6:
        o[0], d[0] = (lo + hi) / 2, torch.tensor([0.0, 0.0, 1.0], dtype=dtype)      # starts inside
        o[1], d[1] = torch.tensor([0.1, 5.0, 0.1], dtype=dtype), torch.tensor([1.0, 0.0, 0.0], dtype=dtype)  # misses
        o[2], d[2] = torch.tensor([-4.0, 0.1, 0.2], dtype=dtype), torch.tensor([1.0, 0.0, 0.0], dtype=dtype)  # parallel
        o[3], d[3] = torch.tensor([4.0, 4.0, 4.0], dtype=dtype), torch.tensor([1.0, 1.0, 1.0], dtype=dtype)  # behind
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, box.to(dtype), 0.0)
    return o, d, t_near, t_far


def _grid(kind: str, R: int, seed: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "empty":
        return torch.zeros(R, R, R, dtype=torch.bool)
    if kind == "full":
        return torch.ones(R, R, R, dtype=torch.bool)
    return torch.rand(R, R, R, generator=torch.Generator().manual_seed(seed)) > 0.6


def _all_rounds(o, d, t_near, t_far, occupied, box, n_samples, k, backend="torch", alive=None):
    """March every ray to the end, k at a time; returns (per-round StepSamples, alive rows, next_index)."""
    next_index = torch.zeros(len(o), dtype=torch.int64, device=o.device)
    alive = torch.arange(len(o), device=o.device) if alive is None else alive
    rounds = []
    while alive.numel():
        step = march_next(o, d, t_near, t_far, next_index, alive, occupied, box, n_samples, k, backend=backend)
        rounds.append((step, alive, next_index.clone()))
        alive = alive[next_index[alive] < n_samples]
        assert len(rounds) <= n_samples + 1, "next_index does not advance"
    return rounds, next_index


def _concatenate(rounds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rounds' samples as march_rays packs them: (ray_indices, t_starts, t_ends)."""
    rows, t0, t1 = [], [], []
    for step, alive, _ in rounds:
        valid = step.valid
        rows.append(alive.unsqueeze(1).expand_as(valid)[valid])
        t0.append(step.t_starts[valid])
        t1.append(step.t_ends[valid])
    rows = torch.cat(rows)
    order = torch.sort(rows, stable=True).indices  # by ray, rounds (hence t) in order
    return rows[order], torch.cat(t0)[order], torch.cat(t1)[order]


# ----------------------------------------------------------------------------------------
# march_next (torch reference)


def test_empty_grid_gives_nothing_and_every_ray_dies_at_once():
    o, d, t_near, t_far = _rays(40, 1)
    state = AliveState.create(40)
    alive = torch.arange(40)
    step = march_next(o, d, t_near, t_far, state.next_index, alive, torch.zeros(8, 8, 8, dtype=torch.bool),
                      BOX, 16, 4, backend="torch")
    assert step.t_starts.shape == (40, 4) and step.count.dtype == torch.int64
    assert int(step.count.sum()) == 0 and not step.t_starts.any() and not step.t_ends.any()
    assert torch.equal(state.next_index, torch.full((40,), 16))
    assert compact(alive, state.transmittance, state.next_index, 16, 1e-4).numel() == 0


def test_full_grid_gives_every_interval_in_rounds_of_k():
    o, d, t_near, t_far = _rays(30, 2)
    hit = t_far > t_near
    assert 0 < int(hit.sum()) < 30
    rounds, next_index = _all_rounds(o, d, t_near, t_far, torch.ones(4, 4, 4, dtype=torch.bool), BOX, 10, 4)
    assert len(rounds) == 3  # 4 + 4 + 2 samples
    for i, (step, alive, _) in enumerate(rounds):
        expect = torch.where(hit[alive], min(4, 10 - 4 * i), 0)
        assert torch.equal(step.count, expect)
    assert torch.equal(next_index, torch.full((30,), 10))
    # the intervals are march_rays' edges t_near + (t_far - t_near) * j / n
    step, alive, _ = rounds[0]
    r = int(alive[hit[alive]][0])
    a = int((alive == r).nonzero())
    edges = t_near[r] + (t_far[r] - t_near[r]) * (torch.arange(11, dtype=torch.float32) / 10)
    assert torch.equal(step.t_starts[a], edges[:4]) and torch.equal(step.t_ends[a], edges[1:5])


def test_single_occupied_cell():
    grid = torch.zeros(4, 4, 4, dtype=torch.bool)
    grid[2, 2, 2] = True  # x, y, z ∈ [0, 0.5)
    o = torch.tensor([[0.25, 0.25, -3.0], [-0.25, 0.25, -3.0]])  # through the cell / beside it
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t_near, t_far = raymarch_mod._ray_aabb_torch(o, d, BOX, 0.0)
    next_index = torch.zeros(2, dtype=torch.int64)
    # 8 intervals of 0.25 along z ∈ [-1, 1]: midpoints 0.125 and 0.375 (intervals 4, 5) are in the cell
    expected = [([3.0], [3.25], [5, 8]), ([3.25], [3.5], [6, 8]), ([0.0], [0.0], [8, 8])]
    for t0, t1, nxt in expected:
        step = march_next(o, d, t_near, t_far, next_index, torch.arange(2), grid, BOX, 8, 1, backend="torch")
        assert step.t_starts[0].tolist() == t0 and step.t_ends[0].tolist() == t1
        assert step.count.tolist() == [int(t0[0] > 0), 0] and next_index.tolist() == nxt
    # all at once, with k larger than n_samples: zero-filled past the count
    next_index.zero_()
    step = march_next(o, d, t_near, t_far, next_index, torch.tensor([0]), grid, BOX, 8, 20, backend="torch")
    assert step.t_starts.shape == (1, 20) and step.count.tolist() == [2]
    assert step.t_starts[0, :3].tolist() == [3.0, 3.25, 0.0] and not step.t_ends[0, 2:].any()
    assert next_index.tolist() == [8, 0]  # ray 1 was not alive: untouched


def test_rays_missing_the_box_and_rows_not_alive_are_untouched():
    o, d, t_near, t_far = _rays(12, 3)
    miss = ~(t_far > t_near)
    assert miss[1] and miss[3]
    next_index = torch.full((12,), 2, dtype=torch.int64)
    alive = torch.tensor([1, 3, 0])
    step = march_next(o, d, t_near, t_far, next_index, alive, None, BOX, 6, 3, backend="torch")
    assert step.count.tolist() == [0, 0, 3]
    assert next_index.tolist() == [5, 6, 2, 6] + [2] * 8
    edges = t_near[0] + (t_far[0] - t_near[0]) * (torch.arange(7, dtype=torch.float32) / 6)
    assert torch.equal(step.t_starts[2], edges[2:5]) and torch.equal(step.t_ends[2], edges[3:6])


@pytest.mark.parametrize("k", [1, 3, 8, 100])
@pytest.mark.parametrize("box", [BOX, ODD_BOX], ids=["box", "odd-box"])
def test_rounds_concatenated_are_march_rays_exactly(k, box):
    o, d, t_near, t_far = _rays(200, 4, box)
    grid = _grid("random", 16, 5)
    rounds, _ = _all_rounds(o, d, t_near, t_far, grid, box, 40, k)
    ref = raymarch_mod._march_rays_torch(o, d, t_near, t_far, grid, box, 40, False, None)
    rows, t0, t1 = _concatenate(rounds)
    assert torch.equal(rows, ref.ray_indices) and torch.equal(t0, ref.t_starts) and torch.equal(t1, ref.t_ends)
    assert 0 < ref.n_samples < 200 * 40
    # a ray with c samples takes ceil(c / k) rounds, one more when its last round was full
    # but ended before its last candidate
    most = int(ref.counts.max())
    assert math.ceil(most / k) <= len(rounds) <= most // k + 1


def test_march_next_float64_and_empty_alive_set():
    o, d, t_near, t_far = _rays(50, 6, dtype=torch.float64)
    grid = _grid("random", 8, 6)
    rounds, _ = _all_rounds(o, d, t_near, t_far, grid, BOX, 12, 5)
    ref = raymarch_mod._march_rays_torch(o, d, t_near, t_far, grid, BOX.double(), 12, False, None)
    rows, t0, _ = _concatenate(rounds)
    assert t0.dtype == torch.float64 and torch.equal(rows, ref.ray_indices) and torch.equal(t0, ref.t_starts)
    step = march_next(o, d, t_near, t_far, torch.zeros(50, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                      grid, BOX, 12, 5, backend="torch")
    assert step.t_starts.shape == (0, 5) and step.count.shape == (0,)


def test_march_next_rejects_bad_inputs():
    o, d, t_near, t_far = _rays(10, 7)
    nxt, alive = torch.zeros(10, dtype=torch.int64), torch.arange(10)
    args = (o, d, t_near, t_far)
    with pytest.raises(InputError, match="next_index.*int64"):
        march_next(*args, nxt.int(), alive, None, BOX, 8, 2)
    with pytest.raises(InputError, match="contiguous"):
        march_next(*args, torch.zeros(10, 2, dtype=torch.int64)[:, 0], alive, None, BOX, 8, 2)
    with pytest.raises(InputError, match="alive.*int64"):
        march_next(*args, nxt, alive.float(), None, BOX, 8, 2)
    with pytest.raises(InputError, match="outside"):
        march_next(*args, nxt, torch.tensor([0, 10]), None, BOX, 8, 2)
    with pytest.raises(InputError, match="k must be"):
        march_next(*args, nxt, alive, None, BOX, 8, 0)
    with pytest.raises(InputError, match=r"\[0, 8\]"):
        march_next(*args, torch.full((10,), 9, dtype=torch.int64), alive, None, BOX, 8, 2)
    with pytest.raises(InputError, match="cubic"):
        march_next(*args, nxt, alive, torch.ones(4, 4, 2, dtype=torch.bool), BOX, 8, 2)
    with pytest.raises(InputError, match="t_near"):
        march_next(o, d, t_near[:5], t_far, nxt, alive, None, BOX, 8, 2)


# ----------------------------------------------------------------------------------------
# composite_step (torch reference)


def _scene(n: int, seed: int, n_samples: int = 32, sigma_scale: float = 4.0):
    """Rays, a random grid, march_rays' samples and per-sample fields (sigma, rgb, extras)."""
    o, d, t_near, t_far = _rays(n, seed)
    grid = _grid("random", 8, seed)
    packed = raymarch_mod._march_rays_torch(o, d, t_near, t_far, grid, BOX, n_samples, False, None)
    gen = torch.Generator().manual_seed(seed)
    S = packed.n_samples
    fields = (torch.rand(S, generator=gen) * sigma_scale, torch.rand(S, 3, generator=gen),
              torch.rand(S, 2, generator=gen))
    return (o, d, t_near, t_far, grid), packed, fields


def _run_loop(rays, packed, fields, n_samples: int, k: int, early_stop: float, backend: str = "torch",
              march_backend: str = "torch", device="cpu", dtype=torch.float32):
    """The whole alive loop with per-sample fields looked up from march_rays' packing."""
    o, d, t_near, t_far, grid = (None if t is None else t.to(device) for t in rays)
    sig, rgb, ex = (f.to(device) for f in fields)
    N = len(o)
    state = AliveState.create(N, 3, 2, device=device, dtype=dtype)
    alive = torch.arange(N, device=device)
    done = torch.zeros(N, dtype=torch.int64, device=device)  # samples of each ray marched so far
    offsets = packed.offsets.to(device)
    weights, n_rounds = [], 0
    while alive.numel():
        step = march_next(o, d, t_near, t_far, state.next_index, alive, grid, BOX.to(device), n_samples, k,
                          backend=march_backend)
        valid = step.valid
        idx = torch.where(valid, offsets[alive, None] + done[alive, None] + torch.arange(k, device=device), 0)
        s = torch.where(valid, sig[idx], 0.0)
        probe = composite_step(s, None, step, alive, state, early_stop, backend=backend)
        w = composite_step(s, rgb[idx], step, alive, state, early_stop, extras=ex[idx], backend=backend)
        assert torch.equal(probe, w)
        weights.append((alive, step, w))
        done[alive] += step.count
        alive = compact(alive, state.transmittance, state.next_index, n_samples, early_stop)
        n_rounds += 1
        assert n_rounds <= n_samples + 1, "next_index does not advance"
    return state, weights, n_rounds


@pytest.mark.parametrize("k", [1, 4, 64])
def test_composite_step_over_rounds_equals_composite(k):
    rays, packed, (sig, rgb, ex) = _scene(150, 8, sigma_scale=1.0)
    state, _, _ = _run_loop(rays, packed, (sig, rgb, ex), 32, k, 0.0)
    ref = composite_mod._composite_torch(sig, rgb, packed, ex, None)
    for name, key in (("opacity", "opacity"), ("depth", "depth"), ("color", "color"), ("extras", "extras")):
        torch.testing.assert_close(getattr(state, name), ref[key], rtol=1e-5, atol=1e-5)
    # transmittance left after all samples: 1 - opacity
    torch.testing.assert_close(state.transmittance, 1 - ref["opacity"], rtol=1e-5, atol=1e-5)
    assert torch.equal(state.next_index, torch.full((150,), 32))


def _early_stop_definition(sig, rgb, packed, early_stop):
    """Front to back per ray in float64: a sample contributes while the transmittance before it
    is ≥ early_stop; the first that is not ends the ray."""
    N = packed.n_rays
    out = {"opacity": torch.zeros(N, dtype=torch.float64), "color": torch.zeros(N, 3, dtype=torch.float64),
           "transmittance": torch.ones(N, dtype=torch.float64), "used": torch.zeros(N, dtype=torch.int64)}
    for r in range(N):
        T = 1.0
        for i in range(int(packed.offsets[r]), int(packed.offsets[r] + packed.counts[r])):
            if T < early_stop:
                break
            s = float(sig[i]) * float(packed.t_ends[i] - packed.t_starts[i])
            w = T * -math.expm1(-s)
            out["opacity"][r] += w
            out["color"][r] += w * rgb[i].double()
            T *= math.exp(-s)
            out["used"][r] += 1
        out["transmittance"][r] = T
    return out


@pytest.mark.parametrize("k", [1, 3, 8])
def test_early_stop_matches_the_definition(k):
    rays, packed, (sig, rgb, ex) = _scene(120, 9, sigma_scale=80.0)
    early_stop = 1e-2
    state, rounds, _ = _run_loop(rays, packed, (sig, rgb, ex), 32, k, early_stop)
    ref = _early_stop_definition(sig, rgb, packed, early_stop)
    torch.testing.assert_close(state.opacity.double(), ref["opacity"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.color.double(), ref["color"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.transmittance.double(), ref["transmittance"], rtol=1e-4, atol=1e-7)
    used = torch.zeros(120, dtype=torch.int64)
    marched = torch.zeros(120, dtype=torch.int64)
    for alive, step, w in rounds:
        used.index_add_(0, alive, (w > 0).sum(1))
        marched.index_add_(0, alive, step.count)
        # weights are 0 past the first non-contributing sample and past the count
        assert torch.equal(w > 0, torch.cumprod((w > 0).to(torch.int8), 1).bool())
        assert not w[~step.valid].any()
    assert torch.equal(used, ref["used"])
    stopped = ref["used"] < packed.counts
    assert 10 < int(stopped.sum()) < 110  # the case is exercised, both ways
    # a stopped ray is never marched past the round it stopped in: < k samples more than it used
    assert bool(((marched - used)[stopped] < k).all()) and torch.equal(marched[~stopped], packed.counts[~stopped])
    assert bool((state.transmittance[stopped] < early_stop).all())


def test_probe_leaves_the_state_untouched_and_compact():
    rays, packed, fields = _scene(20, 10)
    o, d, t_near, t_far, grid = rays
    state = AliveState.create(20, 3, 2)
    alive = torch.arange(20)
    step = march_next(o, d, t_near, t_far, state.next_index, alive, grid, BOX, 32, 4)
    sig = torch.rand(20, 4, generator=torch.Generator().manual_seed(0)) * 3
    before = {k: v.clone() for k, v in vars(state).items()}
    w = composite_step(sig, None, step, alive, state, 1e-3, backend="torch")
    assert w.shape == (20, 4) and all(torch.equal(v, getattr(state, k)) for k, v in before.items())
    # compact: by transmittance and by candidates left
    T = torch.tensor([1.0, 0.5, 1e-5, 1.0])
    nxt = torch.tensor([0, 8, 3, 7])
    assert compact(torch.tensor([3, 2, 1, 0]), T, nxt, 8, 1e-4).tolist() == [3, 0]
    assert compact(torch.tensor([3, 2, 1, 0]), T, nxt, 8, 0.0).tolist() == [3, 2, 0]


def test_composite_step_rejects_bad_inputs():
    rays, packed, fields = _scene(10, 11)
    o, d, t_near, t_far, grid = rays
    state = AliveState.create(10, 3, 2)
    alive = torch.arange(10)
    step = march_next(o, d, t_near, t_far, state.next_index, alive, grid, BOX, 32, 4)
    sig, rgb, ex = torch.rand(10, 4), torch.rand(10, 4, 3), torch.rand(10, 4, 2)
    with pytest.raises(InputError, match="sigmas must have shape"):
        composite_step(sig[:, :3], rgb, step, alive, state, 0.0, extras=ex)
    with pytest.raises(InputError, match="rgbs must have shape"):
        composite_step(sig, rgb[..., :2], step, alive, state, 0.0, extras=ex)
    with pytest.raises(InputError, match="extras must be"):
        composite_step(sig, rgb, step, alive, state, 0.0)
    with pytest.raises(InputError, match="floating-point"):
        composite_step(sig.to(torch.int32), rgb, step, alive, state, 0.0, extras=ex)
    with pytest.raises(InputError, match="alive.*int64"):
        composite_step(sig, rgb, step, alive.int(), state, 0.0, extras=ex)
    with pytest.raises(InputError, match="outside"):
        composite_step(sig, rgb, step, alive + 1, state, 0.0, extras=ex)
    with pytest.raises(InputError, match="early_stop"):
        composite_step(sig, rgb, step, alive, state, -1.0, extras=ex)
    bad = AliveState(**{**vars(state), "color": torch.zeros(3, 10).t()})
    with pytest.raises(InputError, match="contiguous"):
        composite_step(sig, rgb, step, alive, bad, 0.0, extras=ex)
    bad = AliveState(**{**vars(state), "depth": state.depth.double()})
    with pytest.raises(InputError, match="state.depth"):
        composite_step(sig, rgb, step, alive, bad, 0.0, extras=ex)
    with pytest.raises(InputError, match="dtype"):
        AliveState.create(3, dtype=torch.float16)


# ----------------------------------------------------------------------------------------
# native kernels against the reference


def _device_ok(device: str, native_ext) -> None:
    if device == "cuda" and not native_ext.with_cuda:
        pytest.skip("the native ops were built without CUDA")


def _to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grid_kind", ["random", "empty", "full", "none"])
@pytest.mark.parametrize("box", [BOX, ODD_BOX], ids=["box", "odd-box"])
def test_native_march_next_is_bit_identical(native_ext, device, grid_kind, box):
    _device_ok(device, native_ext)
    o, d, t_near, t_far = _to(device, *_rays(300, 12, box))
    grid = _to(device, _grid(grid_kind, 16, 13))[0]
    box = box.to(device)
    gen = torch.Generator().manual_seed(14)
    start = torch.randint(0, 49, (300,), generator=gen).to(device)  # part-marched rays
    alive = torch.randperm(300, generator=gen)[:250].to(device)       # a subset, in any order
    for k in (1, 5, 64):
        nxt = {name: start.clone() for name in ("torch", "native")}
        for _ in range(3):
            steps = {name: march_next(o, d, t_near, t_far, nxt[name], alive, grid, box, 48, k, backend=name)
                     for name in ("torch", "native")}
            a, b = steps["native"], steps["torch"]
            for key in ("t_starts", "t_ends", "count"):
                x, y = getattr(a, key), getattr(b, key)
                assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (key, k)
            assert torch.equal(nxt["native"], nxt["torch"])
        if grid_kind == "empty":
            assert torch.equal(nxt["native"][alive], torch.full_like(alive, 48))


def test_native_march_next_float64_empty_alive_and_inputs(native_ext):
    o, d, t_near, t_far = _rays(80, 15, dtype=torch.float64)
    grid = _grid("random", 8, 15)
    ref_rounds, ref_next = _all_rounds(o, d, t_near, t_far, grid, BOX, 20, 3)
    got_rounds, got_next = _all_rounds(o, d, t_near, t_far, grid, BOX, 20, 3, backend="native")
    assert len(ref_rounds) == len(got_rounds) and torch.equal(ref_next, got_next)
    for (a, _, na), (b, _, nb) in zip(got_rounds, ref_rounds):
        assert a.t_starts.dtype == torch.float64
        assert torch.equal(a.t_starts, b.t_starts) and torch.equal(a.t_ends, b.t_ends) and torch.equal(na, nb)
    nxt = torch.zeros(80, dtype=torch.int64)
    empty = march_next(o, d, t_near, t_far, nxt, torch.zeros(0, dtype=torch.int64), grid, BOX, 20, 3,
                       backend="native")
    assert empty.t_starts.shape == (0, 3) and not nxt.any()
    # non-contiguous rays are copied (same samples); mixed dtypes and bad indices are refused
    o_nc = torch.stack((o, o), dim=2)[..., 0]
    assert not o_nc.is_contiguous()
    a = march_next(o_nc, d, t_near, t_far, torch.zeros(80, dtype=torch.int64), torch.arange(80), grid, BOX, 20, 3,
                   backend="native")
    b = march_next(o, d, t_near, t_far, torch.zeros(80, dtype=torch.int64), torch.arange(80), grid, BOX, 20, 3,
                   backend="torch")
    assert torch.equal(a.t_starts, b.t_starts)
    with pytest.raises(InputError, match="dtype"):
        march_next(o, d.float(), t_near, t_far, nxt, torch.arange(80), grid, BOX, 20, 3, backend="native")
    with pytest.raises(InputError, match="int64"):
        march_next(o, d, t_near, t_far, nxt, torch.arange(80).int(), grid, BOX, 20, 3, backend="native")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("early_stop", [0.0, 1e-3, 0.1])
@pytest.mark.parametrize("with_extras", [True, False])
def test_native_composite_step_matches_reference(native_ext, device, early_stop, with_extras):
    _device_ok(device, native_ext)
    gen = torch.Generator().manual_seed(16)
    N, A, k = 400, 300, 7
    alive = torch.randperm(N, generator=gen)[:A]
    count = torch.randint(0, k + 1, (A,), generator=gen)
    t0 = torch.rand(A, k, generator=gen) * 2
    step = StepSamples(t_starts=t0, t_ends=t0 + torch.rand(A, k, generator=gen) * 0.5, count=count)
    sig = torch.rand(A, k, generator=gen) * 8
    sig[~step.valid] = 1e6  # past the count: never read
    rgb = torch.rand(A, k, 3, generator=gen)
    ex = torch.rand(A, k, 4, generator=gen) if with_extras else None
    states = {}
    for name in ("torch", "native"):
        state = AliveState.create(N, 3, 4 if with_extras else 0)
        state.transmittance.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
        state.color.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
        state = AliveState(**{key: (v.to(device) if torch.is_tensor(v) else v) for key, v in vars(state).items()})
        args = _to(device, sig, rgb, alive, ex)
        step_d = StepSamples(*_to(device, step.t_starts, step.t_ends, step.count))
        probe = composite_step(args[0], None, step_d, args[2], state, early_stop, backend=name)
        w = composite_step(args[0], args[1], step_d, args[2], state, early_stop, extras=args[3], backend=name)
        assert torch.equal(probe, w)
        states[name] = (state, w)
    (a, wa), (b, wb) = states["native"], states["torch"]
    torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-7)
    for key in ("transmittance", "opacity", "depth", "color", "extras"):
        if getattr(b, key) is not None:
            torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-5, atol=1e-7)
    if early_stop == 0.1:
        assert 0 < int(((wb > 0).sum(1) < step.count.to(device)).sum()) < A  # rays stopped mid-round


def test_native_composite_step_float64_empty_and_bad_inputs(native_ext):
    rays, packed, fields = _scene(60, 17, sigma_scale=6.0)
    for early_stop in (0.0, 1e-2):
        ref, _, n_ref = _run_loop(rays, packed, fields, 32, 4, early_stop, dtype=torch.float64)
        got, _, n_got = _run_loop(rays, packed, fields, 32, 4, early_stop, backend="native", march_backend="native",
                                  dtype=torch.float64)
        assert n_ref == n_got and got.color.dtype == torch.float64
        for key in ("transmittance", "opacity", "depth", "color", "extras"):
            torch.testing.assert_close(getattr(got, key), getattr(ref, key), rtol=1e-12, atol=1e-14)
    state = AliveState.create(5)
    none = torch.zeros(0, dtype=torch.int64)
    step = StepSamples(torch.zeros(0, 3), torch.zeros(0, 3), none)
    w = composite_step(torch.zeros(0, 3), torch.zeros(0, 3, 3), step, none, state, 1e-4, backend="native")
    assert w.shape == (0, 3) and torch.equal(state.transmittance, torch.ones(5))
    # non-contiguous per-sample inputs are copied, with the same result
    step = StepSamples(torch.rand(4, 3), torch.rand(4, 3) + 1, torch.tensor([3, 1, 0, 2]))
    rgb = torch.rand(4, 3, 6)[..., ::2]
    assert not rgb.is_contiguous()
    results = []
    for r in (rgb, rgb.contiguous()):
        state = AliveState.create(5)
        composite_step(torch.ones(4, 3), r, step, torch.tensor([4, 0, 1, 2]), state, 0.0, backend="native")
        results.append(state.color)
    assert torch.equal(results[0], results[1]) and results[0].abs().sum() > 0
    with pytest.raises(InputError, match="floating-point"):
        composite_step(torch.ones(4, 3, dtype=torch.int64), rgb, step, torch.arange(4), state, 0.0,
                       backend="native")
    with pytest.raises(InputError, match="samples.count"):
        composite_step(torch.ones(4, 3), rgb, StepSamples(step.t_starts, step.t_ends, step.count.int()),
                       torch.arange(4), state, 0.0, backend="native")


# ----------------------------------------------------------------------------------------
# the renderer


@pytest.fixture(scope="module")
def random_head():
    """See :func:`_random_head`."""
    return _random_head()


def _random_head():
    """A small random-weight head model whose occupancy grid holds an ellipsoid, its density
    raised there so that rays terminate inside it (as bench render sets one up), a frame's
    conditioning and the rays of a frontal 40² camera."""
    from synctalk.nerf.config import load_preset
    from synctalk.nerf.model import TalkingHeadModel

    torch.set_num_threads(1)
    cfg = load_preset("demo").replace(grid_levels=4, grid_features=2, grid_base_res=8, grid_max_res=64,
                                      grid_log2_hashmap=12, hidden_dim=32, geo_dim=16, occ_resolution=16,
                                      infer_samples=32)
    model = TalkingHeadModel(cfg, 1, 7, 16, seed=0).eval()
    r = cfg.occ_resolution
    c = (torch.arange(r) + 0.5) / r * 2 - 1
    gx, gy, gz = torch.meshgrid(c, c, c, indexing="ij")
    with torch.no_grad():
        model.occ.occupied.copy_((gx / 0.8) ** 2 + (gy / 0.9) ** 2 + (gz / 0.9) ** 2 <= 1.0)
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(4, model.audio_basis.shape[1], generator=gen)
        cond = model.head.frame_conditioning(feats, torch.tensor([1]), torch.rand(1, 7, generator=gen),
                                             torch.zeros(1, dtype=torch.long))
    n = 40
    u = (torch.arange(n) + 0.5) / n * 2.4 - 1.2
    gu, gv = torch.meshgrid(u, u, indexing="ij")
    target = torch.stack([gu.reshape(-1), torch.zeros(n * n), gv.reshape(-1)], 1)
    o = torch.tensor([[0.1, 3.0, -0.2]]).expand(n * n, 3).contiguous()
    d = target - o
    d = d / d.norm(dim=1, keepdim=True)
    bg = torch.rand(n * n, 3, generator=gen)
    return model, cond, o, d, bg


class _CountingField:
    """The head field, counting the points its density and colour parts evaluate."""

    def __init__(self, field) -> None:
        self.field, self.density_points, self.color_points = field, 0, 0

    def density(self, xyz, cond, index=None):
        self.density_points += len(xyz)
        return self.field.density(xyz, cond, index)

    def color(self, dirs, geo, cond, index=None):
        self.color_points += len(dirs)
        return self.field.color(dirs, geo, cond, index)


@pytest.mark.parametrize("bias", [3.0, 1.0], ids=["opaque", "thin"])
@pytest.mark.parametrize("backend", ["torch", "native"])
def test_render_rays_alive_matches_render_rays(random_head, native_ext, bias, backend):
    from synctalk.nerf.geometry import AABB
    from synctalk.nerf.renderer import render_rays, render_rays_alive

    model, cond, o, d, bg = random_head
    early_stop = 1e-4
    with torch.no_grad():
        model.head.density_net[-1].bias[0] += bias
        try:
            ref_field, alive_field = _CountingField(model.head), _CountingField(model.head)
            ref = render_rays(ref_field, model.occ, o, d, cond, bg, n_samples=32, early_stop=early_stop,
                              backend=backend)
            out = render_rays_alive(alive_field, model.occ, o, d, cond, bg, n_samples=32, early_stop=early_stop,
                                    backend=backend)
        finally:
            model.head.density_net[-1].bias[0] -= bias
    assert torch.equal(out["hit"], ref["hit"]) and 0 < int(ref["hit"].sum()) < len(o)
    # samples after a ray's termination point count in render_rays' opacity, not here: < early_stop
    for key in ("rgb", "opacity", "amb_audio", "amb_bs", "unc"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1.5 * early_stop)
    torch.testing.assert_close(out["depth"], ref["depth"], rtol=0, atol=5 * early_stop)
    assert alive_field.density_points == out["n_samples"] <= ref_field.density_points == ref["n_samples"]
    assert alive_field.color_points == out["n_color_samples"] <= ref_field.color_points
    hit = ref["hit"]
    t_near, t_far = raymarch_mod._ray_aabb_torch(o[hit], d[hit], torch.tensor(AABB), 0.0)
    every = raymarch_mod._march_rays_torch(o[hit], d[hit], t_near, t_far, model.occ.occupied,
                                           torch.tensor(AABB), 32, False, None).n_samples
    if bias > 2:  # opaque: many rays stop early, in rounds capped at 8 samples (render_rays: 16)
        assert float((ref["opacity"][hit] > 1 - early_stop).float().mean()) > 0.25
        assert out["n_color_samples"] < out["n_samples"] < ref["n_samples"] < every and out["rounds"] >= 3
    else:  # thin: every sample is evaluated, over rounds of 2, 4, 8, 8, ... samples
        assert float(ref["opacity"].max()) < 0.99 and out["n_samples"] == every and out["rounds"] >= 5


def test_render_rays_alive_schedules_and_arguments(random_head):
    from synctalk.nerf.renderer import render_rays_alive

    model, cond, o, d, bg = random_head
    with torch.no_grad():
        model.head.density_net[-1].bias[0] += 3.0
        try:
            outs = {s: render_rays_alive(model.head, model.occ, o[:600], d[:600], cond, bg[:600], n_samples=32,
                                         early_stop=1e-4, backend="torch", first_step=s[0], max_step=s[1])
                    for s in ((1, 1), (2, 8), (4, 64), (64, 64))}
        finally:
            model.head.density_net[-1].bias[0] -= 3.0
    base = outs[(64, 64)]  # one round: every sample of every ray
    for s, out in outs.items():
        torch.testing.assert_close(out["rgb"], base["rgb"], rtol=0, atol=1e-6)
        assert out["n_color_samples"] == base["n_color_samples"]
    # one sample at a time evaluates only contributing samples; larger steps evaluate more
    assert outs[(1, 1)]["n_samples"] == outs[(1, 1)]["n_color_samples"]
    for s in ((2, 8), (4, 64)):
        assert outs[(1, 1)]["n_samples"] <= outs[s]["n_samples"] <= base["n_samples"]
    assert outs[(1, 1)]["rounds"] > outs[(2, 8)]["rounds"] > base["rounds"] == 1
    with pytest.raises(InputError, match="first_step"):
        render_rays_alive(model.head, model.occ, o, d, cond, bg, n_samples=32, early_stop=1e-4, first_step=4,
                          max_step=2)

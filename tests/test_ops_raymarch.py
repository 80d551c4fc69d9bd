"""Ray–AABB intersection, occupancy lookup and ray marching (synctalk.ops.raymarch)."""
from __future__ import annotations

import math

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import PackedSamples, march_rays, occupancy_index, ray_aabb, to_unit_cube

BOX = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
HEAD_BOX = torch.tensor([-1.0, -0.5, -1.0, 1.0, 0.5, 1.0])


def rays(*pairs):
    o = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    d = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
    return o, d


def random_rays(n, gen, box=HEAD_BOX, miss_some=True):
    """Rays from a sphere of radius 3 towards random targets (some far off the box)."""
    o = torch.randn(n, 3, generator=gen)
    o = 3 * o / o.norm(dim=1, keepdim=True)
    spread = 2.5 if miss_some else 0.9
    target = (torch.rand(n, 3, generator=gen) * 2 - 1) * spread * box[3:]
    d = target - o
    return o, d / d.norm(dim=1, keepdim=True)


# ------------------------------------------------------------------------------- ray-AABB


def test_axis_aligned_rays_and_unnormalised_directions():
    o, d = rays(((-5, 0.1, 0.2), (1, 0, 0)), ((-5, 0.1, 0.2), (2, 0, 0)), ((0.3, 4, 0), (0, -1, 0)),
                ((0, 0, 9), (0, 0, -0.5)), ((-2, -2, -2), (1, 1, 1)))
    near, far = ray_aabb(o, d, BOX)
    torch.testing.assert_close(near, torch.tensor([4.0, 2.0, 3.0, 16.0, 1.0]))
    torch.testing.assert_close(far, torch.tensor([6.0, 3.0, 5.0, 20.0, 3.0]))


def test_ray_starting_inside_and_near_plane():
    o, d = rays(((0, 0, 0), (1, 0, 0)), ((0.5, 0, 0), (-1, 0, 0)), ((-5, 0, 0), (1, 0, 0)))
    near, far = ray_aabb(o, d, BOX)
    torch.testing.assert_close(near, torch.tensor([0.0, 0.0, 4.0]))
    torch.testing.assert_close(far, torch.tensor([1.0, 1.5, 6.0]))
    near, far = ray_aabb(o, d, BOX, near=0.25)
    torch.testing.assert_close(near, torch.tensor([0.25, 0.25, 4.0]))
    near, far = ray_aabb(o, d, BOX, near=7.0)            # box entirely before the near plane
    assert not bool((far > near)[2])


def test_misses_are_zero_and_parallel_rays_follow_their_slab():
    o, d = rays(((-5, 3, 0), (1, 0, 0)),                 # passes above the box
                ((-5, 0, 0), (-1, 0, 0)),                # box behind the origin
                ((-5, 1, 0), (1, 0, 0)),                 # parallel to the y=1 face, on it
                ((-5, 1.0001, 0), (1, 0, 0)),            # parallel, just outside
                ((0, 0, -3), (0, 0, 1)),                 # parallel to x and y faces, inside both slabs
                ((1, 1, -3), (0, 0, 1)),                 # along an edge of the box
                ((3, 0, 0), (-1, -1, 0)))                # crosses the plane y=-1 before reaching x=1
    near, far = ray_aabb(o, d, BOX)
    hit = far > near
    assert hit.tolist() == [False, False, True, False, True, True, False]
    assert near[~hit].abs().sum() == 0 and far[~hit].abs().sum() == 0   # misses: both 0, finite
    torch.testing.assert_close(near[hit], torch.tensor([4.0, 2.0, 2.0]))
    torch.testing.assert_close(far[hit], torch.tensor([6.0, 4.0, 4.0]))


def test_random_rays_enter_and_leave_the_box_at_t_near_t_far():
    gen = torch.Generator().manual_seed(0)
    o, d = random_rays(500, gen)
    near, far = ray_aabb(o, d, HEAD_BOX)
    hit = far > near
    assert 0 < int(hit.sum()) < 500
    lo, hi = HEAD_BOX[:3], HEAD_BOX[3:]

    def inside(t, tol):
        p = o + t.unsqueeze(1) * d
        return ((p >= lo - tol) & (p <= hi + tol)).all(dim=1)

    assert inside(near, 1e-5)[hit].all() and inside(far, 1e-5)[hit].all()
    assert inside((near + far) / 2, 0)[hit].all()
    assert not inside(near - 1e-3, -1e-6)[hit].any()                   # just before entry: outside
    ts = torch.linspace(0, 8, 400)
    pts = o[~hit].unsqueeze(1) + ts.view(1, -1, 1) * d[~hit].unsqueeze(1)
    assert not ((pts >= lo) & (pts <= hi)).all(dim=-1).any()           # misses never enter


# ------------------------------------------------------------------------------- occupancy index


def test_occupancy_index_layout_and_outside_points():
    R = 4
    lo, hi = HEAD_BOX[:3], HEAD_BOX[3:]
    cell = (hi - lo) / R
    pts = torch.stack([lo, hi, lo + cell * torch.tensor([1.5, 2.5, 3.5]), hi + 0.01, lo - torch.tensor([0, 0, 1e-3])])
    idx = occupancy_index(pts, HEAD_BOX, R)
    assert idx.tolist() == [0, R ** 3 - 1, 1 * R * R + 2 * R + 3, -1, -1]
    grid = torch.zeros(R, R, R, dtype=torch.bool)
    grid[1, 2, 3] = True
    assert grid.reshape(-1)[idx[2]]
    torch.testing.assert_close(to_unit_cube(pts[:2], HEAD_BOX), torch.tensor([[0.0] * 3, [1.0] * 3]))


# ------------------------------------------------------------------------------- marching


def check_packing(s: PackedSamples, n_rays: int):
    assert s.n_rays == n_rays and s.counts.shape == (n_rays,) and s.offsets.shape == (n_rays,)
    assert s.ray_indices.dtype == torch.int64 and s.offsets.dtype == torch.int64
    assert int(s.counts.sum()) == s.n_samples
    torch.testing.assert_close(s.offsets, torch.cumsum(s.counts, 0) - s.counts)
    assert bool((s.ray_indices[1:] >= s.ray_indices[:-1]).all())
    torch.testing.assert_close(torch.bincount(s.ray_indices, minlength=n_rays), s.counts)
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    assert bool((s.t_starts[1:] >= s.t_ends[:-1] - 1e-6)[same_ray].all())   # sorted, disjoint
    assert bool((s.t_ends > s.t_starts).all())


def test_all_empty_grid_gives_no_samples():
    gen = torch.Generator().manual_seed(1)
    o, d = random_rays(64, gen)
    near, far = ray_aabb(o, d, HEAD_BOX)
    s = march_rays(o, d, near, far, torch.zeros(8, 8, 8, dtype=torch.bool), HEAD_BOX, 16)
    assert s.n_samples == 0 and s.t_starts.shape == (0,)
    check_packing(s, 64)
    assert s.offsets.abs().sum() == 0


def test_all_full_grid_gives_n_samples_per_hitting_ray_inside_the_box():
    gen = torch.Generator().manual_seed(2)
    o, d = random_rays(200, gen)
    near, far = ray_aabb(o, d, HEAD_BOX)
    hit = far > near
    s = march_rays(o, d, near, far, torch.ones(16, 16, 16, dtype=torch.bool), HEAD_BOX, 24)
    check_packing(s, 200)
    assert torch.equal(s.counts, hit.long() * 24)
    # the intervals tile [t_near, t_far] exactly
    per_ray = torch.zeros(200).index_add(0, s.ray_indices, s.deltas)
    torch.testing.assert_close(per_ray, (far - near) * hit)
    torch.testing.assert_close(s.t_starts[s.offsets[hit]], near[hit])
    p = s.points(o, d)
    assert bool(((p >= HEAD_BOX[:3]) & (p <= HEAD_BOX[3:])).all())
    assert s.t_pos is None and torch.equal(s.positions, s.t_mid)
    none = march_rays(o, d, near, far, None, HEAD_BOX, 24)     # no grid: same as all occupied
    assert torch.equal(none.counts, s.counts) and torch.equal(none.t_starts, s.t_starts)


def test_single_occupied_cell_keeps_only_samples_in_that_cell():
    R = 8
    grid = torch.zeros(R, R, R, dtype=torch.bool)
    grid[5, 3, 2] = True
    lo, hi = HEAD_BOX[:3], HEAD_BOX[3:]
    center = lo + (torch.tensor([5, 3, 2]) + 0.5) * (hi - lo) / R
    gen = torch.Generator().manual_seed(3)
    o, _ = random_rays(100, gen)
    d = center + 0.05 * (torch.rand(100, 3, generator=gen) - 0.5) * (hi - lo) / R - o   # aimed at the cell
    d = d / d.norm(dim=1, keepdim=True)
    near, far = ray_aabb(o, d, HEAD_BOX)
    s = march_rays(o, d, near, far, grid, HEAD_BOX, 64)
    check_packing(s, 100)
    assert bool((s.counts > 0).all())                       # every ray crosses the cell's middle
    idx = occupancy_index(s.points(o, d), HEAD_BOX, R)
    assert bool((idx == (5 * R + 3) * R + 2).all())
    full = march_rays(o, d, near, far, torch.ones(R, R, R, dtype=torch.bool), HEAD_BOX, 64)
    in_cell = occupancy_index(full.points(o, d), HEAD_BOX, R) == (5 * R + 3) * R + 2
    assert int(in_cell.sum()) == s.n_samples                # nothing in the cell was dropped


def test_perturb_stays_in_intervals_and_is_seeded():
    gen = torch.Generator().manual_seed(4)
    o, d = random_rays(50, gen)
    near, far = ray_aabb(o, d, HEAD_BOX)
    grid = torch.rand(8, 8, 8, generator=gen) > 0.5

    def run(seed):
        return march_rays(o, d, near, far, grid, HEAD_BOX, 32, perturb=True,
                          generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    check_packing(a, 50)
    assert bool(((a.t_pos >= a.t_starts) & (a.t_pos < a.t_ends)).all())
    assert torch.equal(a.t_pos, b.t_pos) and torch.equal(a.ray_indices, b.ray_indices)
    assert not torch.equal(c.t_pos, a.t_pos[: c.n_samples]) or c.n_samples != a.n_samples
    # jittered positions are what the occupancy test used
    idx = occupancy_index(a.points(o, d), HEAD_BOX, 8)
    assert bool(grid.reshape(-1)[idx].all())
    assert not torch.equal(a.positions, a.t_mid)


def test_no_rays():
    near, far = ray_aabb(torch.zeros(0, 3), torch.zeros(0, 3), BOX)
    assert near.shape == far.shape == (0,)
    s = march_rays(torch.zeros(0, 3), torch.zeros(0, 3), near, far, torch.ones(4, 4, 4, dtype=torch.bool), BOX, 8)
    assert s.n_rays == 0 and s.n_samples == 0 and s.counts.shape == (0,)


def test_march_input_errors():
    o, d = rays(((0, 0, -3), (0, 0, 1)))
    near, far = ray_aabb(o, d, BOX)
    with pytest.raises(InputError, match="n_samples"):
        march_rays(o, d, near, far, None, BOX, 0)
    with pytest.raises(InputError, match="cubic"):
        march_rays(o, d, near, far, torch.ones(4, 4, 2, dtype=torch.bool), BOX, 4)
    with pytest.raises(InputError, match="aabb"):
        ray_aabb(o, d, torch.tensor([1.0, 0, 0, -1, 1, 1]))
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        ray_aabb(o[:, :2], d, BOX)
    assert math.isfinite(float(far[0]))

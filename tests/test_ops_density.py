"""Density grid: update rule, visibility, bitfields, Morton order (synctalk.ops.density)."""
from __future__ import annotations

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import (cell_centers, cells_seen, from_morton_order, morton3, morton3_decode, occupancy_index,
                          pack_bitfield, to_morton_order, unpack_bitfield, update_density_grid)

BOX = torch.tensor([-1.0, -0.5, -1.0, 1.0, 0.5, 1.0])


def test_cell_centers_order_and_values():
    c = cell_centers(4, BOX)
    assert c.shape == (64, 3)
    torch.testing.assert_close(c[0], torch.tensor([-0.75, -0.375, -0.75]))
    torch.testing.assert_close(c[1], torch.tensor([-0.75, -0.375, -0.25]))      # iz fastest
    torch.testing.assert_close(c[4 * 4], torch.tensor([-0.25, -0.375, -0.75]))  # ix slowest
    assert torch.equal(occupancy_index(c, BOX, 4), torch.arange(64))


def test_decay_max_rule_and_unseen_cells_are_zero():
    R = 4
    gen = torch.Generator().manual_seed(0)
    grid = torch.rand(R, R, R, generator=gen) * 2
    seen = torch.rand(R, R, R, generator=gen) > 0.3
    target = torch.rand(R, R, R, generator=gen) * 2 + 5 * (~seen)   # large where unseen: must still be 0

    def density_fn(p):
        # a function of the cell only: jittered points must fall in the cell they stand for
        return target.reshape(-1)[occupancy_index(p, BOX, R)]

    new, occ = update_density_grid(grid, density_fn, BOX, seen, decay=0.9, threshold_cap=100.0, generator=gen)
    want = torch.where(seen, torch.maximum(grid * 0.9, target), torch.zeros(()))
    torch.testing.assert_close(new, want)
    assert torch.equal(occ, seen & (want > want[seen].mean()))
    assert grid.shape == new.shape and new.dtype == torch.float32


def test_threshold_is_min_of_mean_and_cap():
    R = 4
    seen = torch.ones(R, R, R, dtype=torch.bool)
    values = torch.zeros(R, R, R)
    values[:2] = 100.0                               # half the cells: mean 50 > cap 10
    values[2, 0] = 20.0                              # above the cap, far below the mean
    fn = lambda p: values.reshape(-1)[occupancy_index(p, BOX, R)]  # noqa: E731
    new, occ = update_density_grid(torch.zeros(R, R, R), fn, BOX, seen, threshold_cap=10.0)
    assert torch.equal(occ, new > 10.0) and bool(occ[2, 0].all())
    new, occ = update_density_grid(torch.zeros(R, R, R), fn, BOX, seen, threshold_cap=1e9)
    assert torch.equal(occ, new > new.mean()) and not bool(occ[2, 0].any())
    flat, occ = update_density_grid(torch.zeros(R, R, R), lambda p: torch.ones(len(p)), BOX, seen)
    assert not occ.any()                             # all equal to the mean: strictly greater fails
    _, occ = update_density_grid(torch.zeros(R, R, R), fn, BOX, torch.zeros_like(seen))
    assert not occ.any()


def test_jitter_fraction_points_per_cell_and_seed():
    R = 4
    seen = torch.ones(R, R, R, dtype=torch.bool)
    calls = []

    def fn(p):
        calls.append(p.shape[0])
        return p[:, 0] + 5.0                        # in [4, 6], largest at the cell's max-x side

    grid = torch.full((R, R, R), 2.0)
    a, _ = update_density_grid(grid, fn, BOX, seen, fraction=0.25, chunk=5, n_points_per_cell=3,
                               generator=torch.Generator().manual_seed(1))
    b, _ = update_density_grid(grid, fn, BOX, seen, fraction=0.25, chunk=5, n_points_per_cell=3,
                               generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert max(calls) <= 15 and sum(calls) == 2 * 16 * 3          # 16 of 64 cells, 3 points each
    assert int((a == grid * 0.95).sum()) == 48 and int((a >= 4).sum()) == 16  # the others only decayed
    fresh, _ = update_density_grid(torch.zeros(R, R, R), fn, BOX, seen, n_points_per_cell=8,
                                   generator=torch.Generator().manual_seed(2))
    lo_x = cell_centers(R, BOX)[:, 0].view(R, R, R) - 0.25         # cell min x
    assert bool((fresh >= lo_x + 5.0).all()) and bool((fresh <= lo_x + 5.5).all())
    with pytest.raises(InputError, match="fraction"):
        update_density_grid(grid, fn, BOX, seen, fraction=0.0)


def test_bitfield_round_trip_and_bit_order():
    bits = torch.zeros(16, dtype=torch.bool)
    bits[0] = bits[9] = bits[15] = True
    assert pack_bitfield(bits).tolist() == [1, 2 + 128]
    gen = torch.Generator().manual_seed(3)
    for n in (8 * 64, 13):
        occ = torch.rand(n, generator=gen) > 0.5
        packed = pack_bitfield(occ)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(unpack_bitfield(packed, n), occ)
    grid = torch.rand(8, 8, 8, generator=gen) > 0.7
    assert torch.equal(unpack_bitfield(pack_bitfield(grid)).view(8, 8, 8), grid)
    with pytest.raises(InputError):
        unpack_bitfield(packed, 100)


def test_morton3_known_values_and_round_trips():
    assert morton3(torch.tensor(1), torch.tensor(0), torch.tensor(0)).item() == 1
    assert morton3(0, 1, 0).item() == 2 and morton3(0, 0, 1).item() == 4
    assert morton3(1, 1, 1).item() == 7 and morton3(2, 0, 0).item() == 8
    # x=011, y=101, z=111: bit triples (z y x) per level 111, 101, 110 -> 0b110_101_111
    assert morton3(3, 5, 7).item() == 0b110101111 == 431
    assert morton3(2 ** 20, 0, 0).item() == 2 ** 60
    gen = torch.Generator().manual_seed(4)
    xyz = torch.randint(0, 2 ** 21, (3, 1000), generator=gen)
    back = morton3_decode(morton3(*xyz))
    assert all(torch.equal(b, a) for a, b in zip(xyz, back))
    R = 8
    r = torch.arange(R)
    ix, iy, iz = torch.meshgrid(r, r, r, indexing="ij")
    codes = morton3(ix, iy, iz)
    assert torch.equal(codes.reshape(-1).sort().values, torch.arange(R ** 3))
    assert torch.equal(to_morton_order(codes), torch.arange(R ** 3))
    grid = torch.rand(R, R, R, generator=gen)
    assert torch.equal(from_morton_order(to_morton_order(grid), R), grid)
    with pytest.raises(InputError, match="power-of-two"):
        to_morton_order(torch.zeros(6, 6, 6))


def look_at(eye, target):
    """OpenCV camera-to-world (x right, y down, z forward) at ``eye`` looking at ``target``."""
    eye, target = torch.tensor(eye), torch.tensor(target)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0]), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.stack([x, y, z], dim=1)
    c2w[:3, 3] = eye
    return c2w


def test_cells_seen_by_a_camera_looking_at_the_box():
    R, H, W = 8, 40, 60
    K = torch.tensor([[150.0, 0, W / 2 - 0.5], [0, 150.0, H / 2 - 0.5], [0, 0, 1]])
    cam = look_at([0.0, 0.0, -4.0], [0.0, 0.0, 0.0])
    seen = cells_seen(cam[None], K, H, W, BOX, R)
    # exact predicate for every centre, written out directly
    c = cell_centers(R, BOX)
    pc = (c - cam[:3, 3]) @ cam[:3, :3]
    u = 150.0 * pc[:, 0] / pc[:, 2] + W / 2 - 0.5
    v = 150.0 * pc[:, 1] / pc[:, 2] + H / 2 - 0.5
    want = (pc[:, 2] > 0) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    assert torch.equal(seen.reshape(-1), want)
    assert bool(seen[3:5, 3:5, :].all())                 # the middle is seen
    # the near corner cell (-0.875, -0.4375, -0.875) projects to u = 29.5 ± 150·0.875/3.125 = 29.5 ± 42
    assert not bool(seen[0, 0, 0]) and 0 < int(seen.sum()) < R ** 3
    behind = look_at([0.0, 0.0, -4.0], [0.0, 0.0, -8.0])
    assert not cells_seen(behind[None], K, H, W, BOX, R).any()
    wide = torch.tensor([[5.0, 0, W / 2], [0, 5.0, H / 2], [0, 0, 1]])
    both = cells_seen(torch.stack([behind, cam]), torch.stack([K, wide]), H, W, BOX, R, cameras_per_chunk=1,
                      cells_per_chunk=100)
    assert bool(both.all())                              # union over cameras; the wide one sees all

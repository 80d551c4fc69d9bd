"""Grid encoding (synctalk.ops.grid): level rules, exact interpolation of (bi/tri)linear
functions, dense and hashed index formulas, tri-plane plane order, gradients."""
from __future__ import annotations

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import GridEncoder, GridSpec, TriPlaneEncoder, grid_encode, init_table, triplane_encode
from synctalk.ops.grid import TRIPLANE_AXES, encode_reference


def vertex_coords(spec: GridSpec, level: int) -> torch.Tensor:
    """Integer vertex coordinates ``[rows, dim]`` of a dense level, row = Σ_d i_d (res+1)^d."""
    n = spec.resolutions[level] + 1
    row = torch.arange(spec.level_rows[level])
    return torch.stack([(row // n ** d) % n for d in range(spec.dim)], dim=-1)


# ------------------------------------------------------------------------------- spec


def test_spec_levels_offsets_and_dense_or_hashed():
    spec = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=4, max_resolution=16, log2_hashmap_size=8)
    assert spec.resolutions == (4, 8, 16)
    assert spec.hashed == (False, False, True)           # 25, 81 ≤ 256 < 289
    assert spec.level_rows == (25, 81, 256)
    assert spec.offsets == (0, 25, 106, 362)
    assert spec.n_params == 362 and spec.out_dim == 6
    spec3 = GridSpec(dim=3, n_levels=2, n_features=1, base_resolution=3, max_resolution=8, log2_hashmap_size=6)
    assert spec3.resolutions == (3, 8) and spec3.hashed == (False, True)   # 64 ≤ 64 < 729
    assert spec3.level_rows == (64, 64)
    one = GridSpec(dim=2, n_levels=1, n_features=1, base_resolution=5, max_resolution=5, log2_hashmap_size=4)
    assert one.resolutions == (5,) and one.hashed == (True,)


def test_geometric_resolutions_reach_max_exactly():
    # 16·32^(9/9) and 64·8^(11/11) evaluate to 511.99999… in floating point
    assert GridSpec(2, 10, 2, 16, 512, 18).resolutions[-1] == 512
    spec = GridSpec(2, 12, 1, 64, 512, 14)
    assert spec.resolutions[0] == 64 and spec.resolutions[-1] == 512
    assert spec.resolutions == tuple(sorted(spec.resolutions))
    assert spec.hashed == tuple((r + 1) ** 2 > 2 ** 14 for r in spec.resolutions)


@pytest.mark.parametrize("kwargs", [dict(dim=4), dict(n_levels=0), dict(n_features=0),
                                    dict(max_resolution=2), dict(log2_hashmap_size=40)])
def test_bad_spec_is_input_error(kwargs):
    base = dict(dim=2, n_levels=2, n_features=1, base_resolution=4, max_resolution=8, log2_hashmap_size=8)
    with pytest.raises(InputError):
        GridSpec(**{**base, **kwargs})


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("dim", [2, 3])
def test_dense_levels_interpolate_multilinear_functions_exactly(dim):
    """Tables holding f(vertex/res) for f = 1 + 2x - y (+3z) and f = x·y(·z) — both
    multilinear — must interpolate f exactly everywhere on dense levels."""
    torch.manual_seed(0)
    spec = GridSpec(dim=dim, n_levels=3, n_features=2, base_resolution=3, max_resolution=12, log2_hashmap_size=16)
    assert not any(spec.hashed)
    table = torch.zeros(spec.n_params, 2, dtype=torch.float64)
    for level in range(spec.n_levels):
        v = vertex_coords(spec, level).double() / spec.resolutions[level]
        rows = slice(spec.offsets[level], spec.offsets[level + 1])
        lin = 1 + 2 * v[:, 0] - v[:, 1] + (3 * v[:, 2] if dim == 3 else 0)
        table[rows, 0] = lin
        table[rows, 1] = v.prod(dim=1)
    x = torch.rand(500, dim, dtype=torch.float64)
    x[:4] = torch.tensor([[0.0] * dim, [1.0] * dim, [0.5] * dim, [1.0] + [0.0] * (dim - 1)], dtype=torch.float64)
    out = grid_encode(x, table, spec).view(-1, spec.n_levels, 2)
    lin = 1 + 2 * x[:, 0] - x[:, 1] + (3 * x[:, 2] if dim == 3 else 0)
    for level in range(spec.n_levels):
        torch.testing.assert_close(out[:, level, 0], lin, rtol=0, atol=1e-12)
        torch.testing.assert_close(out[:, level, 1], x.prod(dim=1), rtol=0, atol=1e-12)
    ref = encode_reference(x.unsqueeze(0), table.unsqueeze(0), spec)
    torch.testing.assert_close(out.view(500, -1), ref, rtol=0, atol=1e-12)


def test_dense_index_formula_by_row_number():
    """A table whose feature is its own row number returns, at a vertex, the row that
    vertex is stored in: offset + i + j·(res+1)."""
    spec = GridSpec(dim=2, n_levels=2, n_features=1, base_resolution=4, max_resolution=8, log2_hashmap_size=10)
    table = torch.arange(spec.n_params, dtype=torch.float32).unsqueeze(1)
    x = torch.tensor([[3 / 8, 5 / 8]])                     # vertex (3, 5) of level 1, (1.5, 2.5) of level 0
    out = grid_encode(x, table, spec)
    assert out[0, 1].item() == 25 + 3 + 5 * 9
    # level 0 at (1.5, 2.5): the mean of rows of vertices (1,2), (2,2), (1,3), (2,3)
    assert out[0, 0].item() == pytest.approx((11 + 12 + 16 + 17) / 4)


@pytest.mark.parametrize("dim,res,vertex,expected", [
    # (3·1 XOR 5·2654435761) mod 2^8: 5·2654435761 = 13272178805 = 0x3_1715_6075, low byte
    # 0x75; 0x75 XOR 0x03 = 0x76 = 118
    (2, 16, (3, 5), 118),
    # (2 XOR 7·2654435761 XOR 4·805459861) mod 2^8: 7·2654435761 = 0x4_5384_53D7,
    # 4·805459861 = 0xC009_5E54; low bytes 0x02 ^ 0xD7 ^ 0x54 = 0x81 = 129
    (3, 8, (2, 7, 4), 129),
])
def test_hashed_index_formula_by_hand(dim, res, vertex, expected):
    assert (7 * 2654435761) & 0xFF == 0xD7 and (4 * 805459861) & 0xFF == 0x54 and (5 * 2654435761) & 0xFF == 0x75
    spec = GridSpec(dim=dim, n_levels=1, n_features=1, base_resolution=res, max_resolution=res, log2_hashmap_size=8)
    assert spec.hashed == (True,)
    table = torch.arange(spec.n_params, dtype=torch.float32).unsqueeze(1)
    x = torch.tensor([vertex], dtype=torch.float32) / res
    assert grid_encode(x, table, spec)[0, 0].item() == expected


def test_hashed_level_interpolates_its_corner_rows():
    """Off-vertex, a hashed level mixes its four corners' rows with bilinear weights."""
    spec = GridSpec(dim=2, n_levels=1, n_features=1, base_resolution=8, max_resolution=8, log2_hashmap_size=6)
    table = torch.randn(spec.n_params, 1, dtype=torch.float64)
    x = torch.tensor([[2.25 / 8, 6.5 / 8]], dtype=torch.float64)
    mask = 63

    def h(i, j):
        return (i ^ (j * 2654435761)) & mask

    want = (0.75 * 0.5 * table[h(2, 6)] + 0.25 * 0.5 * table[h(3, 6)]
            + 0.75 * 0.5 * table[h(2, 7)] + 0.25 * 0.5 * table[h(3, 7)])
    torch.testing.assert_close(grid_encode(x, table, spec)[0], want)


@pytest.mark.parametrize("dim", [2, 3])
def test_fast_path_matches_gather_reference(dim):
    """grid_sample-based dense levels equal the plain gather formula, values and gradients,
    including points on the borders and on vertices."""
    torch.manual_seed(1)
    spec = GridSpec(dim=dim, n_levels=4, n_features=3, base_resolution=2, max_resolution=16,
                    log2_hashmap_size=8 if dim == 2 else 10)
    assert True in spec.hashed and False in spec.hashed
    table = torch.randn(spec.n_params, 3, requires_grad=True)
    x = torch.rand(300, dim)
    x[:3] = torch.tensor([[0.0] * dim, [1.0] * dim, [0.25] * dim])
    g = torch.randn(300, spec.out_dim)
    out = grid_encode(x, table, spec)
    (grad_fast,) = torch.autograd.grad((out * g).sum(), table)
    ref = encode_reference(x.unsqueeze(0), table.unsqueeze(0), spec)
    (grad_ref,) = torch.autograd.grad((ref * g).sum(), table)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-5, atol=1e-5)


def test_inputs_outside_unit_cube_are_clamped():
    spec = GridSpec(dim=2, n_levels=2, n_features=1, base_resolution=4, max_resolution=8, log2_hashmap_size=6)
    table = torch.randn(spec.n_params, 1)
    out = grid_encode(torch.tensor([[-0.5, 1.5], [0.0, 1.0]]), table, spec)
    torch.testing.assert_close(out[0], out[1])


def test_float16_table_gives_float32_close_to_float32_table():
    torch.manual_seed(2)
    spec = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=4, max_resolution=16, log2_hashmap_size=8)
    table = init_table(spec, scale=1.0, dtype=torch.float16)
    x = torch.rand(64, 2)
    out = grid_encode(x, table, spec)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, grid_encode(x, table.float(), spec))


# ------------------------------------------------------------------------------- tri-plane


def test_triplane_plane_order_xy_yz_xz():
    """Plane p holds f(u, v) = u + 10 v of its own axes; the output must read (x,y), (y,z), (x,z)."""
    spec = GridSpec(dim=2, n_levels=2, n_features=1, base_resolution=4, max_resolution=8, log2_hashmap_size=10)
    tables = torch.zeros(3, spec.n_params, 1, dtype=torch.float64)
    for level in range(spec.n_levels):
        v = vertex_coords(spec, level).double() / spec.resolutions[level]
        tables[:, spec.offsets[level]:spec.offsets[level + 1], 0] = v[:, 0] + 10 * v[:, 1]
    xyz = torch.rand(100, 3, dtype=torch.float64)
    out = triplane_encode(xyz, tables, spec).view(100, 3, spec.n_levels)
    assert TRIPLANE_AXES == ((0, 1), (1, 2), (0, 2))
    for plane, (a, b) in enumerate(TRIPLANE_AXES):
        for level in range(spec.n_levels):
            torch.testing.assert_close(out[:, plane, level], xyz[:, a] + 10 * xyz[:, b])


def test_triplane_equals_three_grid_encodes():
    torch.manual_seed(3)
    spec = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=4, max_resolution=32, log2_hashmap_size=8)
    tables = init_table(spec, scale=1.0, planes=3)
    xyz = torch.rand(200, 3)
    out = triplane_encode(xyz, tables, spec)
    parts = [grid_encode(xyz[:, list(ax)], tables[p], spec) for p, ax in enumerate(TRIPLANE_AXES)]
    torch.testing.assert_close(out, torch.cat(parts, dim=1))


# ------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dim", [2, 3])
def test_gradcheck_grid_encode_table_and_x(dim):
    torch.manual_seed(4)
    spec = GridSpec(dim=dim, n_levels=2, n_features=2, base_resolution=2, max_resolution=5,
                    log2_hashmap_size=4 if dim == 2 else 5)
    assert spec.hashed == (False, True)
    table = torch.randn(spec.n_params, 2, dtype=torch.float64, requires_grad=True)
    x = (0.05 + 0.9 * torch.rand(6, dim, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, p: grid_encode(p, t, spec), (table, x))


def test_gradcheck_triplane_tables_and_xyz():
    torch.manual_seed(5)
    spec = GridSpec(dim=2, n_levels=2, n_features=1, base_resolution=2, max_resolution=5, log2_hashmap_size=4)
    tables = torch.randn(3, spec.n_params, 1, dtype=torch.float64, requires_grad=True)
    xyz = (0.05 + 0.9 * torch.rand(5, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, p: triplane_encode(p, t, spec), (tables, xyz))


# ------------------------------------------------------------------------------- modules and errors


def test_encoder_modules_hold_tables_as_parameters():
    spec3 = GridSpec(dim=3, n_levels=3, n_features=2, base_resolution=4, max_resolution=16, log2_hashmap_size=10)
    enc = GridEncoder(spec3, backend="torch", generator=torch.Generator().manual_seed(0))
    assert enc.out_dim == 6 and enc.table.shape == (spec3.n_params, 2)
    assert [n for n, _ in enc.named_parameters()] == ["table"]
    assert float(enc.table.detach().abs().max()) <= 1e-4
    spec2 = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=4, max_resolution=16, log2_hashmap_size=8)
    tri = TriPlaneEncoder(spec2, init_scale=0.1)
    assert tri.out_dim == 18 and tri.tables.shape == (3, spec2.n_params, 2)
    xyz = torch.rand(32, 3)
    out = tri(xyz)
    assert out.shape == (32, 18)
    out.square().sum().backward()
    assert tri.tables.grad is not None and tri.tables.grad.abs().sum() > 0
    assert enc(xyz).shape == (32, 6)
    a = init_table(spec2, generator=torch.Generator().manual_seed(7))
    b = init_table(spec2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_shape_errors_are_input_errors():
    spec = GridSpec(dim=2, n_levels=2, n_features=1, base_resolution=4, max_resolution=8, log2_hashmap_size=6)
    table = init_table(spec)
    with pytest.raises(InputError, match=r"\[N, 2\]"):
        grid_encode(torch.rand(4, 3), table, spec)
    with pytest.raises(InputError, match="table must have shape"):
        grid_encode(torch.rand(4, 2), table[:-1], spec)
    with pytest.raises(InputError, match="2-D GridSpec"):
        triplane_encode(torch.rand(4, 3), table, GridSpec(3, 1, 1, 4, 4, 8))


def test_empty_inputs():
    spec2 = GridSpec(dim=2, n_levels=3, n_features=2, base_resolution=4, max_resolution=32, log2_hashmap_size=8)
    tables = init_table(spec2, planes=3).requires_grad_()
    out = triplane_encode(torch.zeros(0, 3), tables, spec2)
    assert out.shape == (0, 18)
    out.sum().backward()
    assert tables.grad is not None and tables.grad.abs().sum() == 0
    spec3 = GridSpec(dim=3, n_levels=3, n_features=2, base_resolution=4, max_resolution=32, log2_hashmap_size=8)
    assert grid_encode(torch.zeros(0, 3), init_table(spec3), spec3).shape == (0, 6)

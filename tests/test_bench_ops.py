"""``synctalk bench ops`` on tiny shapes: JSON structure, backends, ratios."""
from __future__ import annotations

import json

import pytest

from synctalk.cli import main
from synctalk.ops import backend as be

TINY = ["--rays", "32", "--samples", "4", "--levels", "3", "--base-res", "4", "--max-res", "32",
        "--log2-hashmap-size", "8", "--grid-res", "8", "--repeats", "2", "--warmup", "0", "--threads", "1"]


@pytest.fixture
def registry():
    """A torch-only registry for the test; the real one (native included) is restored after."""
    saved = {op: dict(impls) for op, impls in be._REGISTRY.items()}
    loaders = dict(be._LOADERS)
    for impls in be._REGISTRY.values():
        for name in [n for n in impls if n != "torch"]:
            del impls[name]
    be._LOADERS.clear()
    yield be
    be._REGISTRY.clear()
    be._REGISTRY.update(saved)
    be._LOADERS.clear()
    be._LOADERS.update(loaders)


def test_bench_ops_json_with_torch_only(capsys, tmp_path, registry):
    out_file = tmp_path / "ops.json"
    assert main(["bench", "ops", "--json", "--out", str(out_file), *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out_file.read_text()) == result
    assert result["bench"] == "ops" and result["threads"] == 1
    assert result["shapes"]["points"] == 128 and result["shapes"]["triplane"]["hashed"] == [False, False, True]
    assert set(result["ops"]) == {"grid_encode", "triplane_encode", "ray_aabb", "march_rays", "composite",
                                  "march_rays+composite"}
    for op, entry in result["ops"].items():
        torch_res = entry["backends"]["torch"]
        assert 0 < torch_res["fwd"]["min_ms"] <= torch_res["fwd"]["median_ms"]
        assert ("fwd_bwd" in torch_res) == (op not in ("ray_aabb", "march_rays"))
        if set(entry["backends"]) == {"torch"}:
            assert "ratio_vs_torch" not in entry


def test_bench_ops_reports_ratio_for_another_backend(capsys, registry):
    torch_grid = registry.resolve("grid_encode", "torch")
    registry.register_backend("grid_encode", "native", lambda x, t, s: torch_grid(x, t, s))
    assert main(["bench", "ops", "--json", "--ops", "grid_encode,ray_aabb", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    entry = result["ops"]["grid_encode"]
    assert set(entry["backends"]) == {"native", "torch"}
    ratio = entry["ratio_vs_torch"]["native"]
    assert ratio["fwd"]["median"] > 0 and ratio["fwd_bwd"]["min"] > 0 and ratio["max_abs_diff"] == 0.0
    assert list(result["ops"]) == ["grid_encode", "ray_aabb"] and "ratio_vs_torch" not in result["ops"]["ray_aabb"]


def test_bench_ops_table_and_bad_op(capsys):
    assert main(["bench", "ops", "--ops", "composite", *TINY]) == 0
    assert "composite" in capsys.readouterr().out
    assert main(["bench", "ops", "--ops", "nope", *TINY]) == 2
    assert "unknown op" in capsys.readouterr().err

"""``synctalk bench train`` on the tiny test subject: JSON fields, backends really used, ratios.

Iteration counts and rays are tiny (the timings mean nothing); what is checked is that each
backend's steps ran on that backend (counted op calls), that the ratios are the quotients
of the reported timings, and that a slower backend shows up as slower.
"""
from __future__ import annotations

import json
import time

import pytest

from synctalk.bench.train import OpCallCounter, _split_iters, run_bench, run_parity
from synctalk.cli import main
from synctalk.errors import InputError
from synctalk.nerf.config import load_preset
from synctalk.ops import backend as be

#: Hot ops a head/lip training step must run on its backend (ray_aabb is left out: the
#: renderer calls it with backend="auto").
STEP_OPS = ("triplane_encode", "march_rays", "composite")
SMALL = {"rays_per_step": 256, "occ_resolution": 32}


@pytest.fixture
def native():
    if "native" not in be.available("grid_encode"):
        pytest.skip(f"native ops not available: {be.loader_error('native')}")


@pytest.fixture
def registry():
    """Restore the backend registry after a test that replaces an implementation."""
    saved = {op: dict(impls) for op, impls in be._REGISTRY.items()}
    yield be
    for op, impls in saved.items():
        be._REGISTRY[op].clear()
        be._REGISTRY[op].update(impls)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def test_steps_json_backends_and_ratios(nerf_subject, native, capsys, tmp_path):
    out_file = tmp_path / "train.json"
    assert main(["bench", "train", "--json", "--subject", str(nerf_subject), "--warmup", "1", "--repeats", "2",
                 "--rays", "256", "--threads", "1", "--work-dir", str(tmp_path / "work"),
                 "--out", str(out_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out_file.read_text()) == result
    assert result["bench"] == "train" and result["mode"] == "steps" and result["preset"] == "demo"
    assert result["subject_kind"] == "given" and result["threads"] == 1 and result["repeats"] == 2
    assert result["backends"] == ["torch", "native"] and result["config"]["rays_per_step"] == 256
    assert result["config"]["size"] == 128  # the demo preset's 256, capped at the subject's size
    assert result["process_cpu_s"] > 0 and set(result["load_avg_1min"]) == {"start", "end"}
    assert sorted((tmp_path / "work").iterdir()) == [tmp_path / "work" / "model_native",
                                                      tmp_path / "work" / "model_torch"]
    assert set(result["stages"]) == {"head", "lip"}
    for stage, entry in result["stages"].items():
        for b, e in entry["backends"].items():
            assert 0 < e["step_ms"]["min"] <= e["step_ms"]["median"] and e["cpu_ms"]["median"] > 0
            assert e["step_ms"]["min"] <= min(e["step_ms"]["median_first_half"], e["step_ms"]["median_second_half"])
            assert e["samples_per_ray"] > 0 and e["psnr"] > 0
            assert e["rays_per_s"] == pytest.approx(256 / (e["step_ms"]["median"] / 1e3), rel=1e-3)
            # every step ran the hot ops on its own backend, and none on the other one
            other = "torch" if b == "native" else "native"
            for op in STEP_OPS:
                assert e["op_calls"][b][op] >= 2, (stage, b, op)
                assert op not in e["op_calls"].get(other, {}), (stage, b, op)
        t, n = entry["backends"]["torch"], entry["backends"]["native"]
        r = entry["ratio_vs_torch"]["native"]
        assert r["median"] == _ratio(t["step_ms"]["median"], n["step_ms"]["median"])
        assert r["min"] == _ratio(t["step_ms"]["min"], n["step_ms"]["min"])
        assert r["cpu_median"] == _ratio(t["cpu_ms"]["median"], n["cpu_ms"]["median"])
        assert r["amortized"] == _ratio(t["amortized_step_ms"], n["amortized_step_ms"])
        assert "torch" not in entry["ratio_vs_torch"]
    # the lip stage draws patches: the same number of rays per step on both backends
    assert result["stages"]["lip"]["backends"]["torch"]["op_calls"]["torch"]["composite"] == \
        result["stages"]["lip"]["backends"]["native"]["op_calls"]["native"]["composite"]


def test_a_slower_backend_is_timed_slower(nerf_subject, native, registry, tmp_path):
    fast = registry.resolve("composite", "native")
    delay = 0.25  # longer than a whole 256-ray step of the torch reference

    def slow(*args, **kwargs):
        time.sleep(delay)
        return fast(*args, **kwargs)

    registry.register_backend("composite", "native", slow)
    res = run_bench(nerf_subject, stages=["head"], warmup=0, repeats=2, threads=1, overrides=SMALL,
                    work_dir=tmp_path)
    head = res["stages"]["head"]["backends"]
    calls = head["native"]["op_calls"]["native"]["composite"] / 2  # per step
    assert calls >= 1
    assert head["native"]["step_ms"]["min"] >= 1e3 * delay * calls
    assert res["stages"]["head"]["ratio_vs_torch"]["native"]["min"] < 1
    assert list(res["stages"]) == ["head"]


def test_parity_reports_both_psnrs_and_their_difference(nerf_subject, native, tmp_path):
    res = run_parity(nerf_subject, iters=3, threads=1, work_dir=tmp_path,
                     overrides={**SMALL, "final_val_frames": 1, "size": 64})
    assert res["mode"] == "parity" and res["iters"] == 3
    assert res["stages"] == _split_iters(load_preset("demo"), 3) and sum(res["stages"].values()) == 3
    for b in ("torch", "native"):
        run = res["runs"][b]
        assert run["steps"] == 3 and run["val_frames"] == 1 and 5 < run["val_psnr"] < 60
        assert run["op_calls"][b]["triplane_encode"] >= 3
        assert (tmp_path / f"model_{b}" / "model.pt").is_file()
    assert "triplane_encode" not in res["runs"]["torch"]["op_calls"].get("native", {})
    diff = res["difference_db"]["native"]
    for k in ("val_psnr", "val_psnr_face", "val_psnr_mouth"):
        assert diff[k] == round(res["runs"]["native"][k] - res["runs"]["torch"][k], 4)
    assert diff["within_tolerance"] == (abs(diff["val_psnr"]) <= 0.3 and abs(diff["val_psnr_face"]) <= 0.3)


def test_split_iters_follows_the_preset():
    cfg = load_preset("demo").replace(head_iters=6000, lip_iters=1000, register_iters=0, torso_iters=0)
    assert _split_iters(cfg, 7) == {"head": 6, "lip": 1, "register": 0, "torso": 0}
    assert _split_iters(cfg, 700) == {"head": 600, "lip": 100, "register": 0, "torso": 0}
    assert _split_iters(cfg.replace(register_iters=1000), 8) == {"head": 6, "lip": 1, "register": 1,
                                                                 "torso": 0}
    assert _split_iters(cfg.replace(lip_iters=0), 7) == {"head": 7, "lip": 0, "register": 0, "torso": 0}
    assert sum(_split_iters(cfg.replace(torso_iters=500), 13).values()) == 13


def test_op_call_counter_counts_and_restores(registry):
    import torch

    from synctalk.ops import ray_aabb

    before = registry.resolve("ray_aabb", "torch")
    counter = OpCallCounter()
    rays = torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    box = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    with counter.active():
        snap = counter.snapshot()
        ray_aabb(*rays, box, backend="torch")
        ray_aabb(*rays, box, backend="torch")
        assert counter.since(snap) == {"torch": {"ray_aabb": 2}}
    assert registry.resolve("ray_aabb", "torch") is before
    ray_aabb(*rays, box, backend="torch")
    assert counter.counts["torch"]["ray_aabb"] == 2


def test_bad_arguments_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="stages"):
        run_bench(tmp_path, stages=["torso"])
    with pytest.raises(InputError, match="not available"):
        run_bench(tmp_path, backends=["torch", "nosuch"])
    with pytest.raises(InputError, match="positive"):
        run_parity(tmp_path, iters=0)
    with pytest.raises(InputError, match="not a directory"):
        run_bench(tmp_path / "missing", backends=["torch"])


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["bench", "train", "--device", "cuda", "--subject", ".", "--json"]) == 2
    assert "--device cuda" in capsys.readouterr().err

"""``synctalk bench render``: whole-frame timings per backend, split into parts."""
from __future__ import annotations

import json

import pytest

from synctalk.bench.render import run_bench
from synctalk.cli import main
from synctalk.ops import backend as registry


def test_random_model_renders_an_opaque_head_with_early_termination(one_thread):
    res = run_bench(preset="demo", size=64, frames=2, warmup=0, backends=["torch"], seed=1)
    e = res["backends"]["torch"]
    assert res["model"]["source"] == "random" and res["model"]["size"] == 64
    assert set(e["parts_median_ms"]) == {"march", "field", "composite"}
    assert e["frame_ms"]["min"] <= e["frame_ms"]["median"]
    assert e["fps"] == pytest.approx(1000.0 / e["frame_ms"]["median"], rel=1e-3)
    # the camera sees the head: most rays of the box rectangle hit it …
    assert e["rays_per_frame"] > 0.5 * 64 * 64 * 0.6
    # … and the raised density makes rays stop early: far fewer samples evaluated than marched
    assert 0 < e["samples_per_frame"] < 0.6 * e["rays_per_frame"] * res["model"]["infer_samples"]
    assert res["ratio_vs_torch"] == {}


@pytest.mark.skipif("native" not in registry.available("march_rays"),
                    reason="the native backend is not built here")
def test_native_backend_is_timed_against_torch(one_thread):
    res = run_bench(preset="demo", size=48, frames=1, warmup=1, seed=2)
    assert {"torch", "native"} <= set(res["backends"])
    t, n = res["backends"]["torch"], res["backends"]["native"]
    assert res["ratio_vs_torch"]["native"]["median"] == pytest.approx(
        t["frame_ms"]["median"] / n["frame_ms"]["median"], rel=1e-2)
    # the same frames: the same rays hit the head
    assert t["rays_per_frame"] == n["rays_per_frame"]


def test_trained_model_via_cli(tiny_model, capsys, one_thread):
    assert main(["bench", "render", "--model", str(tiny_model), "--frames", "1", "--warmup", "0",
                 "--backends", "torch", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"]["source"] == "model" and res["model"]["size"] == 64
    assert "torso" in res["backends"]["torch"]["parts_median_ms"]


def test_unknown_backend_is_a_clear_error(capsys):
    assert main(["bench", "render", "--preset", "demo", "--size", "32", "--backends", "nosuch",
                 "--frames", "1"]) == 2
    assert "nosuch" in capsys.readouterr().err

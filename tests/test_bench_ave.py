"""``synctalk bench ave``: the JSON it prints and how its figures are derived.

The real benchmark trains for 20 CPU-minutes on the shared clips; here the clips are small
random stand-ins (no face tracking) and training runs a few steps, which is enough to check
the plumbing: what is reported as final, the mean of the last evaluations, timing fields.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from synctalk.audio.dataset import MouthClip
from synctalk.bench import ave as bench_ave
from synctalk.cli import main
from synctalk.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_clip(name: str, fps: float, seconds: float, seed: int) -> MouthClip:
    g = np.random.default_rng(seed)
    n = int(seconds * fps)
    crops = g.integers(0, 256, (n, 48, 96, 3), dtype=np.uint8)
    mel = g.uniform(-4, 4, (80, int(seconds * 80) + 1)).astype(np.float32)
    return MouthClip(name, fps, crops, np.ones(n, bool), mel, f"{seed:064x}")


@pytest.fixture()
def fake_clips(monkeypatch, tmp_path):
    """Two existing (dummy) clip files whose loading returns random 8 s clips at 25/30 fps."""
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for p in paths:
        p.write_bytes(b"x")
    clips = [_random_clip("a.mp4", 25.0, 8.0, 1), _random_clip("b.mp4", 30.0, 8.0, 2)]
    seen = {}

    def load_clips(inputs, **kw):
        seen["inputs"] = list(inputs)
        return clips

    monkeypatch.setattr("synctalk.audio.dataset.load_clips", load_clips)
    return paths, seen


def test_bench_ave_json(fake_clips, capsys, tmp_path):
    paths, seen = fake_clips
    out = tmp_path / "ave.pt"
    rc = main(["bench", "ave", "--json", "--clips", *map(str, paths), "--minutes", "0.03",
               "--width", "0.125", "--batch-size", "8", "--eval-every", "3", "--last-k", "2",
               "--ema", "0.9", "--select-fraction", "0.1", "--out", str(out)])
    assert rc == 0 and seen["inputs"] == [str(p) for p in paths]
    r = json.loads(capsys.readouterr().out)
    assert [c["frames"] for c in r["clips"]] == [200, 240]
    assert [c["test_frames"] for c in r["clips"]] == [20, 24]
    assert r["config"]["ema"] == 0.9 and r["config"]["keep"] == "best"
    assert r["config"]["clock"] == "cpu" and r["config"]["val_fraction"] == 0.1
    assert r["config"]["select_fraction"] == 0.1 and r["config"]["epochs"] == 16.0
    assert r["steps"] >= 1 and r["train_cpu_s"] > 0 and r["train_wall_s"] > 0
    assert r["s_per_epoch_cpu"] == pytest.approx(r["train_cpu_s"] / r["epochs"], rel=0.05)
    evals = r["evals"]
    assert evals[-1]["step"] == r["steps"]
    # final = the last evaluation; last_k_mean = the mean of the last two.
    for key in ("sync_acc", "offset_acc_1s", "val_loss"):
        assert r["final"][key] == evals[-1][key]
        vals = [e[key] for e in evals[-2:] if e[key] is not None]
        expect = round(float(np.mean(vals)), 4) if vals else None
        assert r["last_k_mean"][key] == pytest.approx(expect, abs=1e-4)
    assert r["last_k_mean"]["steps"] == [e["step"] for e in evals[-2:]]
    assert r["final_meets_targets"] == all(
        (r["final"][k] or 0) >= v for k, v in bench_ave.TARGETS.items())
    assert r["machine"]["torch_threads"] == 1 and len(r["machine"]["loadavg_start"]) == 3
    # selected: the evaluation with the best selection-slice score, its *test* figures
    chosen = r["selected"]["step"]
    row = next(e for e in evals if e["step"] == chosen)
    assert r["selected"]["sync_acc"] == row["sync_acc"]
    assert r["selected_on"]["sync_acc"] == row["select_sync_acc"]
    assert all("select_offset_acc_1s" in e for e in evals)
    # --out keeps the selected (averaged) model
    from synctalk.audio.ave import load_ave

    model, meta = load_ave(out)
    assert meta["step"] == chosen and model.width == 0.125


def test_bench_ave_keeps_the_final_model_by_default(fake_clips, capsys, tmp_path):
    paths, _ = fake_clips
    out = tmp_path / "ave.pt"
    assert main(["bench", "ave", "--json", "--clips", *map(str, paths), "--minutes", "0.02",
                 "--width", "0.125", "--batch-size", "8", "--eval-every", "3",
                 "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["keep"] == "last" and r["selected"]["step"] == r["steps"]
    assert r["selected"]["sync_acc"] == r["final"]["sync_acc"] and r["selected_on"] == {}
    from synctalk.audio.ave import load_ave

    assert load_ave(out)[1]["step"] == r["steps"]


def test_bench_ave_human_readable_summary(fake_clips, capsys):
    paths, _ = fake_clips
    assert main(["bench", "ave", "--clips", *map(str, paths), "--minutes", "0.02",
                 "--width", "0.125", "--batch-size", "8", "--eval-every", "2"]) == 0
    text = capsys.readouterr().out
    assert "AVE bench:" in text and "per epoch" in text
    assert "selected" in text and "final" in text and "last_k_mean" in text
    assert "targets" in text


def test_bench_ave_missing_clip_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(InputError, match="not found"):
        bench_ave.bench(type("A", (), {"clips": [str(tmp_path / "nope.mp4")]})())
    assert main(["bench", "ave", "--clips", str(tmp_path / "nope.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.mp4" in err[0]


def test_last_k_mean_and_targets():
    evals = [{"step": 1, "sync_acc": 0.1, "offset_acc_1s": 0.2},
             {"step": 2, "sync_acc": 0.5, "offset_acc_1s": float("nan")},
             {"step": 3, "sync_acc": 0.7, "offset_acc_1s": 0.6}]
    m = bench_ave.last_k_mean(evals, 2)
    assert m["evaluations"] == 2 and m["steps"] == [2, 3]
    assert m["sync_acc"] == pytest.approx(0.6) and m["offset_acc_1s"] == pytest.approx(0.6)
    assert "offset_acc_2s" not in m
    assert math.isnan(bench_ave.last_k_mean([{"step": 1, "sync_acc": float("nan")}], 3)["sync_acc"])
    assert bench_ave.meets({"sync_acc": 0.65, "offset_acc_1s": 0.6, "offset_acc_2s": 0.8})
    assert not bench_ave.meets({"sync_acc": 0.9, "offset_acc_1s": 0.59, "offset_acc_2s": 0.9})
    assert not bench_ave.meets({"sync_acc": None, "offset_acc_1s": 0.9, "offset_acc_2s": 0.9})

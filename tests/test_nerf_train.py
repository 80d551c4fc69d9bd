"""Training runs on the tiny subject: loss goes down, exact resume, bad input, inference API, CLI."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from synctalk.cli import main
from synctalk.errors import InputError, ModelFileError, OutputError
from synctalk.nerf.config import load_preset
from synctalk.nerf.inference import TalkingHead
from synctalk.nerf.trainer import Trainer, train


def tiny(**kw):
    base = dict(size=64, grid_levels=4, grid_features=2, grid_base_res=8, grid_max_res=64,
                grid_log2_hashmap=12, hidden_dim=32, geo_dim=16, occ_resolution=16, occ_warmup=2,
                occ_update_every=2, samples_per_ray=8, infer_samples=16, rays_per_step=256,
                frames_per_step=2, lip_patch=12, head_iters=4, lip_iters=2, torso_iters=2,
                register_iters=2, register_rays=64, pose_warmup=2,
                torso_rays_per_step=256, torso_levels=3, torso_base_res=8, torso_max_res=64,
                torso_anchors=4, val_every=0, val_frames=1, final_val_frames=2, ckpt_every=3,
                log_every=2, time_budget=None, seed=3, w_uncertainty=0.1, w_alpha=0.05,
                audio_pca=16, audio_noise=0.2, mouth_fraction=0.1)
    base.update(kw)
    return load_preset("demo").replace(**base)


def records(model_dir):
    return [json.loads(line) for line in (model_dir / "log.jsonl").read_text().splitlines()]


def final_state(model_dir):
    return torch.load(model_dir / "model.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def trained(nerf_subject, tmp_path_factory):
    """A model trained uninterrupted for the resume comparison (head 4, lip 2, torso 2)."""
    out = tmp_path_factory.mktemp("models") / "a"
    torch.set_num_threads(1)
    res = train(nerf_subject, out, tiny(), progress=False)
    return out, res


def test_model_directory_contents(trained, nerf_subject):
    out, res = trained
    assert res.steps == 10 and not res.interrupted
    assert res.stages == {"head": {"planned": 4, "target": 4, "done": 4},
                          "lip": {"planned": 2, "target": 2, "done": 2},
                          "register": {"planned": 2, "target": 2, "done": 2},
                          "torso": {"planned": 2, "target": 2, "done": 2}}
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["rays_per_step"] == 256 and meta["size"] == 64
    assert meta["subject"]["n_frames"] == 150 and len(meta["subject"]["source_sha256"]) == 64
    assert meta["encoder_id"].startswith("ave-") and meta["audio_in"] == 512
    assert set(meta["box"]) >= {"centre_mm", "scale_per_mm", "axes", "aabb"}
    for name in ("ave.pt", "model.pt", "summary.json", "val/final.png"):
        assert (out / name).is_file(), name
    assert (out / "ave.pt").read_bytes() == (nerf_subject / "ave.pt").read_bytes()
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    assert [c.name for c in ckpts] == ["step_0000009.pt", "step_0000010.pt"]
    ck = torch.load(ckpts[-1], weights_only=True)
    assert {"model", "optimizer", "rng", "stage", "global_step", "plan"} <= set(ck)
    assert "occ.density" in ck["model"] and "occ.occupied" in ck["model"]
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["val"]["val_psnr"]) and summary["steps"] == 10
    recs = records(out)
    assert any(r.get("final") for r in recs) and all("step" in r for r in recs)


def test_pose_corrections_learn_where_they_should(trained, nerf_subject):
    # training frames' corrections learn with the head after pose_warmup, the val frames'
    # only in the register stage (every val frame is in every register step)
    out, res = trained
    delta = final_state(out)["poses.delta"]
    splits = json.loads((nerf_subject / "splits.json").read_text())
    train_moved = delta[splits["train"]].abs().sum(1) > 0
    assert (delta[splits["val"]].abs().sum(1) > 0).all()
    assert 0 < int(train_moved.sum()) <= 2 * 2 + 2  # head steps 3-4 (2 frames each) + 2 lip steps
    assert res.val["pose_corr_val_deg"] > 0 and res.val["pose_corr_train_deg"] > 0


def test_lr_pose_zero_keeps_prep_poses(nerf_subject, tmp_path):
    out = tmp_path / "fixed"
    train(nerf_subject, out, tiny(lr_pose=0.0, register_iters=0, lip_iters=0, torso_iters=0,
                                  pose_warmup=0), progress=False)
    assert not final_state(out)["poses.delta"].any()


def test_resume_after_a_kill_is_bit_exact(trained, nerf_subject, tmp_path):
    ref = final_state(trained[0])
    # stop at step 7 (inside the register stage): a checkpoint is written there
    out = tmp_path / "b"
    res = train(nerf_subject, out, tiny(), progress=False, stop_after=7)
    assert res.interrupted and res.steps == 7 and not (out / "model.pt").exists()
    res = train(nerf_subject, out, None, progress=False, resume=True)
    assert res.steps == 10 and not res.interrupted
    got = final_state(out)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # a hard kill loses the step-7 checkpoint: resuming from step 6 (the end of the lip stage)
    # repeats the register step 7 identically
    out = tmp_path / "c"
    train(nerf_subject, out, tiny(), progress=False, stop_after=7)
    (out / "checkpoints" / "step_0000007.pt").unlink()
    train(nerf_subject, out, None, progress=False, resume=True)
    got = final_state(out)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_training_reduces_the_loss(nerf_subject, tmp_path, one_thread):
    # no occupancy updates in 60 steps: a 16³ grid thresholded at the mean density of a field
    # this young prunes part of the head (the demo warms up longer on a 64³ grid)
    out = tmp_path / "m"
    train(nerf_subject, out, tiny(head_iters=60, lip_iters=0, register_iters=0, torso_iters=0, log_every=10,
                                 rays_per_step=512, occ_warmup=1000,
                                 w_uncertainty=0.0, audio_noise=0.0),
          progress=False)
    recs = [r for r in records(out) if "loss" in r]
    assert len(recs) == 6
    assert recs[-1]["loss"] < 0.7 * recs[0]["loss"]
    assert recs[-1]["psnr"] > recs[0]["psnr"] + 2


def test_bad_input(trained, nerf_subject, tmp_path):
    out, _ = trained
    with pytest.raises(OutputError, match="already holds a model"):
        Trainer(nerf_subject, out, tiny(), progress=False)
    with pytest.raises(OutputError, match="does not exist"):
        Trainer(nerf_subject, tmp_path / "no" / "m", tiny(), progress=False)
    with pytest.raises(InputError, match="larger than the subject"):
        Trainer(nerf_subject, tmp_path / "big", tiny(size=256), progress=False)
    with pytest.raises(InputError, match="no audio encoder"):
        Trainer(nerf_subject, tmp_path / "noave", tiny(), ave=tmp_path / "missing.pt", progress=False)
    # resume against a different subject
    other = tmp_path / "other"
    shutil.copytree(nerf_subject, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="model/subject mismatch.*source_sha256"):
        Trainer(other, out, None, resume=True, progress=False)
    with pytest.raises(ModelFileError, match="not a model directory"):
        Trainer(nerf_subject, tmp_path, None, resume=True, progress=False)


def test_a_model_saved_before_pose_corrections_loads_with_prep_poses(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained[0], old, ignore=shutil.ignore_patterns("checkpoints", "val"))
    state = torch.load(old / "model.pt", weights_only=True)
    del state["model"]["poses.delta"]
    torch.save(state, old / "model.pt")
    head = TalkingHead.load(old)
    assert not head.model.poses.delta.any()
    assert TalkingHead.load(trained[0]).model.poses.delta.any()


def test_talking_head_api(trained, nerf_subject, tmp_path):
    out, _ = trained
    head = TalkingHead.load(out)
    assert (head.size, head.fps, head.n_frames) == (64, 25.0, 150)
    assert head.subject == nerf_subject.resolve() and head.encoder_id.startswith("ave-")
    assert set(head.splits) == {"train", "val"} and head.ave_path.is_file()
    feats = head.subject_audio_features()
    assert feats.shape == (150, 512) and feats.dtype == torch.float32
    rng = np.random.default_rng(0)
    stereo = rng.normal(0, 0.1, (int(44100 * 0.5), 2)).astype(np.float32)
    new = head.encode_audio(stereo, 44100)
    assert new.shape == (13, 512)  # ⌈0.5 s · 25 fps⌉
    val = head.splits["val"][0]
    r = head.render_frame(feats, val, val)
    assert r["rgb"].shape == (64, 64, 3) and r["rgb"].dtype == np.uint8
    assert r["alpha"].shape == (64, 64) and r["alpha"].dtype == np.float32
    assert 0 <= r["alpha"].min() and r["alpha"].max() <= 1 + 1e-5
    assert set(r["timings"]) == {"march", "field", "composite", "torso"}
    r2 = head.render_frame(new, 12, val, blink=1.0)
    assert r2["rgb"].shape == (64, 64, 3)
    # an explicit camera is used as given; the source frame's own camera carries the model's
    # (register-stage) correction, and without it is prep's pose
    c2w = np.load(nerf_subject / "poses.npz")["c2w"][val]
    r3 = head.render_frame(feats, val, val, c2w=c2w)
    assert np.abs(r3["rgb"].astype(int) - r["rgb"].astype(int)).max() > 1
    with torch.no_grad():
        head.model.poses.delta[val] = 0
    r4 = head.render_frame(feats, val, val)
    assert np.abs(r3["rgb"].astype(int) - r4["rgb"].astype(int)).max() <= 1
    with pytest.raises(InputError, match="source frame"):
        head.render_frame(feats, 0, 10_000)
    # missing / damaged model directories
    with pytest.raises(ModelFileError, match="not found"):
        TalkingHead.load(tmp_path / "none")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="damaged"):
        TalkingHead.load(broken)
    (broken / "config.json").write_text("{")
    with pytest.raises(ModelFileError, match="not readable JSON"):
        TalkingHead.load(broken)


def test_cli_train_and_errors(nerf_subject, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", str(nerf_subject), "--out", str(out), "--iters", "3", "--size", "64",
            "--grid-levels", "3", "--grid-max-res", "32", "--grid-log2-hashmap", "10",
            "--occ-resolution", "16", "--rays-per-step", "128", "--samples-per-ray", "6",
            "--infer-samples", "8", "--final-val-frames", "1", "--torso-rays-per-step", "128",
            "--no-progress", "--time-budget", "5"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("train: 3 steps") and "val PSNR" in line and str(out) in line
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["grid_levels"] == 3 and cfg["time_budget"] == 5.0 and cfg["samples_per_ray"] == 6
    assert main(["train", str(nerf_subject), "--out", str(tmp_path / "x"), "--size", "512"]) == 2
    assert "larger than the subject" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "not a subject directory" in capsys.readouterr().err


def test_time_budget_cuts_the_stages_and_still_saves_a_model(nerf_subject, tmp_path):
    out = tmp_path / "budget"
    res = train(nerf_subject, out, tiny(head_iters=100000, lip_iters=100, torso_iters=100,
                                       time_budget=0.01), progress=False)
    assert not res.interrupted and res.steps < 100200
    assert all(p["target"] < p["planned"] for p in res.stages.values())
    assert (out / "model.pt").is_file() and math.isfinite(res.val["val_psnr"])
    TalkingHead.load(out)

"""``synctalk eval`` on a tiny trained model: the report, its numbers and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from synctalk.cli import main


@pytest.fixture(scope="module")
def evaluated(tiny_model, face_landmarker_path, tmp_path_factory):
    import torch

    out = tmp_path_factory.mktemp("eval") / "report"
    torch.set_num_threads(1)
    rc = main(["eval", str(tiny_model), "--out", str(out), "--json",
               "--face-landmarker", str(face_landmarker_path)])
    assert rc == 0
    return out, json.loads((out / "eval.json").read_text())


def test_report_files(evaluated):
    out, res = evaluated
    assert sorted(p.name for p in out.iterdir()) == [
        "eval.json", "eval.md", "frames.png", "mouth_opening.png", "psnr_per_frame.png",
        "side_by_side.mp4"]
    for png in ("frames.png", "mouth_opening.png", "psnr_per_frame.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "eval.md").read_text()
    assert "| PSNR, face mask (dB) |" in md and "![frames](frames.png)" in md
    assert res["format"] == "synctalk-eval/1" and res["split"] == "val"


def test_numbers_are_the_renders(evaluated, tiny_model, nerf_subject):
    """Per-frame PSNR equals a PSNR computed here from the model's render and the real frame;
    the plate baseline equals the plate's PSNR on the face mask."""
    import cv2

    from synctalk.metrics.image import psnr
    from synctalk.nerf.inference import TalkingHead

    _, res = evaluated
    head = TalkingHead.load(tiny_model)
    val = sorted(head.splits["val"])
    assert res["n_frames"] == len(val) and res["per_frame"]["frame"] == val
    k = len(val) // 2
    i = val[k]
    pred = head.render_frame(head.subject_audio_features(), i, i)["rgb"]

    def read(path, flags=cv2.IMREAD_COLOR, interp=cv2.INTER_AREA):
        img = cv2.imread(str(path), flags)
        return cv2.resize(img, (64, 64), interpolation=interp)

    truth = read(nerf_subject / "frames" / f"{i:06d}.jpg")[..., ::-1]
    mask = read(nerf_subject / "face_masks" / f"{i:06d}.png", cv2.IMREAD_GRAYSCALE,
                cv2.INTER_NEAREST) > 127
    plate = read(nerf_subject / "background.png")[..., ::-1]
    pf = res["per_frame"]
    assert pf["psnr"][k] == pytest.approx(psnr(pred, truth), abs=1e-4)
    assert pf["psnr_face"][k] == pytest.approx(psnr(pred, truth, mask=mask), abs=1e-4)
    assert pf["plate_psnr_face"][k] == pytest.approx(psnr(plate, truth, mask=mask), abs=1e-4)
    img = res["image"]
    assert img["psnr"] == pytest.approx(np.mean(pf["psnr"]), abs=1e-4)
    best = max(b["psnr_face"] for b in img["baseline"].values())
    assert img["psnr_face_gain_db"] == pytest.approx(img["psnr_face"] - best, abs=1e-4)
    assert res["speed"]["fps"] > 0 and {"march", "field"} <= set(res["speed"]["stage_ms"])


def test_synthetic_truth_is_found_and_aligned(evaluated):
    """The subject came from `synctalk synth`: its ground truth is found through the manifest,
    and MediaPipe's lip gap on the real val frames follows it (a wrong frame mapping would not)."""
    _, res = evaluated
    mouth = res["lipsync"]["mouth_opening"]
    assert mouth["vs_synth_truth"]["ground_truth"].endswith("synth/ground_truth.json")
    assert mouth["frames_vs_synth_truth"]["corr"] > 0.6
    assert len(res["per_frame"]["opening_synth_truth"]) == res["n_frames"]
    assert res["stability"]["jitter_truth"] > 0
    # an AVE without a trained face branch cannot score sync: said, not faked
    assert "face branch" in res["sync"]["render"]["skipped"]


def test_eval_errors(tiny_model, tmp_path, capsys, face_landmarker_path):
    fl = ["--face-landmarker", str(face_landmarker_path)]
    assert main(["eval", str(tiny_model), "--split", "test", "--out", str(tmp_path / "e"), *fl]) == 2
    assert "no split 'test'" in capsys.readouterr().err
    assert main(["eval", str(tiny_model), "--out", str(tmp_path / "no" / "e"), *fl]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing"), *fl]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["eval", str(tiny_model), "--out", str(tmp_path / "e"), "--ground-truth",
                 str(tmp_path / "gt.json"), *fl]) == 2
    assert "--ground-truth" in capsys.readouterr().err

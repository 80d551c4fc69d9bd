"""``synctalk demo`` runs every stage, tiny, and says what it produced (no accuracy levels:
those come from ``make demo`` at full size)."""
from __future__ import annotations

import json

from synctalk.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys, face_landmarker_path, one_thread):
    out = tmp_path / "demo"
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("size: 64\ninfer_samples: 8\nval_every: 0\nfinal_val_frames: 1\n"
                    "grid_levels: 4\ngrid_max_res: 64\nocc_resolution: 32\n")
    rc = main(["demo", "--out", str(out), "--seconds", "5", "--size", "160",
               "--face-landmarker", str(face_landmarker_path), "--ave-budget", "2",
               "--train-iters", "6", "--train-config", str(tiny), "--render-seconds", "0.3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "synctalk demo finished" in text and str(out / "render.mp4") in text
    summary = json.loads((out / "demo_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["synth", "track", "prep", "train", "render",
                                                       "eval"]
    assert [a["check"] for a in summary["acceptance"]][:2] == ["full-frame PSNR (dB)",
                                                               "face-mask PSNR (dB)"]
    check = json.loads((out / "track_check.json").read_text())
    assert check["detection_rate"] >= 0.99
    poses = json.loads((out / "pose_check.json").read_text())
    assert poses["n_frames"] == 125 and poses["relative_rotation_error_deg"] >= 0
    assert (out / "subject" / "report.md").is_file()
    assert "AVE features audio_features/ave-" in text and "trained on the clip" in text
    audio = json.loads((out / "subject" / "manifest.json").read_text())["steps"]["audio"]
    assert audio["params"]["budget_seconds"] == 2.0
    # the model, the render of the held-out sentence and the eval report
    model = out / "model"
    assert (model / "model.pt").is_file() and json.loads((model / "summary.json").read_text())["steps"] == 6
    for video in summary["videos"].values():
        data = open(video, "rb").read(64)
        assert b"ftyp" in data, video
    from synctalk.media import read_audio

    assert abs(len(read_audio(out / "render.mp4", 16000)) / 16000 - 0.3) < 0.05
    ev = json.loads((model / "eval" / "eval.json").read_text())
    assert ev["n_frames"] == len(json.loads((out / "subject" / "splits.json").read_text())["val"])
    assert ev["size"] == 64 and ev["image"]["psnr"] > 0
    assert "vs_synth_truth" in ev["lipsync"]["mouth_opening"]
    assert not list(out.glob(".*tmp*")) and not (out / "novel_speech.wav").exists()

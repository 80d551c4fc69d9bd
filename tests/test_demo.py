"""``synctalk demo`` runs every stage that exists and says what it produced."""
from __future__ import annotations

import json

from synctalk.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys, face_landmarker_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--seconds", "7", "--size", "192",
               "--face-landmarker", str(face_landmarker_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "synctalk demo finished" in text and str(out / "synth" / "clip.mp4") in text
    summary = json.loads((out / "demo_summary.json").read_text())
    assert [s["stage"] for s in summary] == ["synth", "track", "prep"]
    check = json.loads((out / "track_check.json").read_text())
    assert check["detection_rate"] >= 0.99
    poses = json.loads((out / "pose_check.json").read_text())
    assert poses["relative_rotation_error_deg"] < poses["raw_relative_rotation_error_deg"]
    assert (out / "subject" / "report.md").is_file()

"""``synctalk bench prep``: the JSON it prints (synthetic mode) and its errors."""
from __future__ import annotations

import json

import pytest

from synctalk.bench import prep as bench_prep
from synctalk.cli import main


def test_missing_clip_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "prep", "--clips", str(tmp_path / "nope.mp4"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "clip not found" in err and "nope.mp4" in err and "Traceback" not in err


def test_no_clips_and_no_shared_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_prep, "SHARED_DATA", tmp_path / "absent")
    assert main(["bench", "prep", "--json"]) == 2
    assert "no clips to bench: pass --clips" in capsys.readouterr().err


def test_synth_mode_reports_quality_against_the_truth(tmp_path, capsys, face_landmarker_path):
    """A 6 s synthetic clip at 256², prepped in a child process (short AVE training)."""
    rc = main(["bench", "prep", "--synth", "--synth-seconds", "6", "--size", "256",
               "--ave-budget", "2", "--face-landmarker", str(face_landmarker_path),
               "--out", str(tmp_path / "work"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "prep" and out["clips"] == [] and len(out["load_start"]) == 3
    row = out["synth"]
    assert row["frames"] == 150 and row["size"] == 256 and row["duration_s"] == pytest.approx(6.0)
    assert {"ingest", "track", "segment", "stabilize", "blendshapes", "splits",
            "report"} <= set(row["steps"])
    for step in row["steps"].values():
        assert step["seconds"] >= 0 and step["seconds_per_frame"] == pytest.approx(
            step["seconds"] / 150, abs=1e-5)
    assert row["wall_s"] >= sum(s["seconds"] for s in row["steps"].values()) - 0.5
    assert row["wall_per_duration"] == pytest.approx(row["wall_s"] / 6.0, rel=1e-2)
    assert 50 < row["peak_rss_mb"] < 4000 and row["cpu_s"] > 0
    assert row["tracked"] == {"detected": 1.0, "valid": 1.0}
    assert 0 < row["landmark_rms_px_512"] < 3.0
    jitter = row["jitter_deg"]
    assert 0 < jitter["stabilised"] < jitter["raw_pnp"]
    assert jitter["ratio"] == pytest.approx(jitter["stabilised"] / jitter["raw_pnp"], rel=1e-2)
    truth = row["truth"]
    err = truth["relative_rotation_error_deg"]
    assert err["stabilised"] < err["mediapipe"] and err["stabilised"] < 1.0
    assert truth["jitter_deg"]["stabilised"] < truth["jitter_deg"]["raw_pnp"]
    assert isinstance(truth["error_within_limit"], bool)
    # The stabilizer used the synthetic camera's principal point (mapped through the crop).
    assert truth["principal_point_px"] == pytest.approx(truth["true_principal_point_px"], abs=0.05)
    # Without --keep the subject and the clip are removed; the --out directory stays.
    assert (tmp_path / "work").is_dir() and not any((tmp_path / "work").iterdir())

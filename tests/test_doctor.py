"""``synctalk doctor``: the report, its JSON form and its exit status."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

import synctalk.media
from synctalk.cli import main
from synctalk.models import FACE_LANDMARKER, cache_path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> None:
    """An empty cache of our own, and no model named by the environment."""
    monkeypatch.setenv("SYNCTALK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SYNCTALK_FACE_LANDMARKER", raising=False)


def _doctor_json(capsys) -> tuple[int, dict]:
    rc = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    report["by_name"] = {c["name"]: c for c in report["checks"]}
    return rc, report


def test_doctor_table(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "cuda", "native ops", "mediapipe", "opencv", "ffmpeg",
                 "model face_landmarker", "disk: cache dir", "disk: current dir"):
        assert f"\n{name} " in out
    native_line = next(line for line in out.splitlines() if line.startswith("native ops "))
    assert any(state in native_line for state in ("loaded:", "cached:", "not built:", "unavailable:"))
    assert "run `synctalk models fetch`" in out  # the model is missing: a warning only
    assert "CPU pipeline: ready" in out


def test_doctor_json(capsys):
    import cv2
    import torch

    rc, report = _doctor_json(capsys)
    checks = report["by_name"]
    assert rc == 0 and report["ready"] is True and report["failures"] == []
    assert checks["torch"]["data"]["version"] == torch.__version__
    assert checks["opencv"]["data"]["version"] == cv2.__version__
    assert checks["cuda"]["data"]["available"] == torch.cuda.is_available()
    assert checks["ffmpeg"]["data"]["version"].startswith("ffmpeg version")
    model = checks["model face_landmarker"]
    assert model["status"] == "warn" and model["data"]["state"] == "missing"
    assert report["warnings"] == ["model face_landmarker"]
    assert checks["disk: cache dir"]["data"]["free_bytes"] > 0


def test_doctor_verifies_the_cached_model(face_landmarker_path, capsys):
    cached = cache_path(FACE_LANDMARKER)
    cached.parent.mkdir(parents=True)
    shutil.copyfile(face_landmarker_path, cached)
    rc, report = _doctor_json(capsys)
    model = report["by_name"]["model face_landmarker"]
    assert rc == 0 and model["status"] == "ok"
    assert model["data"] == {"path": str(cached), "source": "cache", "state": "ok"}


def test_doctor_reports_a_corrupt_model_without_touching_it(capsys):
    cached = cache_path(FACE_LANDMARKER)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    rc, report = _doctor_json(capsys)
    model = report["by_name"]["model face_landmarker"]
    assert rc == 0 and model["status"] == "warn" and model["data"]["state"] == "sha256 mismatch"
    assert cached.read_bytes() == b"half a download"


def test_doctor_shows_native_ops_status(monkeypatch, capsys):
    import synctalk.ops.native as native

    status = {"state": "cached", "detail": "built (CPU), loads on first use from /x", "cuda": False,
              "cuda_reason": "torch is a CPU build", "build_dir": "/x"}
    monkeypatch.setattr(native, "native_status", lambda: status)
    _, report = _doctor_json(capsys)
    check = report["by_name"]["native ops"]
    assert check["status"] == "ok" and check["detail"] == "cached: built (CPU), loads on first use from /x"
    assert check["data"] == status


def test_doctor_fails_when_something_essential_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    monkeypatch.setattr(synctalk.media, "ffmpeg_exe", lambda: "/nonexistent/ffmpeg")

    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "CPU pipeline: NOT ready" in out
    problems = out.split("NOT ready", 1)[1]
    assert "- opencv: cannot import cv2" in problems and "- ffmpeg: not usable" in problems

    rc, report = _doctor_json(capsys)
    assert rc == 1 and report["ready"] is False
    assert report["failures"] == ["opencv", "ffmpeg"]

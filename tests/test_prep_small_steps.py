"""Blendshape smoothing and train/val splits."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.blendshapes import smooth_scores
from data_prep.splits import make_splits
from synctalk.errors import InputError


def test_savgol_keeps_slow_motion_and_removes_jitter():
    t = np.linspace(0, 1, 200)[:, None]
    slow = 0.3 + 0.2 * t - 0.1 * t ** 2 + 0.05 * t ** 3  # a cubic passes unchanged
    np.testing.assert_allclose(smooth_scores(slow, 5, 3), slow, atol=1e-9)
    noisy = slow + np.random.default_rng(0).normal(0, 0.05, slow.shape)
    assert np.abs(smooth_scores(noisy) - slow).mean() < 0.8 * np.abs(noisy - slow).mean()
    assert smooth_scores(np.array([[2.0], [-1.0], [0.5], [0.5], [0.5]])).min() >= 0


def test_splits_hold_out_the_end_and_skip_unusable_frames():
    valid = np.ones(110, bool)
    valid[[3, 105]] = False
    s = make_splits(valid, 1 / 11)
    assert s["val"] == [i for i in range(100, 110) if i != 105]
    assert s["train"] == [i for i in range(100) if i != 3]
    with pytest.raises(InputError):
        make_splits(np.ones(5, bool), 0.01)


def test_blas_threads_sets_and_restores_every_loaded_openblas():
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS too)

    from data_prep.subject import _loaded_openblas, blas_threads

    before = [n for _, n in _loaded_openblas()]
    if not before:
        pytest.skip("no OpenBLAS loaded in this process")
    with blas_threads(1):
        assert [n for _, n in _loaded_openblas()] == [1] * len(before)
        np.linalg.inv(np.eye(3) + 0.1)  # still computes
    assert [n for _, n in _loaded_openblas()] == before


def test_report_preview_draws_landmarks_and_writes_the_report(tmp_path):
    import json

    import cv2

    from data_prep import report
    from data_prep.subject import Manifest, frame_name
    from synctalk.media import write_wav

    n, size = 6, 64
    (tmp_path / "frames").mkdir()
    for i in range(n):
        cv2.imwrite(str(tmp_path / "frames" / frame_name(i, "jpg")), np.full((size, size, 3), 40, np.uint8))
    landmarks = np.zeros((n, 478, 3), np.float32)
    landmarks[:, :, :2] = [20.0, 44.0]           # every landmark on one pixel of the frame
    valid = np.ones(n, bool)
    valid[3] = False
    np.savez(tmp_path / "track.npz", landmarks=landmarks, valid=valid)
    write_wav(tmp_path / "audio.wav", np.zeros(16000 * n // 25, np.float32), 16000)
    manifest = Manifest.create(tmp_path, {"sha256": "0"})
    manifest.finish_step("ingest", "k", {}, 1.0, {"n_frames": n, "fps": 25.0}, cpu_seconds=0.5)

    frames = list(report.preview_frames(tmp_path, 32))  # half size: landmarks at (10, 22)
    assert len(frames) == n and frames[0].shape == (32, 32, 3)
    assert tuple(frames[0][22, 10]) == (0, 255, 120) and tuple(frames[0][5, 5]) != (0, 255, 120)
    assert tuple(frames[3][0, 16]) == (255, 0, 0)   # red border: not usable for training
    info = report.run(tmp_path, {"preview_size": 32})
    assert info == {"preview_frames": n} and (tmp_path / "preview.mp4").stat().st_size > 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["n_frames"] == n and rep["steps"]["ingest"]["seconds_per_frame"] == pytest.approx(1 / n)
    assert rep["steps"]["ingest"]["cpu_seconds"] == 0.5
    assert "| ingest |" in (tmp_path / "report.md").read_text()


def test_run_steps_records_wall_and_cpu_seconds(tmp_path):
    from data_prep.subject import Manifest, Step, run_steps

    def burn(subject, params):
        return {"total": float(np.linalg.norm(np.random.default_rng(0).random(2_000_000)))}

    manifest = Manifest.create(tmp_path, {"sha256": "0"})
    result = run_steps(manifest, [Step("burn", burn, {})])
    rec = Manifest.load(tmp_path).step("burn")
    assert rec["status"] == "done" and rec["seconds"] == pytest.approx(result["burn"]["seconds"], abs=1e-3)
    assert 0 < rec["cpu_seconds"] and rec["info"]["total"] > 0

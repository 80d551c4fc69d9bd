"""Lip metrics: LMD, mouth opening, correlation and spread ratio."""
from __future__ import annotations

import numpy as np
import pytest

from synctalk.metrics.lipsync import (MOUTH_LANDMARKS, LandmarkDetector, inner_lip_gap, lmd,
                                      opening_agreement, pearson, px_scale, spread_ratio)


def _faces(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(50, 200, size=(n, 478, 2))


def test_mouth_landmark_set_is_forty_distinct_lip_points():
    assert len(MOUTH_LANDMARKS) == 40 and len(set(MOUTH_LANDMARKS)) == 40
    assert {13, 14, 61, 291}.issubset(MOUTH_LANDMARKS)


def test_lmd_ignores_translation_and_scales_to_512():
    ref = _faces(5)
    moved = ref + np.array([7.0, -3.0])  # the whole face shifted: mean-centring removes it
    assert lmd(moved, ref, 256)["lmd"] == pytest.approx(0.0, abs=1e-9)
    # every mouth point 1 px off in x, mean-centred per frame: only the non-uniform part counts
    pert = ref.copy()
    idx = list(MOUTH_LANDMARKS)
    pert[:, idx[:20], 0] += 2.0  # outer lip 2 px right, inner lip unchanged -> centred ±1 px
    r = lmd(pert, ref, 256)
    assert r["lmd"] == pytest.approx(1.0 * 2.0)  # 1 px at 256 = 2 px at 512
    assert r["frames_used"] == 5 and r["per_frame"].shape == (5,)
    assert lmd(pert, ref, 512)["lmd"] == pytest.approx(1.0)


def test_lmd_skips_frames_without_a_face():
    ref, pred = _faces(4), _faces(4, seed=1)
    pred[1] = np.nan
    r = lmd(pred, ref, 512)
    assert r["frames_used"] == 3 and np.isnan(r["per_frame"][1])
    assert r["lmd"] == pytest.approx(np.nanmean(r["per_frame"]))
    pred[:] = np.nan
    assert np.isnan(lmd(pred, ref, 512)["lmd"])
    with pytest.raises(ValueError):
        lmd(ref[:, :, :1], ref[:, :, :1], 512)


def test_inner_lip_gap_is_the_13_14_distance():
    lm = np.zeros((3, 478, 2))
    lm[:, 13] = [100.0, 120.0]
    lm[:, 14] = [[100.0, 120.0], [103.0, 124.0], [100.0, 130.0]]
    np.testing.assert_allclose(inner_lip_gap(lm), [0.0, 5.0, 10.0])


def test_correlation_and_spread_ratio():
    t = np.linspace(0, 4 * np.pi, 100)
    ref = 10 + 5 * np.sin(t)
    assert pearson(2 * ref + 1, ref) == pytest.approx(1.0)
    assert pearson(-ref, ref) == pytest.approx(-1.0)
    damped = 10 + 0.5 * np.sin(t)  # follows perfectly but moves a tenth as much
    agree = opening_agreement(damped, ref)
    assert agree["corr"] == pytest.approx(1.0) and agree["spread_ratio"] == pytest.approx(0.1)
    assert spread_ratio(ref, ref) == pytest.approx(1.0)
    # NaNs are dropped pairwise; constant or too-short series give NaN, not an exception
    holes = ref.copy()
    holes[::3] = np.nan
    assert opening_agreement(holes, ref)["frames_used"] == 66
    assert np.isnan(pearson(np.ones(10), np.arange(10.0)))
    assert np.isnan(spread_ratio(np.arange(10.0), np.ones(10)))
    assert np.isnan(pearson([1.0, 2.0], [1.0, 3.0]))
    rng = np.random.default_rng(0)
    assert abs(pearson(rng.normal(size=2000), rng.normal(size=2000))) < 0.1
    with pytest.raises(ValueError):
        pearson(np.zeros(3), np.zeros(4))


def test_px_scale():
    assert px_scale(256) == 2.0 and px_scale(512) == 1.0
    with pytest.raises(ValueError):
        px_scale(0)


def test_detector_measures_a_synthetic_face(tmp_path, face_landmarker_path):
    """MediaPipe on synth frames: a face in every frame, LMD of a frame against a shifted copy
    of itself is small, and the measured lip gap follows the synth's true opening."""
    import imageio.v2 as imageio
    import json

    from synctalk.synth.generate import SynthOptions, generate

    out = generate(tmp_path / "s", SynthOptions(seconds=3.0, size=192, seed=3))
    frames = [f for f in imageio.get_reader(out["clip"])]
    gt = json.loads((tmp_path / "s" / "ground_truth.json").read_text())["frames"]
    with LandmarkDetector(face_landmarker_path) as det:
        marks = det.detect_all(frames)
        shifted = det.detect_all([np.roll(f, (6, -4), axis=(0, 1)) for f in frames[::15]])
    assert marks.detection_rate == 1.0 and marks.side == 192
    assert marks.landmarks.shape == (len(frames), 478, 2)
    assert lmd(shifted.landmarks, marks.landmarks[::15], 192)["lmd"] < 3.0
    gap = inner_lip_gap(marks.landmarks)
    truth = np.array([f["mouth_open_px"] for f in gt])[: len(gap)]
    assert pearson(gap, truth) > 0.8
    blank = [np.full((192, 192, 3), 127, np.uint8)] * 2
    with LandmarkDetector(face_landmarker_path) as det:
        none = det.detect_all(blank)
    assert none.detection_rate == 0.0 and np.isnan(none.landmarks).all()

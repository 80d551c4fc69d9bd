"""prep step ``track``: gap filling, face choice, and tracking synthetic and real clips."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep import ingest, track
from data_prep.face_tracking import FaceObservation
from data_prep.subject import Manifest, Step, run_steps
from synctalk.errors import InputError
from synctalk.media import ffmpeg_exe
from synctalk.synth.generate import SynthOptions, generate
from synctalk.synth.rig import KEY_LANDMARKS


def _ffmpeg(*args) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *map(str, args)], check=True)


def _prep(subject: Path, source: Path, model: Path, **ingest_params) -> dict:
    """Run ingest then track through the manifest, as ``synctalk prep`` does."""
    subject.mkdir()
    manifest = Manifest.create(subject, {"path": str(source)})
    steps = [Step("ingest", ingest.run, {"source": str(source), "face_landmarker": str(model),
                                         **ingest_params}),
             Step("track", track.run, {"face_landmarker": str(model)}, ("ingest",))]
    return {name: r["info"] for name, r in run_steps(manifest, steps).items()}


def _rz(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


# --------------------------------------------------------------------------- interpolate_gaps

def test_short_gap_is_interpolated_linearly():
    det = np.array([1, 1, 0, 0, 0, 1, 1], bool)
    x = np.array([0.0, 1.0, np.nan, np.nan, np.nan, 5.0, 6.0])
    xyz = np.stack([x, 2 * x, -x], axis=1).astype(np.float32)
    (fx, fxyz), valid = track.interpolate_gaps(det, x, xyz, max_gap=3)
    np.testing.assert_allclose(fx, np.arange(7.0))
    np.testing.assert_allclose(fxyz, np.stack([np.arange(7.0), 2 * np.arange(7.0), -np.arange(7.0)], 1))
    assert fxyz.dtype == np.float32 and valid.all()


def test_long_gap_and_edges_are_invalid_and_copy_the_nearest_frame():
    det = np.zeros(16, bool)
    det[[2, 3, 12]] = True  # leading gap 0-1, long gap 4-11 (8 frames), trailing 13-15
    x = np.where(det, np.arange(16.0) * 10, np.nan)
    (fx,), valid = track.interpolate_gaps(det, x, max_gap=5)
    np.testing.assert_array_equal(valid, det)
    np.testing.assert_array_equal(fx, [20, 20, 20, 30, 30, 30, 30, 30, 120, 120, 120, 120, 120,
                                       120, 120, 120])
    assert not np.isnan(fx).any()
    (fx,), valid = track.interpolate_gaps(det, x, max_gap=8)  # now the gap is short enough
    assert valid[4:12].all() and not valid[:2].any() and not valid[13:].any()
    np.testing.assert_allclose(fx[3:13], np.linspace(30, 120, 10))


def test_interpolate_gaps_needs_one_detection():
    with pytest.raises(ValueError, match="no detected frame"):
        track.interpolate_gaps(np.zeros(4, bool), np.zeros(4), max_gap=5)


def test_orthonormalize_makes_interpolated_rotations_rigid():
    a, b = _rz(0), _rz(90)
    a[:3, 3], b[:3, 3] = [1, 2, 3], [3, 2, 1]
    mid = (0.5 * (a + b))[None]  # element-wise midpoint: scaled by cos 45°, not a rotation
    assert not np.allclose(mid[0, :3, :3] @ mid[0, :3, :3].T, np.eye(3), atol=1e-3)
    fixed = track.orthonormalize(mid)[0]
    np.testing.assert_allclose(fixed[:3, :3], _rz(45)[:3, :3], atol=1e-6)
    np.testing.assert_allclose(fixed[:3, 3], [2, 2, 2])
    np.testing.assert_allclose(fixed[3], [0, 0, 0, 1])


def test_pick_face_nearest_previous_else_largest():
    def face(cx: float, half: float) -> FaceObservation:
        lm = np.zeros((478, 3), np.float32)
        lm[:, 0] = cx + np.linspace(-half, half, 478)
        lm[:, 1] = 100 + np.linspace(-half, half, 478)
        return FaceObservation(lm, np.zeros(52, np.float32), [], np.eye(4, dtype=np.float32))

    small, big = face(100, 20), face(300, 60)
    assert track.pick_face([small, big], None) is big
    assert track.pick_face([big, small], np.array([110.0, 95.0])) is small


# --------------------------------------------------------------------------- the step

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """6 s synthetic head (256², 25 fps) with ground truth."""
    out = tmp_path_factory.mktemp("synth") / "s"
    generate(out, SynthOptions(seconds=6, size=256, fps=25))
    return out


PAD = (300, 60)  # where the 256² synthetic frame sits in a 640×360 landscape canvas


@pytest.fixture(scope="module")
def landscape(synth, tmp_path_factory, face_landmarker_path) -> tuple[Path, dict]:
    """The synthetic clip padded into a 640×360 canvas, ingested (auto-crop) and tracked."""
    src = tmp_path_factory.mktemp("landscape") / "landscape.mp4"
    _ffmpeg("-i", synth / "clip.mp4", "-vf", f"pad=640:360:{PAD[0]}:{PAD[1]}:color=gray",
            "-c:a", "copy", src)
    subject = src.parent / "subject"
    return subject, _prep(subject, src, face_landmarker_path, size=256)


def test_track_matches_ground_truth(synth, landscape):
    subject, info = landscape
    crop = info["ingest"]["crop"]
    assert crop["side"] < 360 and crop["x"] > 0  # a real crop, not the whole frame
    t = track.load_track(subject)
    n = info["ingest"]["n_frames"]
    assert n == 150
    assert t["landmarks"].shape == (n, 478, 3) and t["landmarks"].dtype == np.float32
    assert t["blendshapes"].shape == (n, 52) and t["matrices"].shape == (n, 4, 4)
    assert t["blendshape_names"].shape == (52,) and "jawOpen" in t["blendshape_names"]
    assert t["detected"].dtype == bool and t["valid"].dtype == bool
    assert t["detected"].mean() >= 0.99 and info["track"]["frames_detected"] == t["detected"].sum()
    assert info["track"]["multiple_faces_seen"] == 0 and info["track"]["seconds_per_frame"] > 0

    # Ground truth (px of the 256² synthetic frame) → source canvas → crop.
    gt = json.loads((synth / "ground_truth.json").read_text())
    names = list(KEY_LANDMARKS)
    truth = np.array([[f["landmarks"][k] for k in names] for f in gt["frames"][:n]]) + PAD
    truth = ingest.source_to_crop(truth, crop, 256)
    found = t["landmarks"][:, [KEY_LANDMARKS[k] for k in names], :2]
    err = np.linalg.norm(found - truth, axis=-1)[t["detected"]]
    assert np.median(err) < 3.0 and err.mean() < 4.0

    # Frame i of the track is frame i of the clip: the lip gap follows the true mouth opening.
    gap = np.linalg.norm(t["landmarks"][:, 13, :2] - t["landmarks"][:, 14, :2], axis=1)
    opening = np.array([f["mouth_open"] for f in gt["frames"][:n]])
    assert np.corrcoef(gap, opening)[0, 1] > 0.9


def test_gaps_are_interpolated_or_invalidated(landscape, tmp_path, face_landmarker_path):
    """Blank frames 20-22 (a 3-frame gap) and 60-67 (8 frames) and re-track."""
    subject = tmp_path / "gappy"
    shutil.copytree(landscape[0], subject)
    for i in [20, 21, 22, *range(60, 68)]:
        cv2.imwrite(str(subject / "frames" / f"{i:06d}.jpg"), np.zeros((256, 256, 3), np.uint8))
    info = track.run(subject, {"face_landmarker": face_landmarker_path})
    t = track.load_track(subject)
    assert not t["detected"][[20, 21, 22, *range(60, 68)]].any()
    assert t["valid"][20:23].all() and not t["valid"][60:68].any()
    assert info["frames_interpolated"] == 3 and info["frames_invalid"] == 8
    for key in ("landmarks", "blendshapes", "matrices"):
        assert np.isfinite(t[key]).all(), key
    lm = t["landmarks"]
    np.testing.assert_allclose(lm[21], (lm[19] + lm[23]) / 2, atol=1e-3)
    np.testing.assert_array_equal(lm[60:64], np.broadcast_to(lm[59], (4, 478, 3)))
    np.testing.assert_array_equal(lm[64:68], np.broadcast_to(lm[68], (4, 478, 3)))
    r = t["matrices"][20:23, :3, :3].astype(np.float64)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-5)


def test_two_faces_keep_the_same_one(synth, tmp_path, face_landmarker_path, caplog):
    src = tmp_path / "two.mp4"
    _ffmpeg("-i", synth / "clip.mp4", "-filter_complex",
            "[0:v]split[a][b];[b]hflip[c];[a][c]hstack,pad=512:512:0:128", "-c:a", "copy", src)
    with caplog.at_level(logging.WARNING, logger="data_prep.track"):
        info = _prep(tmp_path / "subject", src, face_landmarker_path, auto_crop=False,
                     min_seconds=2, max_seconds=2)
    assert info["track"]["multiple_faces_seen"] > 0
    assert sum("several faces" in r.message for r in caplog.records) == 1
    t = track.load_track(tmp_path / "subject")
    centre_x = t["landmarks"][t["detected"], :, 0].mean(axis=1)
    assert t["detected"].mean() > 0.9
    assert (centre_x < 256).all() or (centre_x > 256).all()


def test_no_face_is_refused(tmp_path, face_landmarker_path):
    src = tmp_path / "blank.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=2", "-f", "lavfi",
            "-i", "sine=frequency=440:sample_rate=16000:duration=2", "-c:v", "libx264",
            "-c:a", "aac", "-shortest", src)
    subject = tmp_path / "subject"
    with pytest.raises(InputError, match="no face in most frames: a face was found in 0 of 50"):
        _prep(subject, src, face_landmarker_path, auto_crop=False, min_seconds=1)
    assert not (subject / track.TRACK_NAME).exists()


def test_real_fullbody_clip_is_cropped_and_tracked(shared_data, tmp_path, face_landmarker_path):
    """The small head of a 1080×1920 portrait video (first 6 s): auto-crop, then tracking."""
    src = shared_data / "clips" / "fullbody_20s_1080x1920.mp4"
    info = _prep(tmp_path / "subject", src, face_landmarker_path, size=256, max_seconds=6)
    crop = info["ingest"]["crop"]
    assert info["ingest"]["source_size"] == [1080, 1920] and info["ingest"]["n_frames"] == 150
    assert 0 <= crop["x"] <= 1080 - crop["side"]
    assert 0 <= crop["y"] <= 1920 - crop["side"]
    assert 300 < crop["side"] < 1080  # a head-and-shoulders crop, not the whole frame
    t = track.load_track(tmp_path / "subject")
    assert t["detected"].mean() >= 0.98
    xy = t["landmarks"][t["detected"], :, :2]
    face_h = (xy[:, :, 1].max(1) - xy[:, :, 1].min(1)).mean()
    assert 0.35 < face_h / 256 < 0.6
    assert xy.min() > 0 and xy.max() < 256

"""Check a synthetic clip against what MediaPipe FaceLandmarker measures on it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tracker_agreement(synth_dir, model_path) -> dict:
    """Track ``clip.mp4`` with MediaPipe and compare with ``ground_truth.json``.

    Returns:
        ``detection_rate`` (fraction of frames with a face), ``corr_mouth`` (Pearson
        correlation of MediaPipe's inner-lip gap, landmarks 13–14 in px, with the ground-truth
        ``mouth_open``), ``corr_yaw`` (MediaPipe's yaw from its transformation matrix vs the
        ground-truth yaw), ``yaw_gain`` (least-squares slope of measured on true yaw) and the
        mean landmark error in px over the key landmarks.
    """
    from data_prep.face_tracking import matrix_to_euler_deg, track_video
    from synctalk.synth.rig import KEY_LANDMARKS

    synth_dir = Path(synth_dir)
    gt = json.loads((synth_dir / "ground_truth.json").read_text())
    track = track_video(synth_dir / "clip.mp4", model_path)
    frames = gt["frames"][: len(track.detected)]
    ok = track.detected[: len(frames)]
    lm = track.landmarks[: len(frames)][ok]
    gap = np.linalg.norm(lm[:, 13, :2] - lm[:, 14, :2], axis=1)
    opening = np.array([f["mouth_open"] for f, k in zip(frames, ok) if k])
    yaw_gt = np.array([f["yaw"] for f, k in zip(frames, ok) if k])
    yaw_mp = np.array([matrix_to_euler_deg(m)[0] for m in track.matrices[: len(frames)][ok]])
    key_err = [np.linalg.norm(lm[:, j, :2] - np.array([f["landmarks"][k] for f, d in zip(frames, ok) if d]),
                              axis=1).mean() for k, j in KEY_LANDMARKS.items()]
    return {
        "n_frames": len(frames),
        "detection_rate": float(ok.mean()),
        "corr_mouth": float(np.corrcoef(gap, opening)[0, 1]),
        "corr_yaw": float(np.corrcoef(yaw_mp, yaw_gt)[0, 1]),
        "yaw_gain": float(np.polyfit(yaw_gt, yaw_mp, 1)[0]),
        "key_landmark_err_px": float(np.mean(key_err)),
    }


def pose_agreement(synth_dir, subject_dir) -> dict:
    """Compare a prepared subject's stabilised head poses with the synth's true rotations.

    Returns the median relative-rotation error over frame pairs at lags 5–200
    (``relative_rotation_error_deg``; the same for MediaPipe's raw poses) and the rotation
    jitter of the estimate and of the truth (degrees).
    """
    from data_prep.stabilize import (head_to_camera_rotations, mediapipe_rotations,
                                     relative_rotation_error_deg, rotation_jitter_deg)

    gt = json.loads((Path(synth_dir) / "ground_truth.json").read_text())
    r_true = np.array([f["rotation"] for f in gt["frames"]], np.float64)
    est = head_to_camera_rotations(np.load(Path(subject_dir) / "poses.npz")["c2w"])
    raw = mediapipe_rotations(np.load(Path(subject_dir) / "track.npz")["matrices"])
    n = min(len(r_true), len(est))
    return {
        "n_frames": n,
        "relative_rotation_error_deg": relative_rotation_error_deg(r_true[:n], est[:n]),
        "raw_relative_rotation_error_deg": relative_rotation_error_deg(r_true[:n], raw[:n]),
        "jitter_deg": rotation_jitter_deg(est[:n]),
        "true_jitter_deg": rotation_jitter_deg(r_true[:n]),
    }

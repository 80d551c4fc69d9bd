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
    (``relative_rotation_error_deg``; the same for MediaPipe's raw poses), the rotation
    jitter of the estimate and of the truth (degrees) and, when the ground truth has the
    head ring, how well the poses register the whole head: ``head_ring_misregistration_px``
    (RMS over frames and points, px of the subject's frames; ``..._val_px`` over the val
    split) from :func:`rigid_misregistration_px`. A NeRF trained on these poses cannot be
    sharper than that at the hair and hat.
    """
    from data_prep.stabilize import (head_to_camera_rotations, mediapipe_rotations,
                                     relative_rotation_error_deg, rotation_jitter_deg)

    gt = json.loads((Path(synth_dir) / "ground_truth.json").read_text())
    r_true = np.array([f["rotation"] for f in gt["frames"]], np.float64)
    est = head_to_camera_rotations(np.load(Path(subject_dir) / "poses.npz")["c2w"])
    raw = mediapipe_rotations(np.load(Path(subject_dir) / "track.npz")["matrices"])
    n = min(len(r_true), len(est))
    out = {
        "n_frames": n,
        "relative_rotation_error_deg": relative_rotation_error_deg(r_true[:n], est[:n]),
        "raw_relative_rotation_error_deg": relative_rotation_error_deg(r_true[:n], raw[:n]),
        "jitter_deg": rotation_jitter_deg(est[:n]),
        "true_jitter_deg": rotation_jitter_deg(r_true[:n]),
    }
    if all("head_ring" in f for f in gt["frames"][:n]):
        subject_dir = Path(subject_dir)
        with np.load(subject_dir / "poses.npz") as poses:
            c2w, K = poses["c2w"][:n], poses["intrinsics"]
        ingest = json.loads((subject_dir / "manifest.json").read_text())["steps"]["ingest"]["info"]
        crop = ingest.get("crop") or {"x": 0, "y": 0, "side": ingest["size"]}
        uv = (np.array([f["head_ring"] for f in gt["frames"][:n]], np.float64)
              - [crop["x"], crop["y"]]) * (ingest["size"] / crop["side"])
        err = rigid_misregistration_px(uv, c2w, K)
        out["head_ring_misregistration_px"] = float(np.sqrt(np.mean(err ** 2)))
        splits = subject_dir / "splits.json"
        if splits.is_file():
            val = [i for i in json.loads(splits.read_text()).get("val", []) if i < n]
            if val:
                out["head_ring_misregistration_val_px"] = float(np.sqrt(np.mean(err[val] ** 2)))
    return out


def rigid_misregistration_px(uv: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """How far a set of cameras is from explaining the image tracks of static points.

    Each point is triangulated from all frames with the cameras (linear least squares on
    the projection equations), then reprojected; the distance to its observed position is
    what no static 3-D point can account for: 0 for exact cameras up to any similarity of
    the world, growing with rotation errors that do not cancel for that point.

    Args:
        uv: ``[N, P, 2]`` observed pixels of ``P`` rigid points in ``N`` frames.
        c2w: ``[N, 4, 4]`` camera-to-world (OpenCV camera axes).
        K: ``[3, 3]`` intrinsics.

    Returns:
        ``[N, P]`` reprojection distances in pixels.
    """
    uv = np.asarray(uv, np.float64)
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    proj = np.asarray(K, np.float64) @ w2c[:, :3, :]                                # [N, 3, 4]
    rows = np.concatenate([uv[..., :1, None] * proj[:, None, 2:3] - proj[:, None, 0:1],
                           uv[..., 1:2, None] * proj[:, None, 2:3] - proj[:, None, 1:2]], 2)
    n, p = uv.shape[:2]
    design = rows.transpose(1, 0, 2, 3).reshape(p, 2 * n, 4)                        # [P, 2N, 4]
    X = np.linalg.svd(design)[2][:, -1]
    X = X[:, :3] / X[:, 3:]                                                          # [P, 3]
    cam = np.einsum("nij,pj->npi", w2c[:, :3, :3], X) + w2c[:, None, :3, 3]         # [N, P, 3]
    pix = np.einsum("ij,npj->npi", np.asarray(K, np.float64), cam)
    return np.linalg.norm(pix[..., :2] / pix[..., 2:] - uv, axis=-1)

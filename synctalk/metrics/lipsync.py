"""Lip metrics from MediaPipe face landmarks: LMD and mouth opening.

Landmarks come from MediaPipe FaceLandmarker run on each frame independently (IMAGE mode,
so the tracker's temporal prior neither hides nor adds motion) and are in pixels of the
frame. Every pixel quantity reported here is rescaled to a frame side of
:data:`REFERENCE_SIDE` (512) px, so numbers from 256² demo renders and 512² models compare.

* **LMD** (landmark distance, Chen et al. 2018): per frame, both sets of mouth landmarks
  (:data:`MOUTH_LANDMARKS`, MediaPipe's 40 lip points) are mean-centred, which removes the
  head's position, and the Euclidean distances of corresponding points are averaged; the
  metric is the mean over frames where both faces were found.
* **Mouth opening**: the inner-lip gap, the distance between landmarks 13 and 14 — the
  quantity :func:`synctalk.synth.validate.tracker_agreement` compares with the synthetic
  ground truth (and the synth's ``mouth_open_px`` projects). Two openings are compared by
  Pearson correlation and by the **spread ratio** ``std(pred) / std(ref)``: a renderer whose
  mouth barely moves can still correlate well, and the ratio exposes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from data_prep.face_tracking import LIP_INNER_LOWER, LIP_INNER_UPPER, N_LANDMARKS

#: Frame side (px) that pixel metrics are scaled to.
REFERENCE_SIDE = 512
#: MediaPipe face-mesh lip contours: outer lip (from the image-left corner 61, lower lip
#: first) and inner lip (from the inner corner 78); together the LMD landmark set.
LIP_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375,
             291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIP_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324,
             308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
MOUTH_LANDMARKS = LIP_OUTER + LIP_INNER


def px_scale(frame_side: int) -> float:
    """Factor turning pixels of a ``frame_side``-px frame into pixels at 512."""
    if frame_side <= 0:
        raise ValueError(f"frame side must be positive, got {frame_side}")
    return REFERENCE_SIDE / float(frame_side)


@dataclass
class FrameLandmarks:
    """MediaPipe landmarks of a sequence of frames.

    Attributes:
        landmarks: ``[N, 478, 2]`` float32, x right / y down in px of the frame; NaN in frames
            without a face.
        detected: ``[N]`` bool, a face was found.
        side: frame width in px (frames are square crops), for :func:`px_scale`.
    """

    landmarks: np.ndarray
    detected: np.ndarray
    side: int

    def __len__(self) -> int:
        return int(self.detected.shape[0])

    @property
    def detection_rate(self) -> float:
        return float(self.detected.mean()) if len(self) else float("nan")


class LandmarkDetector:
    """MediaPipe FaceLandmarker in IMAGE mode, kept open across calls (context manager).

    Args:
        model_path: ``face_landmarker.task`` (see :func:`synctalk.models.resolve_face_landmarker`).
    """

    def __init__(self, model_path) -> None:
        from data_prep.face_tracking import FaceLandmarker

        self._fl = FaceLandmarker(model_path, video=False, num_faces=1)

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._fl.close()

    def detect(self, rgb: np.ndarray) -> np.ndarray | None:
        """``[478, 2]`` float32 px landmarks of the face in one ``[H, W, 3]`` uint8 RGB frame,
        or None when no face is found."""
        faces = self._fl.detect(rgb)
        return faces[0].landmarks[:, :2].astype(np.float32) if faces else None

    def detect_all(self, frames: Iterable[np.ndarray]) -> FrameLandmarks:
        """Landmarks of every frame of a sequence (see :class:`FrameLandmarks`)."""
        lms, det, side = [], [], 0
        for rgb in frames:
            side = int(rgb.shape[1])
            pts = self.detect(rgb)
            det.append(pts is not None)
            lms.append(pts if pts is not None else np.full((N_LANDMARKS, 2), np.nan, np.float32))
        if not lms:
            return FrameLandmarks(np.zeros((0, N_LANDMARKS, 2), np.float32), np.zeros(0, bool), 0)
        return FrameLandmarks(np.stack(lms), np.array(det, bool), side)


def lmd(pred: np.ndarray, ref: np.ndarray, frame_side: int,
        indices: tuple[int, ...] | None = MOUTH_LANDMARKS) -> dict:
    """Landmark distance between two landmark sequences of the same frames.

    Args:
        pred, ref: ``[N, L, 2]`` px (NaN rows where no face); typically rendered and
            ground-truth frames' MediaPipe landmarks (``L = 478``).
        frame_side: px side of the frames both were measured on.
        indices: landmarks compared (default the 40 lip points); None for all ``L``.

    Returns:
        ``lmd`` (mean over usable frames, px at 512; NaN when none), ``per_frame`` (``[N]``
        float64, NaN where either face is missing) and ``frames_used``.
    """
    pred = np.asarray(pred, np.float64)
    ref = np.asarray(ref, np.float64)
    if pred.shape != ref.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"landmarks must both be [N, L, 2], got {pred.shape} and {ref.shape}")
    if indices is not None:
        pred, ref = pred[:, list(indices)], ref[:, list(indices)]
    pred = pred - pred.mean(axis=1, keepdims=True)
    ref = ref - ref.mean(axis=1, keepdims=True)
    per_frame = np.linalg.norm(pred - ref, axis=-1).mean(axis=1) * px_scale(frame_side)
    ok = np.isfinite(per_frame)
    return {"lmd": float(per_frame[ok].mean()) if ok.any() else float("nan"),
            "per_frame": per_frame, "frames_used": int(ok.sum())}


def inner_lip_gap(landmarks: np.ndarray) -> np.ndarray:
    """Mouth opening: distance between the inner-lip landmarks 13 and 14.

    Args:
        landmarks: ``[..., 478, ≥2]`` px.

    Returns:
        ``[...]`` float64 px of the same frames (NaN where the landmarks are NaN).
    """
    lm = np.asarray(landmarks, np.float64)
    return np.linalg.norm(lm[..., LIP_INNER_UPPER, :2] - lm[..., LIP_INNER_LOWER, :2], axis=-1)


def _finite_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"series differ in length: {a.shape[0]} vs {b.shape[0]}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the positions where both series are finite; NaN with fewer
    than 3 such positions or when either is constant there."""
    a, b = _finite_pairs(a, b)
    if a.size < 3 or a.std() == 0.0 or b.std() == 0.0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spread_ratio(pred: np.ndarray, ref: np.ndarray) -> float:
    """``std(pred) / std(ref)`` over positions where both are finite (same units); NaN with
    fewer than 2 positions or a constant reference."""
    a, b = _finite_pairs(pred, ref)
    if a.size < 2 or b.std() == 0.0:
        return float("nan")
    return float(a.std() / b.std())


def opening_agreement(pred: np.ndarray, ref: np.ndarray) -> dict:
    """How a mouth-opening series follows a reference one.

    Args:
        pred, ref: ``[N]`` openings of the same frames, same unit (NaN where unknown).

    Returns:
        ``corr`` (Pearson), ``spread_ratio`` (std ratio), ``frames_used``, and the means
        ``pred_mean``/``ref_mean``.
    """
    a, b = _finite_pairs(pred, ref)
    return {"corr": pearson(pred, ref), "spread_ratio": spread_ratio(pred, ref),
            "frames_used": int(a.size),
            "pred_mean": float(a.mean()) if a.size else float("nan"),
            "ref_mean": float(b.mean()) if b.size else float("nan")}

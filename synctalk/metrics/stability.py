"""Temporal stability: landmark jitter.

Jitter is the mean magnitude of the second temporal difference of landmark positions,
``‖x[t+1] − 2·x[t] + x[t−1]‖``, averaged over landmarks and over every run of three
consecutive frames where all are known — an acceleration, so smooth head motion (constant
velocity) contributes little and frame-to-frame flicker contributes a lot. In px at 512
(:data:`~synctalk.metrics.lipsync.REFERENCE_SIDE`). Compare a render's jitter with that of the
ground-truth frames of the same poses: the truth has real motion, so its jitter is the floor.
"""
from __future__ import annotations

import numpy as np

from synctalk.metrics.lipsync import px_scale


def second_differences(landmarks: np.ndarray, frame_index: np.ndarray | None = None) -> np.ndarray:
    """Magnitudes of the second temporal difference of each landmark.

    Args:
        landmarks: ``[N, L, 2]`` px (NaN where unknown), in time order.
        frame_index: ``[N]`` int frame numbers; a triple counts only when its three frames
            are consecutive (``i−1, i, i+1``). Default ``0 … N−1``.

    Returns:
        ``[M, L]`` float64 px of the frame: one row per usable triple (all landmarks finite).
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[-1] != 2:
        raise ValueError(f"landmarks must be [N, L, 2], got {lm.shape}")
    n = lm.shape[0]
    if n < 3:
        return np.zeros((0, lm.shape[1]))
    idx = np.arange(n) if frame_index is None else np.asarray(frame_index, np.int64)
    if idx.shape != (n,):
        raise ValueError(f"frame_index must be [{n}], got {idx.shape}")
    acc = lm[2:] - 2.0 * lm[1:-1] + lm[:-2]  # [N-2, L, 2]
    consecutive = (idx[1:-1] - idx[:-2] == 1) & (idx[2:] - idx[1:-1] == 1)
    finite = np.isfinite(acc).all(axis=(1, 2))
    return np.linalg.norm(acc[consecutive & finite], axis=-1)


def landmark_jitter(landmarks: np.ndarray, frame_side: int, *,
                    frame_index: np.ndarray | None = None,
                    indices: tuple[int, ...] | None = None) -> float:
    """Mean ``‖second temporal difference‖`` of landmarks, px at 512 (module docstring).

    Args:
        landmarks: ``[N, L, 2]`` px of ``frame_side``-px frames, in time order.
        frame_index: frame numbers (see :func:`second_differences`).
        indices: subset of landmarks (default all).

    Returns:
        Jitter in px at 512; NaN when no three consecutive frames are usable.
    """
    lm = np.asarray(landmarks, np.float64)
    if indices is not None:
        lm = lm[:, list(indices)]
    d = second_differences(lm, frame_index)
    return float(d.mean() * px_scale(frame_side)) if d.size else float("nan")

"""Step "blendshapes": the 52 MediaPipe scores, Savitzky–Golay smoothed, with names.

Output ``blendshapes.npz``: ``scores [N, 52]`` float32 in [0, 1] (smoothed), ``raw [N, 52]``,
``names [52]``, ``train_names [k]`` and ``train_index [k]`` — the subset the NeRF is
conditioned on (SyncTalk uses brows + blinks, k = 7).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import savgol_filter

from synctalk.errors import InputError
from synctalk.fsutil import atomic_path

#: SyncTalk's training subset: brows and blinks.
DEFAULT_TRAIN_NAMES = ("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
                       "browOuterUpRight", "eyeBlinkLeft", "eyeBlinkRight")
DEFAULT_PARAMS = {"window": 5, "order": 3, "train_names": list(DEFAULT_TRAIN_NAMES)}


def smooth_scores(scores: np.ndarray, window: int = 5, order: int = 3) -> np.ndarray:
    """Savitzky–Golay smoothing along time of ``[N, K]`` scores, clipped to [0, 1]."""
    if len(scores) < window:
        return scores.copy()
    return np.clip(savgol_filter(scores, window, order, axis=0, mode="interp"), 0.0, 1.0)


def run(subject: Path, params: dict) -> dict:
    track = np.load(Path(subject) / "track.npz")
    names = [str(n) for n in track["blendshape_names"]]
    raw = track["blendshapes"].astype(np.float32)
    missing = [n for n in params["train_names"] if n not in names]
    if missing:
        raise InputError(f"unknown blendshape name(s) {missing}; known: {', '.join(names)}")
    scores = smooth_scores(raw, params["window"], params["order"]).astype(np.float32)
    index = np.array([names.index(n) for n in params["train_names"]], np.int64)
    with atomic_path(Path(subject) / "blendshapes.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, scores=scores, raw=raw, names=np.array(names),
                     train_names=np.array(params["train_names"]), train_index=index)
    return {"n_frames": len(scores), "train_names": list(params["train_names"]),
            "mean_blink": float(scores[:, index[-2:]].mean()) if len(index) >= 2 else None}

"""Step ``track``: MediaPipe FaceLandmarker over ``frames/`` → ``track.npz``.

FaceLandmarker runs in VIDEO mode (frame ``i`` at ``round(i · 1000 / fps)`` ms) with up to
two faces; when several are found the one nearest the previous frame's face is kept. Short
gaps (≤ ``max_gap`` frames) are interpolated; everything else that was not detected is
filled from the nearest detected frame and marked invalid, so ``track.npz`` never holds NaN.
Array shapes and units are documented in :mod:`data_prep.subject`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.face_tracking import N_BLENDSHAPES, N_LANDMARKS, FaceLandmarker, FaceObservation
from data_prep.ingest import frame_count, iter_frames, prefetched, subject_fps
from synctalk.errors import InputError
from synctalk.fsutil import atomic_path

log = logging.getLogger(__name__)

TRACK_NAME = "track.npz"
DEFAULT_PARAMS = {"max_gap": 5}
#: Fraction of frames that must show a face.
MIN_DETECTED_FRACTION = 0.5


@dataclass
class Detections:
    """Raw per-frame FaceLandmarker output for one face (NaN where none was found).

    Attributes:
        detected: ``[N]`` bool.
        landmarks: ``[N, 478, 3]`` float32 px of the frame (z width-scaled).
        blendshapes: ``[N, 52]`` float32.
        matrices: ``[N, 4, 4]`` float32 facial transformation matrices.
        blendshape_names: the 52 names (empty if no face was found).
        multi_face_frames: frames in which several faces were found.
    """

    detected: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray
    matrices: np.ndarray
    blendshape_names: list[str]
    multi_face_frames: int


def detect_faces(subject: Path, model_path, fps: float) -> Detections:
    """Run FaceLandmarker (VIDEO mode, ≤ 2 faces) over every frame of ``subject``."""
    from tqdm import tqdm

    n = frame_count(subject)
    out = Detections(np.zeros(n, bool), np.full((n, N_LANDMARKS, 3), np.nan, np.float32),
                     np.full((n, N_BLENDSHAPES), np.nan, np.float32),
                     np.full((n, 4, 4), np.nan, np.float32), [], 0)
    prev: np.ndarray | None = None
    with FaceLandmarker(model_path, video=True, num_faces=2) as fl:
        for i, rgb in tqdm(prefetched(iter_frames(subject)), total=n, desc="track", unit="frame",
                           disable=None, leave=False):
            faces = fl.detect(rgb, int(round(i * 1000.0 / fps)))
            if not faces:
                continue
            if len(faces) > 1:
                if out.multi_face_frames == 0:
                    log.warning("track: several faces in frame %d; keeping the one nearest the "
                                "previous frame's face (warned once)", i)
                out.multi_face_frames += 1
            face = pick_face(faces, prev)
            prev = face.landmarks[:, :2].mean(axis=0)
            out.detected[i] = True
            out.landmarks[i], out.blendshapes[i], out.matrices[i] = (
                face.landmarks, face.blendshapes, face.matrix)
            out.blendshape_names = out.blendshape_names or face.blendshape_names
    return out


def pick_face(faces: list[FaceObservation], prev_centre: np.ndarray | None) -> FaceObservation:
    """The face whose landmark centroid is nearest ``prev_centre`` ([2] px); the largest
    face (landmark bounding-box area) when there is no previous face."""
    if prev_centre is None:
        def area(f):
            return float(np.prod(np.ptp(f.landmarks[:, :2], axis=0)))
        return max(faces, key=area)
    return min(faces, key=lambda f: float(np.linalg.norm(f.landmarks[:, :2].mean(0) - prev_centre)))


def interpolate_gaps(detected: np.ndarray, *arrays: np.ndarray,
                     max_gap: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Fill undetected frames of per-frame arrays.

    A run of undetected frames with a detected frame on both sides and at most ``max_gap``
    frames long is linearly interpolated between those two frames (valid). Every other
    undetected frame — leading, trailing, or in a longer gap — copies the nearest detected
    frame (the earlier one on a tie) and is invalid.

    Args:
        detected: ``[N]`` bool.
        arrays: each ``[N, ...]``; values at undetected frames are ignored (may be NaN).
        max_gap: longest gap (frames) that is interpolated.

    Returns:
        (the filled arrays, same shapes and dtypes; ``valid [N]`` bool: detected or
        interpolated).

    Raises:
        ValueError: no frame is detected.
    """
    det = np.asarray(detected, bool)
    n = len(det)
    if not det.any():
        raise ValueError("interpolate_gaps: no detected frame to fill from")
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(det, idx, -1))
    nxt = np.minimum.accumulate(np.where(det, idx, n)[::-1])[::-1]
    has_prev, has_next = prev >= 0, nxt < n
    short = ~det & has_prev & has_next & (nxt - prev - 1 <= max_gap)
    nearest = np.where(has_prev & (~has_next | (idx - prev <= nxt - idx)), prev, nxt)
    t = (idx[short] - prev[short]) / (nxt[short] - prev[short])
    filled = []
    for a in arrays:
        a = np.asarray(a)
        out = a[nearest].copy()
        w = t.reshape(-1, *([1] * (a.ndim - 1)))
        out[short] = ((1.0 - w) * a[prev[short]] + w * a[nxt[short]]).astype(a.dtype)
        filled.append(out)
    return filled, det | short


def orthonormalize(matrices: np.ndarray) -> np.ndarray:
    """Project the rotation block of rigid ``[K, 4, 4]`` transforms onto SO(3) (SVD).

    Element-wise interpolation of two rotations is not a rotation; this returns the
    nearest one (``U · diag(1, 1, det(U Vᵀ)) · Vᵀ``), keeps the translation and resets the
    bottom row to ``0 0 0 1``. MediaPipe's facial transformation matrices are rigid.
    """
    m = np.array(matrices, dtype=np.float64)
    if len(m) == 0:
        return m.astype(np.float32)
    u, _, vt = np.linalg.svd(m[:, :3, :3])
    d = np.ones((len(m), 3))
    d[:, 2] = np.sign(np.linalg.det(u @ vt))
    m[:, :3, :3] = (u * d[:, None, :]) @ vt
    m[:, 3] = [0.0, 0.0, 0.0, 1.0]
    return m.astype(np.float32)


def run(subject: Path, params: dict) -> dict:
    """Track the face over ``subject/frames`` and write ``track.npz`` atomically.

    Params: ``face_landmarker`` model path; ``max_gap`` (frames, default 5).

    Returns:
        info: ``n_frames``, ``frames_detected``, ``frames_interpolated``, ``frames_invalid``,
        ``multiple_faces_seen`` (frames with several faces), ``seconds_per_frame``.

    Raises:
        InputError: the subject has no frames, or fewer than half of them show a face.
    """
    p = {**DEFAULT_PARAMS, **params}
    subject = Path(subject)
    n = frame_count(subject)
    if n == 0:
        raise InputError(f"{subject} has no frames — run the ingest step first.")
    t0 = time.perf_counter()
    det = detect_faces(subject, p["face_landmarker"], subject_fps(subject))
    seconds = time.perf_counter() - t0
    n_det = int(det.detected.sum())
    if n_det < MIN_DETECTED_FRACTION * n:
        raise InputError(f"no face in most frames: a face was found in {n_det} of {n} frames; "
                         "prep needs one person facing the camera throughout the video.")
    (landmarks, blendshapes, matrices), valid = interpolate_gaps(
        det.detected, det.landmarks, det.blendshapes, det.matrices, max_gap=int(p["max_gap"]))
    interpolated = valid & ~det.detected
    matrices[interpolated] = orthonormalize(matrices[interpolated])
    with atomic_path(subject / TRACK_NAME) as tmp, open(tmp, "wb") as f:
        np.savez(f, landmarks=landmarks, blendshapes=blendshapes,
                 blendshape_names=np.array(det.blendshape_names), matrices=matrices,
                 detected=det.detected, valid=valid)
    n_interp = int(interpolated.sum())
    if n - n_det:
        log.info("track: face found in %d of %d frames; %d interpolated, %d invalid",
                 n_det, n, n_interp, int((~valid).sum()))
    return {"n_frames": n, "frames_detected": n_det, "frames_interpolated": n_interp,
            "frames_invalid": int((~valid).sum()), "multiple_faces_seen": det.multi_face_frames,
            "seconds_per_frame": round(seconds / n, 5)}


def load_track(subject: Path) -> dict[str, np.ndarray]:
    """``track.npz`` of a subject as a dict of arrays (see :mod:`data_prep.subject`)."""
    path = Path(subject) / TRACK_NAME
    if not path.is_file():
        raise InputError(f"{path} not found — run the track step first.")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}

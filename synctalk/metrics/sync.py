"""Audio-visual sync of a sequence of frames, scored by an AVE (:func:`synctalk.audio.score.sync_score`).

Mouth crops are cut from the frames exactly as the AVE's training data is
(:func:`synctalk.audio.dataset.face_boxes` around the MediaPipe face oval, smoothed,
lower half → 48×96), so a render is scored like a real clip. Short sequences (an eval
split of a couple of seconds) cannot be compared at SyncNet's ±15 frame shifts — that needs
four times as many frames with a face — so the largest shift is reduced to
at most ``(frames with a face − 1) // 4`` — less when the frames at the ends lack a full face
or audio window — and reported as ``max_offset``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from synctalk.errors import InputError
from synctalk.metrics.lipsync import FrameLandmarks

#: Below this largest shift (frames) the offset search means little: sync is not scored.
MIN_MAX_OFFSET = 3


def usable_max_offset(n_valid: int, limit: int | None = None) -> int:
    """Largest shift ``K`` such that ``n_valid`` frames leave ``2K + 1`` frames comparable at
    every shift (``n_valid − 2K ≥ 2K + 1``), capped at ``limit`` (default SyncNet's 15)."""
    from synctalk.audio.score import MAX_OFFSET

    limit = MAX_OFFSET if limit is None else limit
    return int(max(0, min(limit, (n_valid - 1) // 4)))


def frames_sync(frames: Sequence[np.ndarray], marks: FrameLandmarks, audio_16k: np.ndarray,
                fps: float, ave, ave_meta: dict, *, max_offset: int | None = None,
                device: str = "cpu") -> dict:
    """Sync offset and confidence of frames against audio.

    Args:
        frames: ``N`` consecutive ``[H, W, 3]`` uint8 RGB frames.
        marks: their MediaPipe landmarks (:meth:`~synctalk.metrics.lipsync.LandmarkDetector.detect_all`).
        audio_16k: ``[n]`` float32 mono 16 kHz; sample 0 is heard with ``frames[0]`` (it may
            run past the last frame: the last windows then see real audio).
        fps: frame rate.
        ave, ave_meta: an AVE with a trained face branch and its file's meta
            (:func:`synctalk.audio.ave.load_ave`).
        max_offset: cap on the shift search (default 15, reduced for short sequences).

    Returns:
        :func:`~synctalk.audio.score.sync_score`'s dict (``offset_frames``, ``confidence``,
        ``min_dist``, ...), or ``{"skipped": reason}`` when too few frames have a face.
    """
    from synctalk.audio import mel as M
    from synctalk.audio.dataset import InputSpec, face_boxes, mouth_crop
    from synctalk.audio.score import sync_score

    n_valid = int(marks.detected.sum())
    k = usable_max_offset(n_valid, max_offset)
    if k < MIN_MAX_OFFSET:
        return {"skipped": f"only {n_valid} of {len(marks)} frames have a face; sync needs at "
                           f"least {4 * MIN_MAX_OFFSET + 1}"}
    boxes = face_boxes(marks.landmarks, marks.detected)
    crops = np.stack([mouth_crop(f, boxes[i]) for i, f in enumerate(frames)])
    mel = M.melspectrogram(np.asarray(audio_16k, np.float32))
    # Frames at the ends lack a full 5-frame face window or a genuine audio window, so the
    # bound above can be optimistic: narrow the search until enough frames are comparable.
    for kk in range(k, MIN_MAX_OFFSET - 1, -1):
        try:
            return sync_score(crops, mel, fps, ave, spec=InputSpec.from_meta(ave_meta),
                              valid=marks.detected, max_offset=kk, device=device)
        except InputError as e:
            last = str(e)
    return {"skipped": last}

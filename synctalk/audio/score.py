"""Audio-visual sync of a clip measured with an AVE: offset and SyncNet-style confidence.

For face embeddings ``v_t`` (frames ``t−2 … t+2`` around frame ``t``) and audio embeddings
``a_u`` (the centred mel window of frame ``u``), both unit length, the AVE compares frame ``t``
with the audio of frame ``t + s`` for every shift ``s ∈ [−K, K]`` (``K =``
:data:`MAX_OFFSET` frames). Sign convention: a **positive offset means the audio lags the
video** by that many frames (the sound of frame ``t`` is heard at frame ``t + offset``);
shift the audio earlier by ``offset / fps`` seconds to fix it.

:func:`sync_score` follows SyncNet's ``calc_pdist`` evaluation (LSE-D / LSE-C) with the
Euclidean distance of unit embeddings, ``d = √(2 − 2·cos)`` ∈ [0, 2]: values are comparable
between clips scored by the same AVE, not with numbers from the original SyncNet, whose
embeddings are not normalised.
"""
from __future__ import annotations

import numpy as np
import torch

from synctalk.audio.ave import AVE, EMBED_DIM
from synctalk.audio.dataset import ClipPortion, InputSpec, MouthClip, face_inputs, mel_inputs
from synctalk.errors import InputError

#: Largest shift (video frames) compared, as in SyncNet's ``vshift``.
MAX_OFFSET = 15


@torch.no_grad()
def embed_portion(ave: AVE, portion: ClipPortion, spec: InputSpec, *,
                  device: torch.device | str = "cpu",
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length face and audio embeddings of every frame of a portion.

    Returns:
        ``(faces, audio)``, each ``[n, 512]`` float32 (``n = hi − lo``, row ``t − lo``); rows
        without ``visual_ok`` (faces) or ``audio_ok`` (audio) are NaN.
    """
    ave = ave.to(device).eval()
    n = portion.hi - portion.lo
    faces = np.full((n, EMBED_DIM), np.nan, np.float32)
    audio = np.full((n, EMBED_DIM), np.nan, np.float32)
    for mask, out, embed, inputs in ((portion.visual_ok, faces, ave.embed_face, face_inputs),
                                     (portion.audio_ok, audio, ave.embed_audio, mel_inputs)):
        frames = portion.frames_where(mask)
        for i in range(0, len(frames), batch_size):
            chunk = frames[i:i + batch_size]
            emb = embed(inputs(portion, chunk, spec, device))
            out[chunk - portion.lo] = emb.float().cpu().numpy()
    return faces, audio


def shift_similarities(faces: np.ndarray, audio: np.ndarray,
                       max_offset: int = MAX_OFFSET) -> np.ndarray:
    """Cosine similarity of each frame's face with the audio ``s`` frames later.

    Args:
        faces, audio: ``[n, 512]`` unit embeddings, NaN rows where missing
            (:func:`embed_portion`).

    Returns:
        ``[n, 2·max_offset + 1]`` float32: column ``s + max_offset`` holds
        ``cos(faces[t], audio[t + s])``; NaN where either is missing or ``t + s`` is outside.
    """
    n = len(faces)
    sims = np.full((n, 2 * max_offset + 1), np.nan, np.float32)
    for k, s in enumerate(range(-max_offset, max_offset + 1)):
        lo, hi = max(0, -s), min(n, n - s)
        if hi > lo:
            sims[lo:hi, k] = np.einsum("nd,nd->n", faces[lo:hi], audio[lo + s:hi + s])
    return sims


def complete_rows(sims: np.ndarray) -> np.ndarray:
    """``[n]`` bool: frames whose similarity is defined at every shift."""
    return np.isfinite(sims).all(axis=1)


def complete_windows(complete: np.ndarray, window: int) -> np.ndarray:
    """Starts ``i`` (int64) of every run of ``window`` consecutive complete frames
    (stride 1, so windows overlap)."""
    if window < 1 or len(complete) < window:
        return np.zeros(0, np.int64)
    ok = np.convolve(complete.astype(np.int64), np.ones(window, np.int64), mode="valid") == window
    return np.flatnonzero(ok)


def sync_score(mouth_crops: np.ndarray | MouthClip, mel: np.ndarray | torch.Tensor | None,
               fps: float | None, ave: AVE, *, spec: InputSpec = InputSpec(),
               valid: np.ndarray | None = None, max_offset: int = MAX_OFFSET, window_s: float = 1.0,
               device: torch.device | str = "cpu") -> dict:
    """Audio-visual offset and sync confidence of a clip (SyncNet's LSE evaluation).

    Args:
        mouth_crops: ``[N, 48, 96, 3]`` uint8 RGB mouth crops (:func:`~synctalk.audio.dataset.
            mouth_crop`), or a :class:`~synctalk.audio.dataset.MouthClip`.
        mel: ``[80, T]`` mel (mel.py scale, 80 frames/s, frame 0 of the audio with video frame
            0); None to use the clip's own (MouthClip only).
        fps: video frame rate; None to use the clip's (MouthClip only).
        ave: an AVE with a trained face branch.
        spec: its input convention (:meth:`InputSpec.from_meta`); the clip is its own
            normalisation portion.
        valid: ``[N]`` bool frames with a tracked face (array input; default all).
        max_offset: shifts ``−max_offset … max_offset`` frames are compared.
        window_s: window length for the windowed confidence.

    Returns:
        ``offset_frames`` (int, + = audio lags video), ``offset_s``, ``confidence``
        (LSE-C: median over shifts minus minimum of the mean distance over all usable frames),
        ``min_dist`` (LSE-D, the minimum), ``window_confidence`` (median over ``window_s``
        windows, stride one frame, of each window's median − min distance),
        ``window_offset_agreement`` (fraction of windows whose best shift is within ±1 frame
        of ``offset_frames``), ``sync_prob`` (mean clamped cosine at offset 0),
        ``frames_used``, ``fps``, ``max_offset``, ``distances`` (mean distance per shift,
        ``−max_offset … max_offset``).

    Raises:
        InputError: fewer than ``2·max_offset + 1`` frames have a face and audio at every shift
            (about 1.5 s of tracked face is needed at 25 fps), or inconsistent arguments.
    """
    if isinstance(mouth_crops, MouthClip):
        clip = mouth_crops
        mel = clip.mel if mel is None else mel
        fps = clip.fps if fps is None else fps
        valid = clip.valid if valid is None else valid
        name = clip.name
    else:
        if mel is None or fps is None:
            raise InputError("sync_score needs mel and fps with an array of mouth crops")
        name = "clip"
    crops = np.asarray(mouth_crops.crops if isinstance(mouth_crops, MouthClip) else mouth_crops)
    if crops.ndim != 4 or crops.shape[1:] != (48, 96, 3) or crops.dtype != np.uint8:
        raise InputError(f"mouth crops must be [N, 48, 96, 3] uint8, "
                         f"got {crops.shape} {crops.dtype}")
    valid = np.ones(len(crops), bool) if valid is None else np.asarray(valid, bool)
    mel = np.asarray(mel.cpu() if isinstance(mel, torch.Tensor) else mel, np.float32)
    if mel.ndim != 2 or mel.shape[0] != 80 or valid.shape != (len(crops),):
        raise InputError(f"sync_score needs mel [80, T] and valid [{len(crops)}], got mel "
                         f"{mel.shape} and valid {valid.shape}")
    portion = ClipPortion.of(MouthClip(name, float(fps), crops, valid, mel, ""))
    faces, audio = embed_portion(ave, portion, spec, device=device)
    sims = shift_similarities(faces, audio, max_offset)
    complete = complete_rows(sims)
    need = 2 * max_offset + 1
    if complete.sum() < need:
        raise InputError(f"{name}: only {int(complete.sum())} frames have a tracked face "
                         f"and audio at every shift ±{max_offset}; at least {need} are needed — "
                         "use a longer clip.")
    dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims[complete].astype(np.float64)))  # [F, 2K+1]
    mean = dist.mean(axis=0)
    best = int(np.argmin(mean))
    offset = best - max_offset
    window = max(1, int(round(window_s * portion.clip.fps)))
    d_all = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.nan_to_num(sims.astype(np.float64))))
    w_conf, w_agree = [], []
    for i in complete_windows(complete, window):
        m = d_all[i:i + window].mean(axis=0)
        w_conf.append(float(np.median(m) - m.min()))
        w_agree.append(abs(int(np.argmin(m)) - best) <= 1)
    return {
        "offset_frames": offset,
        "offset_s": offset / portion.clip.fps,
        "confidence": float(np.median(mean) - mean[best]),
        "min_dist": float(mean[best]),
        "window_confidence": float(np.median(w_conf)) if w_conf else float("nan"),
        "window_offset_agreement": float(np.mean(w_agree)) if w_agree else float("nan"),
        "sync_prob": float(np.clip(sims[complete, max_offset], 1e-7, 1 - 1e-7).mean()),
        "frames_used": int(complete.sum()),
        "fps": portion.clip.fps,
        "max_offset": max_offset,
        "distances": [round(float(x), 5) for x in mean],
    }

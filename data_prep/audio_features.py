"""Step ``audio``: the subject's audio encoder (AVE) and its per-frame features.

Outputs (paths relative to the subject directory):

=====================================  =====================================================
``ave.pt``                             the encoder actually used
                                       (:func:`synctalk.audio.ave.save_ave` format)
``audio_features/<encoder-id>.npy``    ``[N, 512]`` float32 AVE features, one per frame
                                       (:func:`synctalk.audio.features.subject_features`),
                                       with a ``.json`` beside it
=====================================  =====================================================

Which encoder:

* ``ave`` given (``synctalk prep --ave PATH``): that file — an AVE file (``synctalk ave
  import`` / ``train`` output, copied as is) or a raw SyncTalk ``audio_visual_encoder.pth`` /
  Wav2Lip ``lipsync_expert.pth`` (imported with
  :func:`synctalk.audio.checkpoint.import_checkpoint`). No training.
* otherwise a **subject AVE** is trained on the subject's own frames and audio
  (:func:`synctalk.audio.train.train`, slim ``width``, weight average ``ema``) for a CPU-time
  budget that scales with the clip: ``seconds_per_minute`` CPU seconds per minute of video,
  clamped to ``[min_seconds, max_seconds]`` (about 3 CPU-minutes for a 5-minute clip, 30 s for
  anything under 40 s), or exactly ``budget_seconds`` when set. When the clip's last
  ``val_fraction`` spans at least :data:`MIN_HELD_OUT_S` seconds it is held out and the best
  evaluation on it is kept (and reported); otherwise the whole clip trains and the final
  model is kept. The held-out tail (10 %) roughly coincides with the NeRF's validation frames
  (the last 1/11, step ``splits``), so the subject AVE never trains on those.

A subject AVE trained for a few minutes on one speaker is a per-speaker sync expert, weaker
than an imported or corpus-pretrained one; its features are still 512-d and audio-driven.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from synctalk.errors import ModelFileError

if TYPE_CHECKING:
    from synctalk.audio.ave import AVE

log = logging.getLogger(__name__)

AVE_NAME = "ave.pt"
#: Shortest held-out tail (seconds) worth evaluating on: a few 1 s windows with ±15-frame
#: shifts need about 2 s.
MIN_HELD_OUT_S = 2.0
#: Source recorded when the encoder was trained by this step.
TRAINED = "trained-on-subject"

DEFAULT_PARAMS = {
    "ave": None,              # path of a given encoder (None: train one on the subject)
    "ave_sha256": None,       # its content hash (so a changed file re-runs the step)
    "budget_seconds": None,   # training CPU seconds (None: from the clip length, below)
    "seconds_per_minute": 36.0,
    "min_seconds": 30.0,
    "max_seconds": 600.0,
    "width": 0.25,
    "ema": 0.998,
    "val_fraction": 0.1,
    "seed": 0,
}


def training_budget(n_frames: int, fps: float, params: dict) -> float:
    """CPU seconds of subject-AVE training for a clip of ``n_frames`` at ``fps``."""
    if params.get("budget_seconds") is not None:
        return float(params["budget_seconds"])
    minutes = n_frames / fps / 60.0
    return float(min(max(params["seconds_per_minute"] * minutes, params["min_seconds"]),
                     params["max_seconds"]))


def load_given_encoder(path) -> tuple["AVE", dict, bool]:
    """An encoder file given with ``--ave``: an AVE file, or a raw checkpoint to import.

    Returns:
        ``(model, meta, has_face)``.

    Raises:
        InputError: missing file. ModelFileError: neither an AVE file nor a recognised
        SyncTalk/Wav2Lip checkpoint (the importer's message lists the accepted layouts).
    """
    from synctalk.audio.ave import FORMAT, load_ave
    from synctalk.audio.checkpoint import import_checkpoint

    try:
        model, meta = import_checkpoint(path)
    except ModelFileError as raw_error:
        if f"already a {FORMAT} file" not in str(raw_error):
            raise
        model, meta = load_ave(path)  # an AVE file already
        has_face = bool(meta.get("has_face", True))
        return model, meta, has_face
    return model, meta, bool(meta["has_face"])


def _train_subject_ave(subject: Path, params: dict, out: Path) -> dict:
    """Train a subject AVE into ``out``; returns the info entries about the training."""
    from synctalk.audio.dataset import load_clip, subject_info
    from synctalk.audio.train import TrainConfig, train

    n_frames, fps = subject_info(subject)
    budget = training_budget(n_frames, fps, params)
    val_fraction = params["val_fraction"]
    if n_frames * val_fraction < MIN_HELD_OUT_S * fps:
        val_fraction = 0.0
    cfg = TrainConfig(width=params["width"], ema=params["ema"], seed=params["seed"],
                      minutes=budget / 60.0, clock="cpu", val_fraction=val_fraction,
                      keep="best" if val_fraction else "last")
    log.info("audio: training a subject AVE for %.0f CPU s (%s)", budget,
             f"holding out the last {val_fraction:.0%}" if val_fraction else "no held-out part")
    threads = torch.get_num_threads()
    # One thread: the budget is CPU time, and small convolutions at batch 32 do the most work
    # per CPU-second on one thread (more threads spin-wait, badly so on a busy machine).
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix=".ave-train-", dir=subject) as tmp:
            clip = load_clip(subject, cache_dir=Path(tmp) / "clips")
            summary = train([clip], Path(tmp) / AVE_NAME, cfg, progress=sys.stderr.isatty())
            Path(tmp, AVE_NAME).replace(out)
    finally:
        torch.set_num_threads(threads)
    info = {"train_steps": summary["steps"], "train_epochs": round(summary["epochs"], 2),
            "train_cpu_s": round(summary["train_s"], 1), "budget_s": round(budget, 1),
            "held_out_fraction": val_fraction}
    if val_fraction:
        best = summary["best"]
        info["kept_step"] = best["step"]
        for key in ("sync_acc", "offset_acc_1s", "offset_acc_2s"):
            value = best["metrics"].get(key)
            if value is not None and value == value:  # not NaN
                info[f"val_{key}"] = round(float(value), 4)
    return info


def run(subject: Path, params: dict) -> dict:
    """Write ``ave.pt`` and the cached features; see the module docstring.

    Returns:
        The step info: ``ave``, ``encoder_id``, ``features``, ``dim``, ``frames``, ``source``
        (``"trained-on-subject"`` or the given path), plus training figures when trained.
    """
    from synctalk.audio.ave import load_ave, save_ave
    from synctalk.audio.features import FEATURE_DIR, subject_features

    subject = Path(subject)
    p = {**DEFAULT_PARAMS, **params}
    out = subject / AVE_NAME
    info: dict = {}
    if p["ave"] is not None:
        model, meta, has_face = load_given_encoder(p["ave"])
        save_ave(out, model, meta, with_face=has_face)
        source = str(p["ave"])
    else:
        info = _train_subject_ave(subject, p, out)
        source = TRAINED
    model, meta = load_ave(out)
    path, feats, _ = subject_features(subject, ave=model, ave_meta=meta)
    return {"ave": AVE_NAME, "encoder_id": path.stem,
            "features": f"{FEATURE_DIR}/{path.name}", "dim": int(feats.shape[-1]),
            "frames": int(feats.shape[0]), "source": source, **info}

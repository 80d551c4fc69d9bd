"""Train an AVE as a lip-sync expert (SyncNet / Wav2Lip ``color_syncnet_train`` formulation).

Loss (:func:`sync_loss`): binary cross-entropy on :meth:`AVE.sync_prob` — the cosine
similarity of the audio and face embeddings clamped to (0, 1) — balanced between in-sync
pairs and off-sync pairs: audio shifted by 5 … ``max_shift`` frames, plus every other pairing
of faces and audio within the batch (:mod:`synctalk.audio.sampling`), so each step sees ~B²
negatives for B embeddings. Inputs use per-clip normalisation
(:class:`~synctalk.audio.dataset.InputSpec` ``"clip"``). Adam, with the learning rate decaying
along a cosine over the run (:func:`learning_rate`).

Held-out evaluation (:func:`evaluate`) on the last ``val_fraction`` of every clip, which
shares no frames and no audio with training windows (:func:`~synctalk.audio.dataset.split_clip`):

* ``sync_acc``: balanced accuracy of ``sync_prob > 0.5`` on each usable frame's in-sync pair
  and one off-sync pair (shift drawn from ±5 … ±15 frames with a fixed seed);
* ``offset_acc_1s`` / ``offset_acc_2s``: over every window of 1 s / 2 s of consecutive frames
  (stride one frame), the shift in −15 … +15 frames with the highest mean similarity; success
  when it is within ±1 frame of 0.

With ``ema`` set, an exponential moving average of the weights (:class:`WeightEMA`) is what
gets evaluated and saved. ``clock`` says whether ``minutes`` is wall or CPU time. With
``select_fraction``, the end of every training portion becomes a selection slice, evaluated
alongside the held-out part (``select_*`` entries): "best" is judged there, so the held-out
figures of the kept model are not chosen on themselves.

Files, for ``--out AVE.pt``: ``AVE.pt`` (with ``keep="best"``, the best model on the held-out
metrics — the mean of the three accuracies — or the last one without a held-out part; with
``keep="last"``, the final model; the
:func:`~synctalk.audio.ave.save_ave` format, meta records the inputs convention, clips, config
and metrics), ``AVE.pt.ckpt``
(resumable state: model, weight average, optimiser, RNG, step, elapsed time, best so far,
evaluations), ``AVE.pt.log.jsonl``
(one JSON object per evaluation and per logging interval) and, when
``torch.utils.tensorboard`` imports, TensorBoard events in ``AVE.pt.tb/``. All are written
atomically.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synctalk.audio.ave import AVE, SYNCTALK, save_ave
from synctalk.audio.dataset import ClipPortion, InputSpec, MouthClip, split_clip
from synctalk.audio.sampling import MIN_SHIFT, SyncSampler
from synctalk.audio.score import (MAX_OFFSET, complete_rows, complete_windows, embed_portion,
                                  shift_similarities)
from synctalk.device import torch_device
from synctalk.errors import InputError, ModelFileError
from synctalk.fsutil import atomic_path

log = logging.getLogger(__name__)

CKPT_FORMAT = "synctalk-ave-train/1"
#: Seed of the held-out negative shifts (fixed, so every evaluation sees the same pairs).
EVAL_SEED = 1234
#: Steps between training-loss records in the log.
LOG_EVERY = 20
#: Learning rate at the end of a run, as a fraction of the peak.
FINAL_LR_FRACTION = 0.05
#: What checkpoints written before a setting existed were trained with.
LEGACY_SETTINGS = {"ema": 0.0, "clock": "wall", "min_shift": 5, "select_fraction": 0.0}
#: Clocks that ``TrainConfig.minutes`` can be measured with.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class TrainConfig:
    """Training settings (the ``synctalk ave train`` options).

    Attributes:
        width: channel multiplier of the AVE (:class:`~synctalk.audio.ave.AVE`); embeddings
            are 512-d at any width.
        audio_layout: audio-branch layout (``"synctalk"`` or ``"wav2lip"``).
        batch_size: pairs per step (even: half in sync, half not).
        lr: peak Adam learning rate; it follows a cosine from ``lr`` down to
            ``FINAL_LR_FRACTION · lr`` over the run (:func:`learning_rate`).
        weight_decay: Adam L2 weight decay.
        epochs: stop after this many epochs (an epoch draws each anchor frame about once as a
            positive and once as a negative: ``⌈2·anchors / batch_size⌉`` steps).
        minutes: stop when this much training time (summed over resumed runs) has passed,
            measured by ``clock``.
        clock: ``"wall"`` (elapsed time) or ``"cpu"`` (CPU time of this process, all threads:
            with one torch thread, the work done regardless of other jobs sharing the
            machine). Applies to ``minutes``, the learning-rate schedule and ``train_s``.
        max_steps: stop after this many steps.
        val_fraction: held-out share: the tail of every clip (``val_split="tail"``) or whole
            clips (``"clips"``).
        val_split: ``"tail"`` (the last ``val_fraction`` of each clip; for a few long clips) or
            ``"clips"`` (each clip is held out whole with probability ``val_fraction``, decided
            by its cache key; for many short clips such as LRS2's).
        max_shift: largest audio shift (frames) of a training negative.
        min_shift: smallest audio shift (frames) of a training negative (held-out negatives
            are always ≥ :data:`~synctalk.audio.sampling.MIN_SHIFT` = 5 frames off).
        group_size: rows of a batch drawn from one clip portion
            (:class:`~synctalk.audio.sampling.SyncSampler`).
        seed: seed of the initial weights and of batch sampling/augmentation.
        device: torch device for training.
        eval_every: steps between evaluations/checkpoints; 0 = once per epoch.
        augment: use data augmentation.
        ema: decay of an exponential moving average of the weights (parameters and
            batch-norm statistics) that is evaluated and saved instead of the raw weights;
            0 = off. The decay of step ``k`` is ``min(ema, (1 + k) / (10 + k))``, so early
            averages are not dominated by the initial weights (see :class:`WeightEMA`).
        keep: which model ``--out`` holds: ``"best"`` (the best evaluation — on the
            selection slice when there is one, else on the held-out part; the last one
            without either) or ``"last"`` (the final model).
        select_fraction: share of the end of every *training* portion set aside as a
            selection slice (:func:`carve_selection`): it is not trained on, "best" is judged
            on it, and the held-out part stays an unbiased test of the kept model. 0 = none.
    """

    width: float = 0.25
    audio_layout: str = SYNCTALK
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: float | None = None
    minutes: float | None = None
    max_steps: int | None = None
    val_fraction: float = 0.1
    val_split: str = "tail"
    max_shift: int = 15
    min_shift: int = MIN_SHIFT
    group_size: int = 16
    seed: int = 0
    device: str = "cpu"
    eval_every: int = 0
    augment: bool = True
    ema: float = 0.998
    keep: str = "best"
    clock: str = "wall"
    select_fraction: float = 0.0

    #: Settings a resumed run must share with the checkpoint.
    FIXED = ("width", "audio_layout", "batch_size", "val_fraction", "val_split", "max_shift",
             "group_size", "seed", "augment", "ema", "clock", "min_shift", "select_fraction")


def learning_rate(cfg: "TrainConfig", progress: float) -> float:
    """Cosine decay from ``cfg.lr`` (progress 0) to ``FINAL_LR_FRACTION · cfg.lr`` (progress 1).

    ``progress`` is the fraction of the run done: the larger of steps / step limit (from
    ``max_steps`` or ``epochs``) and elapsed / ``minutes``, whichever limits are set.
    """
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return cfg.lr * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)


class WeightEMA:
    """Exponential moving average of a model's state (parameters and buffers).

    After every optimiser step, :meth:`update` moves each floating-point entry of the
    average towards the model's: ``avg ← d·avg + (1 − d)·w`` with
    ``d = min(decay, (1 + k) / (10 + k))`` at update ``k`` (0-based; the warm-up keeps the
    first averages close to the current weights); integer entries (batch-norm counters)
    are copied. The averaged copy is what gets evaluated and saved: it smooths the
    step-to-step noise of small-batch training without a second pass over the data.

    Args:
        model: the trained model (its state is copied; it is not modified).
        decay: the long-run decay in (0, 1).
    """

    def __init__(self, model: AVE, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise InputError(f"--ema must be in (0, 1) (or 0 for none), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: AVE) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for avg, w in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.is_floating_point():
                avg.lerp_(w.detach(), 1.0 - d)
            else:
                avg.copy_(w)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates,
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])


def sync_loss(audio: torch.Tensor, faces: torch.Tensor, targets: torch.Tensor,
              eps: float = 1e-7) -> torch.Tensor:
    """Balanced BCE of every face with every audio embedding (Wav2Lip's expert loss on all
    pairs of the batch).

    Args:
        audio, faces: ``[B, 512]`` unit-length embeddings.
        targets: ``[B, B]`` 1 (in sync), 0 (off sync) or −1 (ignored), face-major
            (:class:`~synctalk.audio.sampling.SyncBatch`).

    Returns:
        Scalar: ``(BCE over in-sync pairs + BCE over off-sync pairs) / 2``, each a mean, on
        the probability ``clamp(cos, eps, 1 − eps)`` (:meth:`AVE.sync_prob`).
    """
    prob = (faces @ audio.T).clamp(eps, 1.0 - eps)
    pos, neg = targets == 1, targets == 0
    return -(torch.log(prob[pos]).mean() + torch.log1p(-prob[neg]).mean()) / 2.0


@torch.no_grad()
def evaluate(ave: AVE, portions: list[ClipPortion], spec: InputSpec, *,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Held-out lip-sync metrics (see the module docstring).

    Returns:
        ``sync_acc``, ``pos_acc``, ``neg_acc``, ``val_loss`` (BCE of the pairs),
        ``offset_acc_1s``, ``offset_acc_2s``, ``pairs``, ``windows_1s``, ``windows_2s``;
        NaN where no pair/window exists.
    """
    g = np.random.default_rng(EVAL_SEED)
    pos, neg = [], []
    hits = {1: [], 2: []}
    for p in portions:
        faces, audio = embed_portion(ave, p, spec, device=device)
        sims = shift_similarities(faces, audio, MAX_OFFSET)
        for t in np.flatnonzero(np.isfinite(sims[:, MAX_OFFSET])):
            shifts = [s for s in range(MIN_SHIFT, MAX_OFFSET + 1) for s in (s, -s)
                      if np.isfinite(sims[t, s + MAX_OFFSET])]
            if shifts:
                pos.append(sims[t, MAX_OFFSET])
                neg.append(sims[t, shifts[g.integers(len(shifts))] + MAX_OFFSET])
        complete = complete_rows(sims)
        for seconds in hits:
            window = int(round(seconds * p.clip.fps))
            for i in complete_windows(complete, window):
                best = int(np.argmax(sims[i:i + window].mean(axis=0))) - MAX_OFFSET
                hits[seconds].append(abs(best) <= 1)
    out: dict[str, float] = {"pairs": len(pos), "windows_1s": len(hits[1]),
                             "windows_2s": len(hits[2])}
    if pos:
        prob_pos = np.clip(np.array(pos, np.float64), 1e-7, 1 - 1e-7)
        prob_neg = np.clip(np.array(neg, np.float64), 1e-7, 1 - 1e-7)
        out["pos_acc"] = float((prob_pos > 0.5).mean())
        out["neg_acc"] = float((prob_neg <= 0.5).mean())
        out["sync_acc"] = (out["pos_acc"] + out["neg_acc"]) / 2.0
        out["val_loss"] = float(-(np.log(prob_pos).mean() + np.log(1 - prob_neg).mean()) / 2.0)
    for seconds, h in hits.items():
        out[f"offset_acc_{seconds}s"] = float(np.mean(h)) if h else float("nan")
    return out


def split_clips(clips: list[MouthClip], val_fraction: float, val_split: str = "tail"
                ) -> list[tuple[ClipPortion | None, ClipPortion | None]]:
    """``(training, held-out)`` portions of every clip (either may be None).

    ``"tail"``: :func:`~synctalk.audio.dataset.split_clip`. ``"clips"``: a clip is held out
    whole when the first 8 hex digits of its key, read as a fraction of 2³², are below
    ``val_fraction`` — stable when clips are added or removed.
    """
    if val_split == "tail":
        return [split_clip(c, val_fraction) for c in clips]
    if val_split != "clips":
        raise InputError(f"--val-split must be 'tail' or 'clips', got {val_split!r}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    held = [int(c.key[:8], 16) < val_fraction * 2 ** 32 for c in clips]
    return [(None, ClipPortion.of(c)) if h else (ClipPortion.of(c), None)
            for c, h in zip(clips, held)]


def carve_selection(portion: ClipPortion, fraction: float
                    ) -> tuple[ClipPortion, ClipPortion | None]:
    """``(training, selection)``: ``portion`` without its last ``fraction``, and that part
    (None when it would be empty). Each is normalised with its own statistics and, as in
    :func:`~synctalk.audio.dataset.split_clip`, the two share no frames and no audio."""
    lo, hi = portion.lo, portion.hi
    v = lo + int(round((hi - lo) * (1.0 - fraction)))
    if not lo < v < hi:
        return portion, None
    return ClipPortion.of(portion.clip, lo, v), ClipPortion.of(portion.clip, v, hi)


def selection_score(metrics: dict[str, float]) -> float:
    """What "best" means: the mean of ``sync_acc``, ``offset_acc_1s`` and ``offset_acc_2s``
    (NaN entries left out; −inf when all are NaN)."""
    vals = [metrics.get(k, float("nan")) for k in ("sync_acc", "offset_acc_1s", "offset_acc_2s")]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("-inf")


class _Log:
    """JSON-lines log (appended; each line written whole) plus optional TensorBoard."""

    def __init__(self, out: Path) -> None:
        self.path = Path(f"{out}.log.jsonl")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("ave train: torch.utils.tensorboard unavailable; JSON-lines log only")
        else:
            self.tb = SummaryWriter(str(Path(f"{out}.tb")))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _save_ckpt(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_ckpt(path: Path, cfg: TrainConfig, clip_keys: list[str]) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint {path} — start without --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-torch or damaged files
        raise ModelFileError(f"cannot read training checkpoint {path} ({type(e).__name__}) — "
                             "delete it and start without --resume.") from e
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise ModelFileError(f"{path} is not a {CKPT_FORMAT} checkpoint — "
                             "start without --resume.")
    saved = state["config"]
    saved = {**LEGACY_SETTINGS, **saved}
    changed = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(cfg, k)!r}"
               for k in TrainConfig.FIXED if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise ModelFileError(f"{path} was trained with other settings ({'; '.join(changed)}) — "
                             "use the same settings, or start without --resume.")
    if state["clips"] != clip_keys:
        raise InputError(f"{path} was trained on other data ({len(state['clips'])} clips); pass "
                         "the same inputs in the same order, or start without --resume.")
    return state


def _meta(cfg: TrainConfig, spec: InputSpec, clips: list[MouthClip], step: int,
          metrics: dict[str, float]) -> dict[str, Any]:
    return {"trained_by": "synctalk ave train", "has_face": True, "inputs": spec.to_meta(),
            "width": cfg.width, "step": step,
            "clips": [{"name": c.name, "key": c.key, "fps": c.fps, "n_frames": c.n_frames}
                      for c in clips],
            "config": {k: v for k, v in asdict(cfg).items() if k != "device"},
            "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in metrics.items()}}


def train(clips: list[MouthClip], out, cfg: TrainConfig, *, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume training) an AVE on ``clips``; see the module docstring for files.

    At least one of ``cfg.epochs``, ``cfg.minutes``, ``cfg.max_steps`` must be set. Runs are
    deterministic on the CPU for a given seed, and a run resumed from its checkpoint
    continues exactly as an uninterrupted one (apart from ``minutes``, which is wall time).
    Ctrl-C saves the checkpoint before stopping.

    Returns:
        Summary: ``steps``, ``epochs``, ``train_s``, ``s_per_epoch``, ``best`` (step,
        held-out ``metrics`` and ``selection``-slice metrics of the best evaluation), ``last``
        (held-out metrics at the final step),
        ``evals`` (``[{"step", **metrics}]`` of every evaluation, in order), ``out``.

    Raises:
        InputError: bad settings or no usable training data. ModelFileError: ``resume`` with a
        checkpoint of other settings. OutputError: ``out`` cannot be written.
    """
    out = Path(out)
    limits_given = {"--epochs": cfg.epochs, "--minutes": cfg.minutes, "--max-steps": cfg.max_steps}
    if all(v is None for v in limits_given.values()):
        raise InputError("say how long to train: --epochs, --minutes or --max-steps.")
    for name, value in limits_given.items():
        if value is not None and not value > 0:
            raise InputError(f"{name} must be positive, got {value}")
    if cfg.batch_size < 2 or cfg.batch_size % 2:
        raise InputError(f"--batch-size must be an even number ≥ 2, got {cfg.batch_size}")
    if cfg.keep not in ("best", "last"):
        raise InputError(f"--keep must be 'best' or 'last', got {cfg.keep!r}")
    if cfg.clock not in CLOCKS:
        raise InputError(f"--clock must be one of {', '.join(CLOCKS)}, got {cfg.clock!r}")
    now = CLOCKS[cfg.clock]
    if not out.parent.is_dir():
        raise InputError(f"output directory does not exist: {out.parent} — create it first.")
    device = torch_device(cfg.device)
    if not 0 <= cfg.select_fraction < 1:
        raise InputError(f"--select-fraction must be in [0, 1), got {cfg.select_fraction}")
    spec = InputSpec()
    splits = split_clips(clips, cfg.val_fraction, cfg.val_split)
    training = [tr for tr, _ in splits if tr is not None]
    select: list[ClipPortion] = []
    if cfg.select_fraction:
        carved = [carve_selection(tr, cfg.select_fraction) for tr in training]
        training = [tr for tr, _ in carved]
        select = [sel for _, sel in carved if sel is not None]
    sampler = SyncSampler(training, spec,
                          max_shift=cfg.max_shift, group_size=cfg.group_size,
                          augment=cfg.augment, device=device, min_shift=cfg.min_shift)
    held_out = [va for _, va in splits if va is not None]
    steps_per_epoch = math.ceil(2 * len(sampler) / cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    limits = ([cfg.max_steps] if cfg.max_steps else []) + \
        ([math.ceil(cfg.epochs * steps_per_epoch)] if cfg.epochs else [])
    total = min(limits) if limits else None

    model = AVE(cfg.audio_layout, seed=cfg.seed, width=cfg.width).to(device)
    if device.type == "cpu":
        # NHWC convolution weights: ~15 % faster forward + backward with oneDNN on the CPU
        # (same numbers up to rounding; saved state dicts load into either layout).
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = WeightEMA(model, cfg.ema) if cfg.ema else None
    g = torch.Generator().manual_seed(cfg.seed)
    ckpt_path = Path(f"{out}.ckpt")
    keys = [c.key for c in clips]
    step, elapsed, best = 0, 0.0, None
    evals: list[dict[str, Any]] = []
    if resume:
        state = _load_ckpt(ckpt_path, cfg, keys)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, elapsed, best = state["step"], state["elapsed_s"], state["best"]
        evals = list(state.get("evals", []))
        log.info("ave train: resumed at step %d (%.1f min trained)", step, elapsed / 60)
    logger = _Log(out)
    log.info("ave train: %d clips, %d training anchors, %d held-out portions, %d selection "
             "slices; %d steps per epoch", len(clips), len(sampler), len(held_out), len(select),
             steps_per_epoch)

    def checkpoint() -> None:
        _save_ckpt(ckpt_path, {"format": CKPT_FORMAT, "config": asdict(cfg), "clips": keys,
                               "step": step, "elapsed_s": elapsed, "best": best,
                               "evals": evals,
                               "model": {k: v.cpu() for k, v in model.state_dict().items()},
                               "ema": ema.state_dict() if ema is not None else None,
                               "optimizer": opt.state_dict(), "generator": g.get_state()})

    def evaluation(final: bool = False) -> dict[str, float]:
        nonlocal best
        judged = ema.model if ema is not None else model
        metrics = evaluate(judged, held_out, spec, device=device) if held_out else {}
        chosen_on = evaluate(judged, select, spec, device=device) if select else {}
        model.train()
        score = selection_score(chosen_on if select else metrics)
        record = {**metrics, **{f"select_{k}": v for k, v in chosen_on.items()}}
        logger.write({"kind": "eval", "step": step, "epoch": step / steps_per_epoch,
                      "time": elapsed, **record, "score": score})
        evals.append({"step": step, **record})
        improved = best is None or not (held_out or select) or score > best["score"]
        if improved:
            best = {"step": step, "score": score, "metrics": metrics, "selection": chosen_on}
        if (cfg.keep == "best" and improved) or (cfg.keep == "last" and final):
            save_ave(out, judged, _meta(cfg, spec, clips, step, record))
        return metrics

    def fraction_done() -> float:
        return max(step / total if total else 0.0,
                   elapsed / (cfg.minutes * 60.0) if cfg.minutes else 0.0)

    def done() -> bool:
        return fraction_done() >= 1.0

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", desc="ave train",
               dynamic_ncols=True)
    model.train()
    last: dict[str, float] = {}
    running = []
    clock = now() - elapsed  # elapsed = time of the loop (cfg.clock), summed over runs
    try:
        while not done():
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, fraction_done())
            batch = sampler.batch(cfg.batch_size, g)
            loss = sync_loss(model.embed_audio(batch.mels), model.embed_face(batch.faces),
                             batch.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            running.append(loss.item())
            bar.update(1)
            elapsed = now() - clock
            if step % LOG_EVERY == 0:
                logger.write({"kind": "train", "step": step, "epoch": step / steps_per_epoch,
                              "time": elapsed, "loss": float(np.mean(running)),
                              "lr": opt.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{np.mean(running):.3f}")
                running = []
            if step % eval_every == 0 and not done():
                last = evaluation()
                checkpoint()
                elapsed = now() - clock
        last = evaluation(final=True)
        elapsed = now() - clock
        checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        log.info("ave train: interrupted at step %d; resume with --resume", step)
        raise
    finally:
        bar.close()
        logger.close()
    return {"out": str(out), "steps": step, "epochs": step / steps_per_epoch,
            "steps_per_epoch": steps_per_epoch, "train_s": elapsed,
            "s_per_epoch": elapsed / max(step / steps_per_epoch, 1e-9),
            "anchors": len(sampler), "best": best, "last": last, "evals": evals}

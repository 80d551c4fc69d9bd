"""Training: head → lip fine-tune → val-pose registration → torso, with exact resume.

Stages (:data:`STAGES`; any with 0 iterations is skipped):

1. **head** — rays from :meth:`RaySampler.head`; loss per ray:
   photometric L1 (with ``w_uncertainty`` > 0: rays weighted by ``R·softmax(u)`` of their
   composited uncertainty ``u``, detached, and the uncertainty head trained to predict the
   error with ``e/(2β²) + (log β)²/2``, ``β = 1 + u``), ``w_entropy``·opacity entropy,
   ``w_alpha``·BCE(opacity, head mask), ``w_audio_locality``·mean(audio attention outside the
   lower-face box) and ``w_bs_locality``·mean(blendshape attention outside the eye box).
2. **lip** — the same head, rays from :meth:`RaySampler.lip` (mouth patch + random patches):
   L1 + ``w_lip_ssim``·(1 − SSIM) + ``w_lip_lpips``·LPIPS per patch, plus the locality terms.
   LPIPS (:mod:`synctalk.metrics.lpips`) only with the weight files ``lpips_backbone`` /
   ``lpips_linear``: this project ships no pretrained weights.
3. **register** — the head frozen; each val frame's pose correction (below) is fitted to its
   image: ``register_rays`` rays per step spread over all val frames (the training
   sampler's face/head/AABB boxes; none aimed at the mouth, which the audio drives), plain
   L1. Val frames are never trained on, so without this they keep prep's poses.
4. **torso** — the head frozen; the 2-D torso field composited over the background plate is
   fitted to the subject's torso images (``torso/`` over ``background.png``) with L1 plus
   0.05·BCE of its alpha against the neck/torso labels.

Pose corrections: every frame's prep pose gets a learned rigid correction
(:mod:`synctalk.nerf.poses`); the training frames' corrections learn with the field from head
step ``pose_warmup`` on (learning rate ``lr_pose``, on the same decay), the val frames' in the
register stage (``lr_register``, decaying over the stage). ``lr_pose = 0`` keeps prep's poses.

Optimiser: AdamW with β = (``adam_beta1``, 0.99) (default β₁ = 0), learning rate
``lr_grid`` for grid tables (no weight decay) and ``lr_net`` for networks and codes, decaying
exponentially to ``lr_final`` of its start over the head + lip stages (and separately over the
torso stage). The occupancy grid is updated every ``occ_update_every`` steps after
``occ_warmup`` during the head and lip stages.

Determinism and resume: all training randomness (frames, pixels, sample jitter, occupancy
jitter, the frame used for an occupancy update) comes from one ``torch.Generator`` owned by
the trainer; the model is initialised from seeded generators. A checkpoint
(``checkpoints/step_%07d.pt``, atomic, the newest two kept) holds the model (with the
occupancy grid), optimiser, AMP scaler, generator states, stage, step, elapsed time and the
stage plan, so ``--resume`` continues exactly: on the CPU the final weights equal those of an
uninterrupted run bit for bit. A SIGINT/SIGTERM is taken at the next step boundary: the
trainer saves a checkpoint there and raises :class:`KeyboardInterrupt`.

Time budget (``time_budget`` minutes): each stage gets a share of the remaining time in
proportion to its planned iterations × its measured cost per step; once a stage's step rate is
known its iteration count is cut to what fits (the learning-rate schedule follows the cut),
and a final validation and save always happen. A budgeted run depends on the machine's
speed, so it is not reproducible step for step.
"""
from __future__ import annotations

import logging
import math
import shutil
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synctalk.device import torch_device
from synctalk.errors import InputError, ModelFileError, OutputError
from synctalk.fsutil import atomic_path, write_json_atomic
from synctalk.nerf.config import TrainConfig
from synctalk.nerf.data import (FACE_BIT, HEAD, NECK, RayBatch, RaySampler, SubjectData, gather,
                                in_boxes, subject_identity)
from synctalk.nerf.geometry import pixel_rays
from synctalk.nerf.inference import render_head_image, torso_layer
from synctalk.nerf.model import (AVE_NAME, CKPT_DIR, CONFIG_NAME, DEFAULT_CPU_THREADS, MODEL_FORMAT,
                                 WEIGHTS_NAME, TalkingHeadModel, load_state, read_model_config,
                                 read_torch, torch_threads)
from synctalk.nerf.occupancy import cells_seen
from synctalk.nerf.renderer import render_rays

log = logging.getLogger(__name__)

STAGES = ("head", "lip", "register", "torso")
#: Relative cost of one step of each stage before it is measured (head = 1).
DEFAULT_COST = {"head": 1.0, "lip": 1.0, "register": 1.5, "torso": 0.3}
KEEP_CHECKPOINTS = 2
#: Steps over which the time budget measures the step rate.
RATE_WINDOW = 40
TORSO_ALPHA_WEIGHT = 0.05


def read_frame_rgb(subject: Path, i: int, size: int) -> np.ndarray:
    """Original frame ``i`` (``frames/``) at ``size`` as ``[H, W, 3]`` uint8 RGB."""
    import cv2

    from data_prep.subject import frame_name

    img = cv2.imread(str(subject / "frames" / frame_name(i, "jpg")), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read frame {i} of {subject}")
    img = np.ascontiguousarray(img[..., ::-1])
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def pick_evenly(items: list[int], n: int) -> list[int]:
    """``n`` items spread evenly over ``items`` (all of them when ``n`` ≤ 0 or ≥ len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


@dataclass
class StagePlan:
    """Iterations of one stage: ``planned`` (config) and ``target`` (after the time budget)."""

    planned: int
    target: int
    done: int = 0

    def to_dict(self) -> dict:
        return {"planned": self.planned, "target": self.target, "done": self.done}


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` returns (also ``summary.json``)."""

    model_dir: str
    steps: int
    seconds: float
    stages: dict[str, dict]
    val: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    def to_dict(self) -> dict:
        return {"model_dir": self.model_dir, "steps": self.steps, "seconds": round(self.seconds, 2),
                "stages": self.stages, "val": self.val, "interrupted": self.interrupted}


class _StopFlag:
    """SIGINT/SIGTERM → a flag checked at step boundaries (a second SIGINT interrupts at once)."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        log.warning("train: stopping at the end of this step (checkpoint follows)...")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Train a model directory (module docstring).

    Args:
        subject: prepared subject directory.
        out: model directory (created; its parent must exist).
        cfg: settings (ignored on ``resume``: the model's ``config.json`` is used).
        device: ``"cpu"`` / ``"cuda"``; backend: op backend (``auto|torch|native``).
        ave: audio encoder file (default ``SUBJECT/ave.pt``).
        resume: continue from the newest checkpoint in ``out``.
        amp: mixed precision (CUDA only).
        progress: show tqdm bars.
        threads: torch CPU threads while training (None: :data:`DEFAULT_CPU_THREADS` on the
            CPU, torch's setting on CUDA); the previous setting is restored afterwards.
    """

    def __init__(self, subject, out, cfg: TrainConfig | None = None, *, device: str = "cpu",
                 backend: str = "auto", ave=None, resume: bool = False, amp: bool = True,
                 progress: bool = True, threads: int | None = None) -> None:
        self.subject = Path(subject)
        self.out = Path(out)
        self.device = torch_device(device)
        self.backend = backend
        self.ave_arg = ave
        self.progress = progress
        if threads is not None and threads < 1:
            raise InputError(f"threads must be ≥ 1, got {threads}")
        self.threads = threads or (DEFAULT_CPU_THREADS if self.device.type == "cpu" else None)
        self.amp = bool(amp and self.device.type == "cuda")
        self.resume = resume
        self._check_backend()
        if resume:
            self.meta = read_model_config(self.out)
            self.cfg = TrainConfig.from_dict(self.meta["config"], what=str(self.out / CONFIG_NAME))
            if cfg is not None and cfg.to_dict() != self.cfg.to_dict():
                log.warning("train: --resume uses the settings in %s; the ones given now are "
                            "ignored", self.out / CONFIG_NAME)
            self._check_same_subject()
        else:
            if cfg is None:
                raise InputError("no training settings given")
            self.cfg = cfg
            self._claim_out()
        self.t_start = time.perf_counter()
        self.elapsed_before = 0.0
        with torch_threads(self.threads):
            self._setup()

    # ------------------------------------------------------------------ set-up
    def _check_backend(self) -> None:
        from synctalk.ops.backend import available

        if self.backend != "auto" and self.backend not in available("grid_encode"):
            raise InputError(f"backend {self.backend!r} is not available; available: "
                             f"{', '.join(['auto'] + available('grid_encode'))}")

    def _claim_out(self) -> None:
        out = self.out
        if not out.parent.is_dir():
            raise OutputError(f"parent directory of {out} does not exist — create it first.")
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory.")
        if out.is_dir() and any(out.iterdir()):
            if (out / CONFIG_NAME).is_file():
                raise OutputError(f"{out} already holds a model; pass --resume to continue it or "
                                  "choose another --out.")
            raise OutputError(f"{out} is not empty; choose a new or empty --out directory.")

    def _check_same_subject(self) -> None:
        saved = self.meta["subject"]
        now = subject_identity(self.subject)
        diffs = [k for k in ("source_sha256", "size", "n_frames") if saved.get(k) != now.get(k)]
        if diffs:
            raise InputError(f"model/subject mismatch: {self.out} was trained on {saved['path']} "
                             f"but {self.subject} differs in {', '.join(diffs)} — resume with the "
                             "same subject, or train a new model with another --out.")

    def _setup(self) -> None:
        from synctalk.audio.ave import load_ave
        from synctalk.audio.dataset import InputSpec
        from synctalk.audio.features import ave_encoder_id, subject_features
        from synctalk.nerf.geometry import HeadBox

        cfg = self.cfg
        t = time.perf_counter()
        box = HeadBox.from_dict(self.meta["box"]) if self.resume else None
        self.data = SubjectData.load(self.subject, cfg.size, images=True, box=box,
                                     progress=self.progress)
        if self.resume:
            ave_path = self.out / AVE_NAME
        else:
            from synctalk.errors import require_file

            ave_path = Path(self.ave_arg) if self.ave_arg else self.subject / AVE_NAME
            if not ave_path.is_file():
                raise InputError(f"no audio encoder: {ave_path} does not exist — run `synctalk prep` "
                                 "(its 'audio' step writes SUBJECT/ave.pt) or pass --ave FILE.")
            require_file(ave_path, "AVE file")
        ave, ave_meta = load_ave(ave_path)
        encoder_id = ave_encoder_id(ave, InputSpec.from_meta(ave_meta))
        if self.resume and encoder_id != self.meta["encoder_id"]:
            raise ModelFileError(f"{ave_path} is not the encoder {self.out} was trained with "
                                 f"({encoder_id} vs {self.meta['encoder_id']}).")
        _, feats, _ = subject_features(self.subject, ave=ave, ave_meta=ave_meta)
        feats = torch.from_numpy(np.asarray(feats, np.float32))
        if feats.ndim != 2 or len(feats) != self.data.n_frames:
            raise InputError(f"audio features of {self.subject} have shape {list(feats.shape)}; "
                             f"expected [{self.data.n_frames}, D] — re-run prep's audio step.")
        self.data.audio = feats
        self.model = TalkingHeadModel(cfg, self.data.n_frames, len(self.data.bs_names),
                                      feats.shape[1], seed=cfg.seed)
        self.model.set_backend(self.backend)
        if not self.resume:
            self.model.set_audio_stats(feats[self.data.train_idx])
            self.model.occ.set_seen(cells_seen(self.data.cam_o[self.data.train_idx],
                                               self.data.cam_rot[self.data.train_idx], self.data.K,
                                               self.data.size, cfg.occ_resolution))
            self.meta = {
                "format": MODEL_FORMAT, "config": cfg.to_dict(),
                "subject": self.data.identity, "size": self.data.size, "fps": self.data.fps,
                "encoder_id": encoder_id, "audio_in": int(feats.shape[1]),
                "bs_names": self.data.bs_names, "box": self.data.box.to_dict(),
                "stages": {s: getattr(cfg, f"{s}_iters") for s in STAGES},
            }
            self.out.mkdir(exist_ok=True)
            with atomic_path(self.out / AVE_NAME) as tmp:
                shutil.copyfile(ave_path, tmp)
            write_json_atomic(self.out / CONFIG_NAME, self.meta)
        self.model.to(self.device)
        self.sampler = RaySampler(self.data, rays=cfg.rays_per_step,
                                  frames_per_step=cfg.frames_per_step,
                                  face_fraction=cfg.face_fraction, head_fraction=cfg.head_fraction,
                                  mouth_fraction=cfg.mouth_fraction,
                                  lip_patch=cfg.lip_patch, lip_random_patches=cfg.lip_random_patches)
        self.lpips = None
        if cfg.w_lip_lpips > 0 and cfg.lip_iters > 0:
            from synctalk.metrics.lpips import LPIPS

            self.lpips = LPIPS.from_files(cfg.lpips_backbone, cfg.lpips_linear).to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.dgen = self.gen if self.device.type == "cpu" else \
            torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.plan = {s: StagePlan(getattr(cfg, f"{s}_iters"), getattr(cfg, f"{s}_iters")) for s in STAGES}
        if len(self.data.val_idx) == 0:  # nothing to register
            self.plan["register"] = StagePlan(0, 0)
        self.stage = next((s for s in STAGES if self.plan[s].planned > 0), STAGES[0])
        self.global_step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_seconds: dict[str, float] = {}
        self.val_seconds_per_frame = 1.0
        self.last_val: dict[str, float] = {}
        self.occ_stats: dict[str, float] = {}
        if self.resume:
            self._load_checkpoint()
        self.feats = self.model.normalize_audio(feats)  # after loading: uses the saved statistics
        self.setup_seconds = time.perf_counter() - t
        log.info("train: subject %s at %d px, %d train / %d val frames, features %s, set-up %.1f s",
                 self.subject, self.data.size, len(self.data.train_idx), len(self.data.val_idx),
                 list(feats.shape), self.setup_seconds)

    # ------------------------------------------------------------------ optimiser
    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        cfg = self.cfg
        pose = {"params": [self.model.poses.delta], "weight_decay": 0.0}
        if stage == "register":
            groups = [{**pose, "lr": cfg.lr_register, "base_lr": cfg.lr_register}]
        else:
            mod = self.model.torso if stage == "torso" else self.model.head
            groups = [{"params": mod.grid_parameters(), "lr": cfg.lr_grid, "weight_decay": 0.0,
                       "base_lr": cfg.lr_grid},
                      {"params": mod.net_parameters(), "lr": cfg.lr_net,
                       "weight_decay": cfg.weight_decay, "base_lr": cfg.lr_net}]
            if stage != "torso" and cfg.lr_pose > 0:
                groups.append({**pose, "lr": cfg.lr_pose, "base_lr": cfg.lr_pose})
        return torch.optim.AdamW(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)

    def _lr_exponent(self, stage: str, step: int) -> float:
        """Fraction of the way to ``lr_final`` (0 → 1) of ``step`` within ``stage``."""
        p = self.plan
        frac = min(1.0, step / max(1, p[stage].target))
        if stage in ("register", "torso"):
            return frac
        head_n, lip_n = p["head"].target, p["lip"].target
        share = head_n / max(1, head_n + lip_n)
        return share * frac if stage == "head" else share + (1 - share) * frac

    def _set_lr(self, stage: str, step: int) -> None:
        mult = self.cfg.lr_final ** self._lr_exponent(stage, step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * mult

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self) -> dict:
        return {"format": MODEL_FORMAT, "kind": "checkpoint", "global_step": self.global_step,
                "stage": self.stage, "plan": {s: p.to_dict() for s, p in self.plan.items()},
                "elapsed_s": self.elapsed(), "model": self.model.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {"gen": self.gen.get_state(),
                        "dgen": None if self.dgen is self.gen else self.dgen.get_state()},
                "step_seconds": dict(self.step_seconds), "last_val": dict(self.last_val)}

    def save_checkpoint(self) -> Path:
        d = self.out / CKPT_DIR
        d.mkdir(exist_ok=True)
        path = d / f"step_{self.global_step:07d}.pt"
        with atomic_path(path) as tmp:
            torch.save(self._checkpoint_state(), tmp)
        for old in sorted(d.glob("step_*.pt"))[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        return path

    def _load_checkpoint(self) -> None:
        ckpts = sorted((self.out / CKPT_DIR).glob("step_*.pt"))
        if not ckpts:
            raise ModelFileError(f"{self.out} has no checkpoint to resume from (checkpoints/ is "
                                 "empty); train again without --resume into a new --out.")
        state = read_torch(ckpts[-1], "checkpoint")
        load_state(self.model, state["model"], str(ckpts[-1]))
        self.global_step = int(state["global_step"])
        self.stage = str(state["stage"])
        for s, p in state["plan"].items():
            self.plan[s] = StagePlan(int(p["planned"]), int(p["target"]), int(p["done"]))
        self.elapsed_before = float(state["elapsed_s"])
        self.gen.set_state(state["rng"]["gen"])
        if state["rng"].get("dgen") is not None and self.dgen is not self.gen:
            self.dgen.set_state(state["rng"]["dgen"])
        self.scaler.load_state_dict(state["scaler"])
        self.step_seconds = dict(state.get("step_seconds") or {})
        self.last_val = dict(state.get("last_val") or {})
        if state.get("optimizer") is not None:
            self.optimizer = self._make_optimizer(self.stage)
            self.optimizer.load_state_dict(state["optimizer"])
        log.info("train: resumed %s at step %d (stage %s)", ckpts[-1].name, self.global_step, self.stage)

    def save_final(self) -> None:
        stages_done = [s for s in STAGES if self.plan[s].done > 0]
        with atomic_path(self.out / WEIGHTS_NAME) as tmp:
            torch.save({"format": MODEL_FORMAT, "kind": "weights", "model": self.model.state_dict(),
                        "stages_done": stages_done, "step": self.global_step}, tmp)

    # ------------------------------------------------------------------ time
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def _plan_stage_budget(self, stage: str) -> float | None:
        """Seconds this stage may use (None without a budget)."""
        if self.cfg.time_budget is None:
            return None
        remaining_stages = [s for s in STAGES[STAGES.index(stage):] if self.plan[s].planned > 0]
        reserve = 5.0 + self.val_seconds_per_frame * max(1, self.cfg.final_val_frames or 16)
        left = self.cfg.time_budget * 60.0 - self.elapsed() - reserve
        ref = self.step_seconds.get("head", 1.0)
        weight = {s: (self.plan[s].planned - self.plan[s].done)
                  * self.step_seconds.get(s, DEFAULT_COST[s] * ref) for s in remaining_stages}
        total = sum(weight.values()) or 1.0
        return max(0.0, left * weight[stage] / total)

    # ------------------------------------------------------------------ stages
    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train every remaining stage; then validate and save ``model.pt``.

        Args:
            stop_after: stop (as if killed) once ``global_step`` reaches this, after saving a
                checkpoint; returns with ``interrupted=True``.
        """
        from synctalk.nerf.runlog import RunLog

        self.runlog = RunLog(self.out)
        interrupted = False
        try:
            with _StopFlag() as flag, torch_threads(self.threads):
                for stage in STAGES[STAGES.index(self.stage):]:
                    if self.plan[stage].planned == 0:
                        continue
                    if stage != self.stage:
                        self.stage = stage
                        if not (stage == "lip" and self.optimizer is not None):
                            self.optimizer = None
                    stopped = self._run_stage(stage, flag, stop_after)
                    if stopped:
                        self.save_checkpoint()
                        if flag.set:
                            raise KeyboardInterrupt
                        interrupted = True
                        break
            if not interrupted:
                with torch_threads(self.threads):
                    self.last_val = self.validate(final=True)
                self.save_checkpoint()
                self.save_final()
        finally:
            self.runlog.close()
        stages = {s: p.to_dict() for s, p in self.plan.items()}
        result = TrainResult(str(self.out), self.global_step, self.elapsed(), stages,
                             dict(self.last_val), interrupted)
        if not interrupted:
            write_json_atomic(self.out / "summary.json", result.to_dict())
        return result

    def _run_stage(self, stage: str, flag: _StopFlag, stop_after: int | None) -> bool:
        """Run ``stage`` to its target; True when stopped early (signal / ``stop_after``)."""
        from tqdm import tqdm

        cfg = self.cfg
        plan = self.plan[stage]
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(stage)
        budget = self._plan_stage_budget(stage)
        stage_t0 = time.perf_counter()
        if budget is not None and budget <= 0:
            plan.target = plan.done
        self.model.train()
        bar = tqdm(total=plan.target, initial=plan.done, desc=f"train {stage}", unit="step",
                   disable=not self.progress or None, leave=False, dynamic_ncols=True)
        t_log, rays_log = time.perf_counter(), 0
        step_times: deque[float] = deque([time.perf_counter()], maxlen=RATE_WINDOW + 1)
        stats_acc: dict[str, float] = {}
        n_acc = 0
        try:
            while plan.done < plan.target:
                if flag.set or (stop_after is not None and self.global_step >= stop_after):
                    return True
                self._set_lr(stage, plan.done)
                stats = self._step(stage)
                plan.done += 1
                self.global_step += 1
                rays_log += int(stats.pop("rays"))
                for k, v in stats.items():
                    stats_acc[k] = stats_acc.get(k, 0.0) + v
                n_acc += 1
                bar.update(1)
                # time budget: fit the target to the rate of the last RATE_WINDOW steps (so a
                # one-time cost — a kernel build, the first occupancy update — does not count)
                step_times.append(time.perf_counter())
                if budget is not None and len(step_times) > RATE_WINDOW // 2 and plan.done % 10 == 0:
                    spent = time.perf_counter() - stage_t0
                    per_step = (step_times[-1] - step_times[0]) / (len(step_times) - 1)
                    self.step_seconds[stage] = per_step
                    fit = plan.done + int(max(0.0, budget - spent) / per_step)
                    # keep 10 steps of slack while time is left, so the rate is measured again
                    floor = min(plan.planned,
                                plan.done + (10 if budget - spent > 10 * per_step else 0))
                    plan.target = max(floor, min(plan.planned, fit))
                    bar.total = plan.target
                if stage in ("head", "lip") and self.global_step % cfg.occ_update_every == 0 and (
                        stage == "lip" or plan.done >= cfg.occ_warmup):
                    self.occ_stats = self._update_occupancy()
                if self.global_step % cfg.log_every == 0 or plan.done == plan.target:
                    now = time.perf_counter()
                    rec = {k: v / max(1, n_acc) for k, v in stats_acc.items()}
                    if stage != "torso" and self.occ_stats:
                        rec["occupied"] = self.occ_stats["occupied_fraction"]
                    rec.update(step=self.global_step, stage=stage, stage_step=plan.done,
                               lr=self.optimizer.param_groups[0]["lr"],
                               rays_per_s=rays_log / max(1e-9, now - t_log),
                               elapsed_s=self.elapsed(), cpu_s=time.process_time())
                    self.runlog.write(rec)
                    bar.set_postfix(loss=f"{rec.get('loss', 0):.4f}", psnr=f"{rec.get('psnr', 0):.1f}",
                                    rays_s=f"{rec['rays_per_s']:.0f}")
                    t_log, rays_log, stats_acc, n_acc = now, 0, {}, 0
                if cfg.val_every and self.global_step % cfg.val_every == 0 and plan.done < plan.target:
                    self.last_val = self.validate(final=False)
                    self.model.train()
                if self.global_step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if stage == "torso":
            self.model.torso_trained.fill_(True)
        return False

    # ------------------------------------------------------------------ single steps (benchmarks)
    def step(self, stage: str) -> dict:
        """One training step of ``stage`` outside :meth:`run` (``synctalk bench train``): the
        optimiser (made on first use or a stage change, as :meth:`run` does), the learning
        rate of the stage's next step and the step itself — no occupancy update, logging,
        validation, checkpoint or time budget. Returns the step's stats (``loss``, ``psnr``,
        ``rays``, ...)."""
        if stage not in STAGES:
            raise InputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        if stage != self.stage:
            self.stage = stage
            if not (stage == "lip" and self.optimizer is not None):
                self.optimizer = None
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(stage)
        self.model.train()
        with torch_threads(self.threads):
            self._set_lr(stage, self.plan[stage].done)
            stats = self._step(stage)
        self.plan[stage].done += 1
        self.global_step += 1
        return stats

    def update_occupancy(self) -> dict:
        """One occupancy-grid update, as :meth:`run` makes every ``occ_update_every`` steps."""
        with torch_threads(self.threads):
            return self._update_occupancy()

    # ------------------------------------------------------------------ one step
    def _conditioning(self, frames_u: torch.Tensor, *, noise: bool = True):
        """Per-frame conditioning of the (sorted, unique) ``frames_u``; frames outside the
        training split take the nearest training frame's appearance code."""
        dev = self.device
        fu = frames_u.to(dev)
        feats = self.feats
        if noise and self.cfg.audio_noise > 0:
            noise_t = torch.randn(feats.shape, generator=self.gen)
            feats = feats + self.cfg.audio_noise * noise_t.to(dev)
        codes = torch.tensor([self.data.nearest_train_frame(int(f)) for f in frames_u], device=dev)
        return self.model.head.frame_conditioning(feats, fu, self.data.blendshapes[frames_u].to(dev),
                                                  codes)

    def _pose_learns(self, stage: str) -> bool:
        """Whether this step's rays carry gradients to the pose corrections."""
        if stage == "register":
            return True
        return stage in ("head", "lip") and self.cfg.lr_pose > 0 and (
            stage == "lip" or self.plan["head"].done >= self.cfg.pose_warmup)

    def _render_batch(self, batch: RayBatch, stage: str):
        d = self.data
        dev = self.device
        frames_u, inv = torch.unique(batch.frame, return_inverse=True)
        cond = self._conditioning(frames_u, noise=stage != "register")
        inv = inv.to(dev)
        cam_o, cam_rot = self.model.poses.subject_cameras(d, frames_u, grad=self._pose_learns(stage),
                                                          device=dev)
        rays_o, rays_d = pixel_rays(cam_o, cam_rot, d.K.to(dev), batch.xy.to(dev), inv)
        gt = gather(d.images, batch).to(dev)
        bg = gather(d.torso_bg, batch).to(dev)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=self.amp):
            out = render_rays(self.model.head, self.model.occ, rays_o, rays_d, cond, bg,
                              ray_frame=inv, n_samples=self.cfg.samples_per_ray, perturb=True,
                              generator=self.dgen, prune=self.cfg.train_prune,
                              backend=self.backend)
        return out, gt

    def _locality(self, out: dict, batch: RayBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        dev = self.device
        outside_lower = (~in_boxes(self.data.boxes["lower"], batch)).to(dev).float()
        outside_eyes = (~in_boxes(self.data.boxes["eyes"], batch)).to(dev).float()
        la = (out["amb_audio"] * outside_lower).mean()
        lb = (out["amb_bs"] * outside_eyes).mean()
        return (cfg.w_audio_locality * la + cfg.w_bs_locality * lb,
                {"amb_audio": la.item(), "amb_bs": lb.item()})

    def _step(self, stage: str) -> dict:
        if stage == "torso":
            return self._torso_step()
        if stage == "register":
            return self._register_step()
        cfg = self.cfg
        batch = self.sampler.head(self.gen) if stage == "head" else self.sampler.lip(self.gen)
        out, gt = self._render_batch(batch, stage)
        rgb = out["rgb"].float()
        err = (rgb - gt).abs().mean(-1)                                # [R]
        stats: dict[str, float] = {}
        if cfg.w_uncertainty > 0:
            u = out["unc"].float()
            w = torch.softmax(u.detach(), 0) * len(u)
            photo = (err * w).mean()
            beta = 1.0 + u
            unc_loss = (err.detach() / (2 * beta ** 2) + torch.log(beta) ** 2 / 2).mean()
            loss = photo + cfg.w_uncertainty * unc_loss
            stats["unc"] = float(u.detach().mean())
        else:
            loss = err.mean()
        if stage == "lip" and batch.patches is not None and (cfg.w_lip_ssim > 0 or self.lpips):
            from synctalk.metrics.image import ssim_loss_map

            n, h, w_ = batch.patches
            m = n * h * w_
            pp = rgb[:m].view(n, h, w_, 3).permute(0, 3, 1, 2)
            gp = gt[:m].view(n, h, w_, 3).permute(0, 3, 1, 2)
            if cfg.w_lip_ssim > 0:
                s = ssim_loss_map(pp, gp, window=7)
                loss = loss + cfg.w_lip_ssim * s
                stats["ssim"] = 1.0 - s.item()
            if self.lpips is not None:
                lp = self.lpips(pp, gp).mean()
                loss = loss + cfg.w_lip_lpips * lp
                stats["lpips"] = lp.item()
        o = out["opacity"].float().clamp(1e-5, 1 - 1e-5)
        if cfg.w_entropy > 0:
            ent = -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()
            loss = loss + cfg.w_entropy * ent
        if cfg.w_alpha > 0:
            lab = self.data.labels[batch.frame, batch.xy[:, 1], batch.xy[:, 0]].to(self.device)
            head_mask = ((lab & 3) == HEAD).float()
            loss = loss + cfg.w_alpha * F.binary_cross_entropy(o, head_mask)
        loc, loc_stats = self._locality(out, batch)
        loss = loss + loc
        stats.update(loc_stats)
        self._backward(loss)
        mse = float(((rgb.detach() - gt) ** 2).mean())
        stats.update(loss=loss.item(), psnr=-10 * math.log10(max(mse, 1e-10)),
                     samples_per_ray=out["n_samples"] / max(1, len(rgb)), rays=len(rgb))
        return stats

    def _backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _register_step(self) -> dict:
        """One step of the register stage: L1 of the frozen head on val-frame rays, into the
        val frames' pose corrections only."""
        batch = self.sampler.register(self.gen, self.cfg.register_rays)
        head = self.model.head
        frozen = [p for p in head.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            out, gt = self._render_batch(batch, "register")
            rgb = out["rgb"].float()
            loss = (rgb - gt).abs().mean()
            self._backward(loss)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        mse = float(((rgb.detach() - gt) ** 2).mean())
        return {"loss": loss.item(), "psnr": -10 * math.log10(max(mse, 1e-10)), "rays": len(rgb)}

    def _torso_step(self) -> dict:
        d = self.data
        dev = self.device
        batch = self.sampler.torso(self.gen, self.cfg.torso_rays_per_step)
        frames_u, inv = torch.unique(batch.frame, return_inverse=True)
        torso = self.model.torso
        cam_o, cam_rot = self.model.poses.subject_cameras(d, frames_u, grad=False, device=dev)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=self.amp):
            anchors = torso.anchor_positions(cam_o, cam_rot, d.K.to(dev), d.size)
            rgb, a = torso(batch.xy.to(dev), anchors[inv.to(dev)], batch.frame.to(dev), d.size)
        plate = torch.from_numpy(d.background)[batch.xy[:, 1], batch.xy[:, 0]].float().to(dev) / 255.0
        layer = a[:, None] * rgb + (1 - a[:, None]) * plate
        target = gather(d.torso_bg, batch).to(dev)
        lab = d.labels[batch.frame, batch.xy[:, 1], batch.xy[:, 0]].to(dev)
        body = ((lab & 3) >= NECK).float()
        l1 = (layer - target).abs().mean()
        loss = l1 + TORSO_ALPHA_WEIGHT * F.binary_cross_entropy(a.clamp(1e-5, 1 - 1e-5), body)
        self._backward(loss)
        mse = float(((layer.detach() - target) ** 2).mean())
        return {"loss": loss.item(), "psnr": -10 * math.log10(max(mse, 1e-10)), "rays": len(layer)}

    # ------------------------------------------------------------------ occupancy
    @torch.no_grad()
    def _update_occupancy(self) -> dict:
        d = self.data
        f = d.train_idx[torch.randint(len(d.train_idx), (1,), generator=self.gen)]
        dev = self.device
        fd = f.to(dev)
        head = self.model.head
        was_training = head.training
        head.eval()
        cond = head.frame_conditioning(self.feats, fd, d.blendshapes[f].to(dev), fd)

        def density_fn(pts: torch.Tensor) -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.float16, enabled=self.amp):
                return head.density(pts, cond)["sigma"].float()

        stats = self.model.occ.update(density_fn, decay=self.cfg.occ_decay,
                                      threshold_cap=self.cfg.occ_threshold,
                                      fraction=self.cfg.occ_fraction, generator=self.dgen)
        head.train(was_training)
        return stats

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, final: bool) -> dict[str, float]:
        """Render val frames; PSNR over the full frame and the face mask against ``frames/``.

        Writes ``val/step_%07d.png`` (rows: ground truth | render | |error|×4) and a log
        record. ``final`` uses ``final_val_frames`` frames, else ``val_frames``.
        """
        from synctalk.metrics.image import psnr

        cfg = self.cfg
        d = self.data
        frames = [int(i) for i in d.val_idx] or [int(i) for i in d.train_idx[-4:]]
        frames = pick_evenly(frames, cfg.final_val_frames if final else cfg.val_frames)
        self.model.eval()
        dev = self.device
        background = torch.from_numpy(d.background.astype(np.float32) / 255.0).to(dev)
        t0 = time.perf_counter()
        p_full, p_face, p_mouth, rows = [], [], [], []
        for i in frames:
            if bool(self.model.torso_trained):
                bg = torso_layer(self.model, d, i, background)
            else:
                bg = d.torso_bg[i].to(dev).float() / 255.0
            rgb, _ = render_head_image(self.model, d, self.feats, i, i, bg=bg,
                                       samples=cfg.infer_samples, early_stop=cfg.early_stop,
                                       backend=self.backend)
            pred = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
            truth = read_frame_rgb(d.root, i, d.size)
            face = (d.labels[i].numpy() & FACE_BIT) > 0
            p_full.append(psnr(pred, truth))
            p_face.append(psnr(pred, truth, mask=face))
            m = self.sampler.mouth_area[i]
            p_mouth.append(psnr(pred[m[1]:m[3], m[0]:m[2]], truth[m[1]:m[3], m[0]:m[2]]))
            if len(rows) < 4:
                err = np.clip(np.abs(pred.astype(np.int16) - truth.astype(np.int16)) * 4, 0, 255)
                rows.append(np.concatenate([truth, pred, err.astype(np.uint8)], 1))
        self.val_seconds_per_frame = (time.perf_counter() - t0) / max(1, len(frames))
        res = {"val_psnr": float(np.mean(p_full)), "val_psnr_face": float(np.nanmean(p_face)),
               "val_psnr_mouth": float(np.mean(p_mouth)),
               "val_frames": len(frames), "val_s_per_frame": self.val_seconds_per_frame}
        for split, idx in (("train", d.train_idx), ("val", d.val_idx)):
            corr = self.model.poses.magnitude(idx)  # RMS pose corrections of the split
            res[f"pose_corr_{split}_deg"] = corr["rot_deg"]
            res[f"pose_corr_{split}_mm"] = corr["trans_mm"]
        self._write_val_png(np.concatenate(rows, 0), "final" if final else f"step_{self.global_step:07d}")
        self.runlog.write({"step": self.global_step, "stage": self.stage, "final": final, **res,
                           "elapsed_s": self.elapsed()})
        log.info("train: step %d val PSNR %.2f dB (face %.2f dB) on %d frames, %.2f s/frame",
                 self.global_step, res["val_psnr"], res["val_psnr_face"], len(frames),
                 self.val_seconds_per_frame)
        return res

    def _write_val_png(self, img: np.ndarray, name: str) -> None:
        import cv2

        d = self.out / "val"
        d.mkdir(exist_ok=True)
        with atomic_path(d / f"{name}.png") as tmp:
            cv2.imwrite(str(tmp), img[..., ::-1])


def train(subject, out, cfg: TrainConfig | None, **kwargs) -> TrainResult:
    """Build a :class:`Trainer` and run it (``kwargs``: see :class:`Trainer`, plus ``ave``)."""
    stop_after = kwargs.pop("stop_after", None)
    return Trainer(subject, out, cfg, **kwargs).run(stop_after=stop_after)

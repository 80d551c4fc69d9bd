"""``synctalk bench ave``: AVE training on real clips against issue 4's acceptance figures.

Trains a slim AVE (:mod:`synctalk.audio.train`) on the first 90 % of each clip (default: the
shared ``anchor_71s_25fps.mp4`` and ``macron_50s_30fps.mp4``) for ``--epochs`` epochs (16,
about 2960 steps), stopping early if ``--minutes`` (20) of training time pass first, then
reports on the last 10 % of each clip — the *test* part, never used for training or for
choosing a model. Rows:

* ``final``: the model at the end of the run — the acceptance row (no selection);
* ``last_k_mean``: the mean test figures of the last ``--last-k`` evaluations ("the mean of
  the last checkpoints");
* ``selected``: with ``--select-fraction F`` the last ``F`` of each training part is a
  *selection slice*, not trained on, and this is the checkpoint chosen there, scored on the
  test part (without it, the final model again);
* ``best_on_test``: the best evaluation chosen on the test part itself — optimistic, shown
  only for the spread of the per-epoch numbers.

All models evaluated are the weight average with ``--ema`` (the default). The training
length is set in epochs rather than minutes so that it does not depend on the CPU's speed:
longer runs overfit these two clips (sync accuracy on the test part falls after ~3000 steps).

Metrics: balanced sync accuracy (in sync vs ≥ 5 frames off), offset detection within ±1
frame over 1 s and 2 s windows (see :func:`synctalk.audio.train.evaluate`). Also: steps,
epochs, training seconds per epoch (CPU and wall), the one-time tracking/cropping time, and
the machine's load average (the CPU may be shared with other jobs). ``--clock cpu`` (the
default) measures ``--minutes`` in CPU time of this process, so a run on a busy machine
does the same work as on an idle one; ``--clock wall`` uses elapsed time.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from synctalk.errors import InputError

#: Acceptance thresholds (issue 4).
TARGETS = {"sync_acc": 0.65, "offset_acc_1s": 0.60, "offset_acc_2s": 0.80}
#: Default clips, relative to the shared data directory.
CLIP_NAMES = ("clips/anchor_71s_25fps.mp4", "clips/macron_50s_30fps.mp4")
#: Share of each clip's end held out as the test part.
TEST_FRACTION = 0.1
#: Default training length: 16 epochs (~2960 steps of batch 32 on the default clips).
DEFAULT_EPOCHS = 16.0
#: Figures listed per evaluation (``select_*``: on the selection slice).
EVAL_KEYS = ("step", "sync_acc", "offset_acc_1s", "offset_acc_2s", "val_loss", "select_sync_acc",
             "select_offset_acc_1s", "select_offset_acc_2s", "select_val_loss")


def shared_data_dir() -> Path:
    """``$SYNCTALK_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("SYNCTALK_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def register(actions) -> None:
    from synctalk.audio.train import TrainConfig
    from synctalk.cli import subcommand_parser_kwargs

    d = TrainConfig()
    p = actions.add_parser(
        "ave", help="train a slim AVE on two real clips and report held-out sync figures",
        description="Train a slim AVE on the first 90 % of real clips and report sync accuracy and "
                    "offset detection on the last 10 % (issue 4's acceptance figures), with the "
                    "training time per epoch.", **subcommand_parser_kwargs())
    p.add_argument("--clips", nargs="+", default=None, metavar="VIDEO",
                   help="training clips (default: the shared anchor_71s and macron_50s clips)")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS,
                   help="training length in epochs (185 steps each on the default clips)")
    p.add_argument("--minutes", type=float, default=20.0,
                   help="stop earlier if this much training time has passed")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="what --minutes measures: CPU time of this process or elapsed time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--width", type=float, default=d.width, help="AVE channel multiplier")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak Adam learning rate")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="weight-average decay (0: evaluate the raw weights)")
    p.add_argument("--select-fraction", type=float, default=0.0,
                   help="end share of each training part set aside to choose the kept model "
                        "on (0: keep the final model)")
    p.add_argument("--min-shift", type=int, default=d.min_shift,
                   help="smallest audio shift (frames) of a training negative")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between evaluations; 0 = once per epoch")
    p.add_argument("--last-k", type=int, default=3,
                   help="evaluations averaged into last_k_mean")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--face-landmarker", default=None, metavar="PATH",
                   help="MediaPipe face_landmarker.task (default: the shared data's, else the "
                        "model cache's)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="mouth-crop cache (default: the synctalk cache)")
    p.add_argument("--out", default=None, metavar="AVE.pt",
                   help="keep the final AVE here (default: a temporary file)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.set_defaults(func=run)


def _rounded(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else
                round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def last_k_mean(evals: list[dict], k: int) -> dict[str, float]:
    """Mean of every metric over the last ``k`` evaluations (NaN entries left out)."""
    import numpy as np

    tail = evals[-k:] if k > 0 else []
    keys = [key for key in ("sync_acc", "offset_acc_1s", "offset_acc_2s", "val_loss")
            if any(key in e for e in tail)]
    out: dict[str, float] = {"evaluations": len(tail),
                             "steps": [e["step"] for e in tail]}  # type: ignore[dict-item]
    for key in keys:
        vals = [e[key] for e in tail if key in e and not math.isnan(e[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def meets(metrics: dict) -> bool:
    """All :data:`TARGETS` reached."""
    return all((metrics.get(k) or 0.0) >= v for k, v in TARGETS.items())


def bench(args) -> dict:
    """Run the benchmark; returns the JSON-able result."""
    import torch

    from synctalk.audio.dataset import load_clips
    from synctalk.audio.train import TrainConfig, selection_score, train

    shared = shared_data_dir()
    clips_in = args.clips or [str(shared / name) for name in CLIP_NAMES]
    missing = [c for c in clips_in if not Path(c).is_file()]
    if missing:
        raise InputError(f"benchmark clip(s) not found: {', '.join(missing)} — pass --clips or "
                         "set SYNCTALK_SHARED_DATA to the shared data directory.")
    landmarker = args.face_landmarker
    if landmarker is None and (shared / "models" / "face_landmarker.task").is_file():
        landmarker = str(shared / "models" / "face_landmarker.task")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t = time.perf_counter()
    clips = load_clips(clips_in, cache_dir=args.cache_dir, face_landmarker=landmarker)
    prep_s = time.perf_counter() - t
    cfg = TrainConfig(width=args.width, batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                      epochs=args.epochs, minutes=args.minutes, clock=args.clock,
                      val_fraction=TEST_FRACTION,
                      eval_every=args.eval_every, seed=args.seed, min_shift=args.min_shift,
                      select_fraction=args.select_fraction,
                      keep="best" if args.select_fraction else "last")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "ave.pt"
        wall, cpu = time.perf_counter(), time.process_time()
        summary = train(clips, out, cfg, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    epochs = max(summary["epochs"], 1e-9)
    final = summary["last"]
    recent = last_k_mean(summary["evals"], args.last_k)
    best = summary["best"]
    selected = ({"step": best["step"], **best["metrics"]} if args.select_fraction
                else {"step": summary["steps"], **final})
    on_test = max(summary["evals"], key=lambda e: selection_score(e))
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "clips": [{"name": c.name, "fps": c.fps, "frames": c.n_frames,
                   "test_frames": c.n_frames - round(c.n_frames * (1 - TEST_FRACTION))}
                  for c in clips],
        "config": {k: v for k, v in vars(cfg).items() if k != "device"},
        "prep_s": round(prep_s, 1),
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "steps": summary["steps"],
        "steps_per_epoch": summary["steps_per_epoch"],
        "epochs": round(summary["epochs"], 2),
        "s_per_epoch_wall": round(wall / epochs, 1),
        "s_per_epoch_cpu": round(cpu / epochs, 1),
        "selected": _rounded(selected),
        "selected_on": _rounded(best.get("selection") or {}),
        "final": _rounded(final),
        "last_k_mean": _rounded(recent),
        "best_on_test": _rounded({k: v for k, v in on_test.items()
                                  if not k.startswith("select_")}),
        "evals": [_rounded({k: e[k] for k in EVAL_KEYS if k in e}) for e in summary["evals"]],
        "targets": TARGETS,
        "selected_meets_targets": meets(selected),
        "final_meets_targets": meets(final),
        "last_k_mean_meets_targets": meets(recent),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }


def run(args) -> int:
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"AVE bench: {result['steps']} steps, {result['epochs']} epochs; "
          f"{result['s_per_epoch_cpu']} CPU s / {result['s_per_epoch_wall']} wall s per epoch "
          f"(tracking {result['prep_s']} s)")
    for name in ("final", "last_k_mean", "selected", "best_on_test"):
        m = result[name]
        step = f" (step {m['step']})" if "step" in m and name != "last_k_mean" else ""
        print(f"  {name:<13} sync {m.get('sync_acc')}  offset±1 1 s {m.get('offset_acc_1s')}  "
              f"2 s {m.get('offset_acc_2s')}{step}")
    print(f"  targets       sync ≥ {TARGETS['sync_acc']}  1 s ≥ {TARGETS['offset_acc_1s']}  "
          f"2 s ≥ {TARGETS['offset_acc_2s']}  → final "
          f"{'meets' if result['final_meets_targets'] else 'misses'} them, selected "
          f"{'meets' if result['selected_meets_targets'] else 'misses'} them")
    return 0

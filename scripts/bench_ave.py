"""Benchmark AVE training on real clips (issue 4 acceptance figures), as JSON.

    python scripts/bench_ave.py [--minutes 20] [--threads 1] [--clips A.mp4 B.mp4 ...]

Trains a slim AVE on the first 90 % of each clip (default: the shared anchor_71s_25fps and
macron_50s_30fps clips) for ``--minutes`` of wall time, then reports, on the last 10 % of
each clip: balanced sync accuracy (in sync vs ≥ 5 frames off), offset detection within ±1
frame over 1 s and 2 s windows, for the best checkpoint (selected on that same held-out part)
and for the final one (no selection), plus the time per epoch, the preparation time and the
machine load (the CPU may be shared with other jobs).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = [SHARED / "clips" / "anchor_71s_25fps.mp4", SHARED / "clips" / "macron_50s_30fps.mp4"]
#: Acceptance thresholds (issue 4).
TARGETS = {"sync_acc": 0.65, "offset_acc_1s": 0.60, "offset_acc_2s": 0.80}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="+", default=[str(c) for c in CLIPS])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--face-landmarker", default=str(SHARED / "models" / "face_landmarker.task"))
    ap.add_argument("--cache-dir", default=None, help="mouth-crop cache (default: synctalk cache)")
    ap.add_argument("--out", default=None, help="AVE file to keep (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from synctalk.audio.ave import load_ave
    from synctalk.audio.dataset import InputSpec, load_clips
    from synctalk.audio.train import TrainConfig, evaluate, split_clips, train

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t = time.perf_counter()
    clips = load_clips(args.clips, cache_dir=args.cache_dir, face_landmarker=args.face_landmarker)
    prep_s = time.perf_counter() - t
    overrides = {k: v for k, v in (("width", args.width), ("batch_size", args.batch_size),
                                   ("lr", args.lr)) if v is not None}
    cfg = TrainConfig(minutes=args.minutes, val_fraction=0.1, seed=args.seed, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "ave.pt"
        t = time.perf_counter()
        summary = train(clips, out, cfg, progress=False)
        wall_s = time.perf_counter() - t
        model, meta = load_ave(out)
        held_out = [va for _, va in split_clips(clips, cfg.val_fraction)]
        best = evaluate(model, held_out, InputSpec.from_meta(meta))
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "clips": [{"name": c.name, "fps": c.fps, "frames": c.n_frames,
                   "held_out_frames": c.n_frames - round(c.n_frames * (1 - cfg.val_fraction))}
                  for c in clips],
        "config": {k: v for k, v in vars(cfg).items()},
        "prep_s": round(prep_s, 1),
        "train_wall_s": round(wall_s, 1),
        "steps": summary["steps"],
        "epochs": round(summary["epochs"], 2),
        "s_per_epoch": round(summary["s_per_epoch"], 1),
        "best_step": summary["best"]["step"],
        "best": {k: round(v, 4) if isinstance(v, float) else v for k, v in best.items()},
        "last": {k: round(v, 4) if isinstance(v, float) else v for k, v in summary["last"].items()},
        "targets": TARGETS,
        "best_meets_targets": all(best.get(k, 0) >= v for k, v in TARGETS.items()),
        "last_meets_targets": all(summary["last"].get(k, 0) >= v for k, v in TARGETS.items()),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

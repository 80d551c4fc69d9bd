"""``synctalk train``: a prepared subject → a talking-head model directory."""
from __future__ import annotations

import json
import typing


def _type_of(annotation) -> type:
    """``int | None`` → int, ``float`` → float, ... for argparse."""
    if isinstance(annotation, str):
        annotation = annotation.split("|")[0].strip()
        return {"int": int, "float": float, "str": str, "bool": bool}[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def register(sub) -> None:
    from dataclasses import fields

    from synctalk.cli import subcommand_parser_kwargs
    from synctalk.nerf.config import PRESETS, TrainConfig, field_help

    p = sub.add_parser(
        "train", help="train a talking-head model on a prepared subject",
        description="Train the tri-plane NeRF talking head on a subject directory made by "
                    "`synctalk prep`: head stage, lip fine-tune, val-pose registration, torso "
                    "stage. Settings come "
                    "from a preset (configs/train_<preset>.yaml), overridden by -c FILE, "
                    "SYNCTALK_* variables and the options below. Writes MODEL/config.json, "
                    "ave.pt, model.pt, checkpoints/, log.jsonl, val/ and summary.json.",
        **subcommand_parser_kwargs())
    p.add_argument("subject", help="subject directory (from `synctalk prep`)")
    p.add_argument("--out", required=True, help="model directory to create (or --resume)")
    p.add_argument("--preset", choices=PRESETS, default="demo",
                   help="base settings: demo (CPU, ~10 min, 256²) or default (GPU, SyncTalk scale)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest checkpoint in --out with its saved settings")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--backend", default="auto", help="hot-op backend: auto, torch, native")
    p.add_argument("--ave", default=None,
                   help="audio encoder file (default: SUBJECT/ave.pt, written by prep)")
    p.add_argument("--iters", type=int, default=None,
                   help="total steps, split over the stages in the preset's proportions")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: one on the CPU — the small per-step tensors run "
                        "faster on one thread than on two; torch's setting on CUDA)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    helps = field_help()
    g = p.add_argument_group("training settings (default: the preset's value)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = _type_of(hints[f.name])
        g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       metavar="N" if kind is int else "X", help=helps.get(f.name, ""))
    p.set_defaults(func=run)


def resolve_config(args):
    """The :class:`TrainConfig` of parsed ``args``: preset < -c/env/options; ``--iters``."""
    from dataclasses import fields

    from synctalk.errors import InputError
    from synctalk.nerf.config import TrainConfig, resolve

    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    cfg = resolve(args.preset, overrides)
    if args.iters is not None:
        if args.iters < 1:
            raise InputError(f"--iters must be ≥ 1, got {args.iters}")
        names = ("head_iters", "lip_iters", "register_iters", "torso_iters")
        parts = [getattr(cfg, n) for n in names]
        total = sum(parts)
        scaled = [int(round(args.iters * p / total)) for p in parts]
        scaled[0] += args.iters - sum(scaled)
        cfg = cfg.replace(**dict(zip(names, scaled)))
    return cfg


def run(args) -> int:
    from synctalk.errors import InputError
    from synctalk.nerf.trainer import train

    if args.threads < 0:
        raise InputError(f"--threads must be ≥ 0, got {args.threads}")
    cfg = None if args.resume else resolve_config(args)
    res = train(args.subject, args.out, cfg, device=args.device, backend=args.backend,
                ave=args.ave, resume=args.resume, amp=not args.no_amp,
                progress=not args.no_progress, threads=args.threads or None)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    val = res.val
    stages = ", ".join(f"{s} {p['done']}" for s, p in res.stages.items() if p["planned"])
    print(f"train: {res.steps} steps ({stages}) in {res.seconds / 60:.1f} min; val PSNR "
          f"{val.get('val_psnr', float('nan')):.2f} dB (face {val.get('val_psnr_face', float('nan')):.2f} dB) "
          f"-> {res.model_dir}")
    return 0

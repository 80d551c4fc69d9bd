"""``synctalk render``: speech (any audio file) → an mp4 of the trained talking head saying it.

Head pose, torso, background and blinks are replayed from the training video in ping-pong
order (forward, then backward, …) unless ``--pose-from`` gives another subject's or a pose
file's head motion; ``--blink`` adds synthetic blinks, ``--fix-eyes`` keeps the eyes open.
The video has one frame per 1/fps s of audio and carries the input audio. See
:mod:`synctalk.render.offline` for the pose-file format.
"""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from synctalk.cli import subcommand_parser_kwargs

    p = sub.add_parser("render", help="render new speech with a trained model to an mp4",
                       description=__doc__.splitlines()[0], **subcommand_parser_kwargs())
    p.add_argument("model", help="model directory written by `synctalk train`")
    p.add_argument("--audio", required=True,
                   help="speech to render: any audio (or video) file, any sample rate/channels")
    p.add_argument("--out", required=True, help="output .mp4 (its directory must exist)")
    p.add_argument("--pose-from", default=None,
                   help="replay head motion from this subject directory or pose file (.npz with "
                        "c2w [M,4,4], optional fps) instead of the training video's")
    eyes = p.add_mutually_exclusive_group()
    eyes.add_argument("--blink", action="store_true",
                      help="synthetic blinks every 2.5–5 s instead of the replayed ones")
    eyes.add_argument("--fix-eyes", action="store_true", help="keep the eyes open (no blinks)")
    p.add_argument("--frames-dir", default=None, help="also write every frame as PNG here")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "native"),
                   help="hot-op implementation")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic blink times")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def load_head(model, device: str = "cpu", backend: str = "auto"):
    """Load a model directory as a TalkingHead, with a clear error for a missing directory."""
    from synctalk.errors import InputError
    from synctalk.nerf.inference import TalkingHead

    path = Path(model).expanduser()
    if not path.is_dir():
        raise InputError(f"model directory not found: {path} — train one with "
                         "`synctalk train SUBJECT --out MODEL`.")
    return TalkingHead.load(path, device=device, backend=backend)


def run(args) -> int:
    import json

    from synctalk.render.offline import check_output_path, render_to_mp4

    check_output_path(args.out)  # before the (slow) model load
    head = load_head(args.model, args.device, args.backend)
    blink = "synth" if args.blink else "open" if args.fix_eyes else "replay"
    res = render_to_mp4(head, args.audio, args.out, pose_from=args.pose_from, blink=blink,
                        frames_dir=args.frames_dir, seed=args.seed)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    stages = ", ".join(f"{k} {v:.1f}" for k, v in res.stage_ms.items())
    print(f"rendered {res.n_frames} frames ({res.audio_s:.2f} s of audio at {res.fps:g} fps) "
          f"-> {res.out}")
    print(f"  {res.render_fps:.2f} frames/s rendering, {res.wall_s:.1f} s in all; "
          f"ms per frame: {stages}")
    if res.frames_dir:
        print(f"  frames: {res.frames_dir}/%06d.png")
    return 0

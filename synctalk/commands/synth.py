"""``synctalk synth``: a synthetic talking-head clip with exact ground truth."""
from __future__ import annotations

import json


def register(sub) -> None:
    from synctalk.cli import subcommand_parser_kwargs

    p = sub.add_parser(
        "synth", help="generate a synthetic talking-head clip with ground truth",
        description="Animate a face photo with speech: writes OUT/clip.mp4 (H.264 + AAC), "
                    "OUT/audio.wav (16 kHz) and OUT/ground_truth.json (per-frame mouth opening, "
                    "lip width, blink, head pose, key landmarks).",
        **subcommand_parser_kwargs())
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--seconds", type=float, default=None,
                   help="clip length; default: the whole speech (the built-in speech is ~24 s)")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (square, even)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0, help="seed of head motion and blinks")
    p.add_argument("--motion-scale", type=float, default=1.0,
                   help="scale of head rotation/translation (0 = still head)")
    p.add_argument("--image", default=None,
                   help="face photo; default: grace_hopper.jpg from matplotlib (public domain)")
    p.add_argument("--audio", default=None,
                   help="speech (any format ffmpeg reads); default: built-in public-domain clips")
    p.add_argument("--phones", default=None,
                   help="phone timings for --audio (HTS .lab or 'start end phone' in seconds)")
    p.add_argument("--face-landmarker", default=None,
                   help="face_landmarker.task, needed only for a custom --image")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from synctalk.synth.generate import SynthOptions, generate

    summary = generate(args.out, SynthOptions(
        seconds=args.seconds, size=args.size, fps=args.fps, seed=args.seed,
        motion_scale=args.motion_scale, image=args.image, audio=args.audio,
        phones=args.phones, face_landmarker=args.face_landmarker))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['clip']} ({summary['n_frames']} frames, {summary['seconds']:.1f} s) "
              f"and {summary['ground_truth']} in {summary['setup_s'] + summary['render_s']:.1f} s")
    return 0

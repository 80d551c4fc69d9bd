"""``synctalk prep``: a talking-head video → a subject directory for training."""
from __future__ import annotations

import json


def register(sub) -> None:
    from synctalk.cli import subcommand_parser_kwargs

    p = sub.add_parser(
        "prep", help="preprocess a talking-head video into a subject directory",
        description="Ingest (resample, auto-crop, 16 kHz audio), track the face (478 landmarks, "
                    "52 blendshapes), segment head/neck/torso/background without learned weights, "
                    "stabilise the head pose by bundle adjustment, smooth blendshapes, split "
                    "train/val, compute audio features with an audio-visual encoder (trained "
                    "on the subject unless --ave is given), and write a preview and report. "
                    "Resumable: re-running skips finished steps.",
        **subcommand_parser_kwargs())
    p.add_argument("video", help="input video (any container/codec ffmpeg reads)")
    p.add_argument("--out", required=True, help="subject directory to create or resume")
    p.add_argument("--fps", type=float, default=25.0, help="target frame rate")
    p.add_argument("--size", type=int, default=512, help="side of the square crop in pixels")
    p.add_argument("--no-auto-crop", dest="auto_crop", action="store_false",
                   help="use the full frame (centre square) instead of a head-and-shoulders crop")
    p.add_argument("--force", action="store_true",
                   help="replace an output directory that holds a different subject")
    p.add_argument("--face-landmarker", default=None, help="MediaPipe face_landmarker.task")
    p.add_argument("--selfie-segmenter", default=None,
                   help="optional MediaPipe selfie_multiclass_256x256.tflite for the person/hair split")
    p.add_argument("--val-fraction", type=float, default=1.0 / 11.0,
                   help="fraction of the clip (its end) held out for validation")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="use only the first N seconds of the video")
    p.add_argument("--ave", default=None, metavar="PATH",
                   help="audio-visual encoder for the audio features: an AVE file (synctalk ave "
                        "import/train) or a SyncTalk/Wav2Lip checkpoint; default: train a slim "
                        "AVE on the subject's own video")
    p.add_argument("--ave-budget", type=float, default=None, metavar="SECONDS",
                   help="CPU seconds of subject-AVE training (default: 36 s per minute of "
                        "video, at least 30 s, at most 10 min)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from data_prep.pipeline import PrepOptions, prep

    result = prep(args.video, args.out, PrepOptions(
        fps=args.fps, size=args.size, auto_crop=args.auto_crop, force=args.force,
        face_landmarker=args.face_landmarker, selfie_segmenter=args.selfie_segmenter,
        val_fraction=args.val_fraction, max_seconds=args.max_seconds, ave=args.ave,
        ave_budget=args.ave_budget))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"subject: {result['subject']}")
    for name, r in result["steps"].items():
        state = "up to date" if r["skipped"] else f"{r['seconds']:.1f} s"
        print(f"  {name:<12} {state}")
    print(f"prep finished in {result['seconds']:.1f} s — see {result['subject']}/report.md "
          f"and preview.mp4")
    return 0

"""Benchmark ``synctalk synth`` against MediaPipe (issue 2 acceptance figures), as JSON.

    python scripts/bench_synth.py [--seconds 10] [--size 256] [--face-landmarker PATH]

Reports: generation time, byte-identical re-run, and what MediaPipe FaceLandmarker
measures on the clip: detection rate, correlation of its inner-lip gap with the ground-truth
opening, and of its yaw with the ground-truth yaw.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from synctalk.fsutil import sha256_file
from synctalk.synth.generate import SynthOptions, generate
from synctalk.synth.validate import tracker_agreement


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--face-landmarker", default=None)
    args = ap.parse_args()
    from synctalk.models import resolve_face_landmarker

    model = resolve_face_landmarker(args.face_landmarker)
    opts = SynthOptions(seconds=args.seconds, size=args.size, seed=args.seed)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        generate(Path(d) / "a", opts)
        seconds = time.perf_counter() - t
        generate(Path(d) / "b", opts)
        identical = all(sha256_file(Path(d) / "a" / f) == sha256_file(Path(d) / "b" / f)
                        for f in ("clip.mp4", "ground_truth.json"))
        agree = tracker_agreement(Path(d) / "a", model)
    json.dump({"seconds": args.seconds, "size": args.size, "generate_s": round(seconds, 2),
               "byte_identical_rerun": identical, **agree}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

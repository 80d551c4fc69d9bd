#!/usr/bin/env python
"""Benchmark the Head-Sync Stabilizer (data_prep/stabilize.py).

Three benchmarks, each printed as one JSON object:

* ``synth``: a ``synctalk synth`` clip with exact ground truth, tracked with MediaPipe;
  relative-rotation error and jitter of MediaPipe's own poses, the PnP start, a
  landmark-only BA and the full BA (landmarks + KLT tracks); reprojection errors; seconds
  per frame of the stabilizer (KLT + BA).
* ``clip``: a real clip (first ``--clip-seconds``): reprojection errors, jitter and timings.
* ``ba``: random bundle-adjustment problems without images: ``--ba-frames`` frames with
  ``--ba-points`` points all seen in every frame, and a stabilizer-shaped problem (37
  landmarks in every frame + 60 KLT-like tracks at a time); solve time, iterations, error,
  peak memory (each in its own process).

Usage::

    .venv/bin/python scripts/bench_stabilize.py --synth-size 512 \\
        --clip ../shared/data/clips/german_20s_25fps.mp4 --ba-frames 6000 --ba-points 500
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep import stabilize as st  # noqa: E402

DEFAULT_MODEL = ROOT.parent / "shared" / "data" / "models" / "face_landmarker.task"


def _grey_frames(path: Path, max_frames: int | None = None) -> list[np.ndarray]:
    import cv2
    import imageio.v2 as imageio

    out = []
    for i, frame in enumerate(imageio.get_reader(str(path)).iter_data()):
        if max_frames is not None and i >= max_frames:
            break
        out.append(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    return out


def _scores(r_true: np.ndarray | None, r: np.ndarray) -> dict:
    out = {"jitter_deg": round(st.rotation_jitter_deg(r), 4)}
    if r_true is not None:
        out["rel_rot_err_deg"] = round(st.relative_rotation_error_deg(r_true, r), 4)
    return out


def _run_stabilizer(frames: list[np.ndarray], track, r_true: np.ndarray | None) -> dict:
    """Stabilize tracked frames; scores of MediaPipe, PnP, landmark-only BA and full BA."""
    n = len(frames)
    lms, det, mats = track.landmarks[:n], track.detected[:n], track.matrices[:n]
    t0 = time.perf_counter()
    res = st.stabilize(frames, lms, det, mats, frames[0].shape[:2])
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    rv_lm, _ = st.landmark_only_poses(lms, det, res)
    t_lm = time.perf_counter() - t1
    ok = det & np.isfinite(mats).all((1, 2))
    info = {k: v for k, v in res.info.items() if k != "focal_search_rms_px"}
    return {
        "frames": n, "size": list(frames[0].shape[:2]),
        "mediapipe": _scores(r_true[ok] if r_true is not None else None,
                             st.mediapipe_rotations(mats[ok])),
        "pnp": _scores(r_true, st.so3_exp(res.rotvec_raw)),
        "landmark_only_ba": {**_scores(r_true, st.so3_exp(rv_lm)), "seconds": round(t_lm, 2)},
        "full_ba": _scores(r_true, st.so3_exp(res.rotvec)),
        "truth": _scores(None, r_true) if r_true is not None else None,
        "focal_over_side": round(res.focal / frames[0].shape[1], 3),
        "stabilizer_seconds": round(seconds, 2),
        "stabilizer_ms_per_frame": round(1000 * seconds / n, 2),
        "info": info,
    }


def bench_synth(size: int, seconds: float, model: Path, work: Path) -> dict:
    from data_prep.face_tracking import track_video
    from synctalk.synth.generate import SynthOptions, generate

    clip = work / f"synth{size}"
    generate(clip, SynthOptions(seconds=seconds, size=size, seed=0))
    track = track_video(clip / "clip.mp4", model)
    gt = json.loads((clip / "ground_truth.json").read_text())
    r_true = np.array([f["rotation"] for f in gt["frames"]])
    return {"bench": "synth", **_run_stabilizer(_grey_frames(clip / "clip.mp4"), track, r_true)}


def bench_clip(path: Path, seconds: float, model: Path) -> dict:
    import imageio.v2 as imageio

    from data_prep.face_tracking import track_video

    fps = float(imageio.get_reader(str(path)).get_meta_data().get("fps", 25.0))
    track = track_video(path, model, max_frames=int(round(seconds * fps)))
    frames = _grey_frames(path, len(track.detected))
    return {"bench": "clip", "clip": path.name, **_run_stabilizer(frames, track, None)}


def _solve_random(n_frames: int, n_landmarks: int, tracks_per_frame: int) -> dict:
    sb = st.synthetic_problem(n_frames, n_landmarks, tracks_per_frame)
    t0 = time.perf_counter()
    res = st.bundle_adjust(sb.problem, sb.rotvec0, sb.trans0,
                           st.BASettings(smooth_weight=4.0, shape_weight=0.1, loss_scale_px=0.3))
    seconds = time.perf_counter() - t0
    r_true = st.so3_exp(sb.rotvec)
    err = lambda rv: round(st.relative_rotation_error_deg(r_true, st.so3_exp(rv)), 4)  # noqa: E731
    return {
        "bench": "ba", "frames": n_frames, "landmark_points": n_landmarks,
        "tracks_per_frame": tracks_per_frame, "track_points": len(sb.points) - n_landmarks,
        "observations": len(sb.problem.obs_pose), "iterations": res.iterations,
        "solve_seconds": round(seconds, 2),
        "rel_rot_err_deg_start": err(sb.rotvec0), "rel_rot_err_deg": err(res.rotvec),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bench_ba(n_frames: int, n_points: int) -> list[dict]:
    out = []
    for shape in ((n_frames, n_points, 0), (n_frames, 37, 60)):
        with ProcessPoolExecutor(max_workers=1) as pool:  # own process: own peak memory
            out.append(pool.submit(_solve_random, *shape).result())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synth-size", type=int, default=512, help="side of the synthetic clip (0: skip)")
    ap.add_argument("--synth-seconds", type=float, default=20.0)
    ap.add_argument("--clip", type=Path, help="a real clip to run on (e.g. german_20s_25fps.mp4)")
    ap.add_argument("--clip-seconds", type=float, default=20.0)
    ap.add_argument("--ba-frames", type=int, default=6000, help="frames of the random BA (0: skip)")
    ap.add_argument("--ba-points", type=int, default=500)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="face_landmarker.task")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.synth_size:
            row = bench_synth(args.synth_size, args.synth_seconds, args.model, Path(tmp))
            print(json.dumps(row), flush=True)
    if args.clip:
        print(json.dumps(bench_clip(args.clip, args.clip_seconds, args.model)), flush=True)
    if args.ba_frames:
        for row in bench_ba(args.ba_frames, args.ba_points):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

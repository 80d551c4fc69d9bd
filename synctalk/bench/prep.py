"""``synctalk bench prep``: speed, memory and quality of ``synctalk prep``.

For each clip (default: the four real clips in ``../shared/data/clips`` when present) the
whole prep runs in a fresh process (its own peak memory) into a subject directory under
``--out`` (default: a temporary directory), and one JSON record reports:

* ``frames``, ``duration_s``, ``wall_s`` (the prep call), ``wall_per_duration`` and
  ``cpu_s`` (user + system CPU seconds of the prep process, less sensitive to load);
* ``steps``: per step of the manifest (whatever steps it holds, in its order),
  ``seconds``, ``seconds_per_frame`` and ``cpu_seconds`` (CPU time of the prep process's
  threads in the step; ffmpeg's own processes not included);
* ``tracked``: fraction of frames with a face found (``detected``) and usable for training
  (``valid``: detected or interpolated over a short gap);
* ``landmark_rms_px_512``: RMS reprojection error of the rigid landmarks after bundle
  adjustment, scaled to a 512-px crop (``× 512 / size``), and the same before BA;
* ``jitter_deg``: rotation jitter (mean angle of the second temporal difference) of the
  raw per-frame PnP poses, of MediaPipe's own poses and after stabilisation, with
  ``ratio`` = stabilised / raw PnP; ``shot_cuts``: edits the stabilizer found (the jitter
  of every estimate includes their steps);
* ``focal_px``, ``principal_point`` (px of the crop) and where it came from
  (``principal_point_from``), ``tracks_per_frame``, ``landmark_weight`` (estimated per clip
  unless set) and ``n_rigid_landmarks`` (the set the RMS above is taken over, the one the
  bundle adjustment treats as rigid) of the stabilizer;
* ``peak_rss_mb`` of the prep process (``ru_maxrss``; ffmpeg's decoders run in their own
  processes), and the machine's 1-minute load average at the start and the end (the
  machine may be shared: timings are only comparable at similar load);
* ``subject``: its path, with ``--keep`` (else it is deleted after measuring).

``--synth`` instead makes a ``synctalk synth`` clip with exact head poses, preps it and
reports the median relative-rotation error over frame pairs at lags 5–200 and the jitter
against the truth (raw MediaPipe, per-frame PnP and stabilised), with the issue's
acceptance limits (error ≤ 0.6°, jitter ≤ 3 × the truth's + 0.05°) as booleans, the
head-ring misregistration (px: how far the poses are from explaining the motion of rigid
points around the hair/hat, :func:`~synctalk.synth.validate.rigid_misregistration_px`), and
the principal point used against the true one. Benchmarks report; they never assert.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from synctalk.errors import InputError, require_file

#: ``../shared/data`` beside the project root (see DESIGN.md §6).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
#: The real clips benchmarked by default, in ``SHARED_DATA / "clips"``.
DEFAULT_CLIPS = ("german_20s_25fps.mp4", "anchor_71s_25fps.mp4", "macron_50s_30fps.mp4",
                 "fullbody_20s_1080x1920.mp4")
#: The issue's acceptance limits on the synthetic clip.
MAX_REL_ROT_ERR_DEG = 0.6
JITTER_FACTOR, JITTER_SLACK_DEG = 3.0, 0.05


def register(actions) -> None:
    from synctalk.cli import subcommand_parser_kwargs

    p = actions.add_parser(
        "prep", help="prep speed, memory and quality on real clips or a synthetic one",
        description="Prep clips (default: the four real clips in ../shared/data/clips) or a "
                    "synthetic clip with exact head poses, each in a fresh process, and print "
                    "per-clip timings, peak memory, tracking and pose quality.",
        **subcommand_parser_kwargs())
    p.add_argument("--clips", nargs="+", default=None,
                   help="videos to prep (default: the four clips in ../shared/data/clips)")
    p.add_argument("--size", type=int, default=512, help="crop side in pixels")
    p.add_argument("--fps", type=float, default=25.0, help="target frame rate")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="prep only the first N seconds of each clip")
    p.add_argument("--out", default=None,
                   help="directory to make the subject directories in (default: a temporary one)")
    p.add_argument("--keep", action="store_true",
                   help="keep the subject directories (default: delete them after measuring)")
    p.add_argument("--synth", action="store_true",
                   help="bench a synthetic clip with exact head poses instead of the real clips "
                        "(both when --clips is also given)")
    p.add_argument("--synth-seconds", type=float, default=20.0, help="length of the synthetic clip")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic clip")
    p.add_argument("--ave", default=None,
                   help="audio encoder file for prep's audio step (default: prep trains one)")
    p.add_argument("--ave-budget", type=float, default=None, metavar="SECONDS",
                   help="CPU seconds of prep's subject-AVE training (default: prep's own)")
    p.add_argument("--face-landmarker", default=None,
                   help="MediaPipe face_landmarker.task (default: the shared copy, else resolved)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- measuring
def _prep_in_this_process(video: str, out: str, opts: dict) -> dict:
    """Run prep (in a fresh worker process) and measure it: wall seconds, peak RSS."""
    from data_prep.pipeline import PrepOptions, prep

    t0 = time.perf_counter()
    result = prep(video, out, PrepOptions(**opts))
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "steps": result["steps"],
            "peak_rss_mb": usage.ru_maxrss / 1024.0}


def prep_measured(video, out, **opts) -> dict:
    """Prep ``video`` into ``out`` in a fresh (spawned) process so that its peak memory is
    its own; returns ``wall_s``, ``cpu_s``, ``peak_rss_mb`` and the step results, plus
    ``load_start`` / ``load_end`` (1-minute load average)."""
    load = os.getloadavg()[0]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        rec = pool.submit(_prep_in_this_process, str(video), str(out), opts).result()
    return {**rec, "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)}


def subject_figures(subject) -> dict:
    """Quality and timing figures of a prepared subject directory (see the module docstring)."""
    from data_prep.stabilize import mediapipe_rotations, rotation_jitter_deg
    from data_prep.subject import Manifest

    subject = Path(subject)
    steps = Manifest.load(subject).data["steps"]
    ingest, stab = steps["ingest"]["info"], steps["stabilize"]["info"]
    n, size = int(ingest["n_frames"]), int(ingest["size"])
    with np.load(subject / "track.npz") as tr:
        detected, valid, matrices = tr["detected"], tr["valid"], tr["matrices"]
    to_512 = 512.0 / size
    ok = valid & np.isfinite(matrices).all((1, 2))
    raw, stabilised = stab["rotation_jitter_deg_before"], stab["rotation_jitter_deg"]
    return {
        "frames": n, "fps": ingest["fps"], "size": size, "duration_s": ingest["duration_s"],
        "crop": ingest["crop"],
        "steps": {name: {"seconds": rec["seconds"],
                         "seconds_per_frame": round(rec["seconds"] / n, 5),
                         **({"cpu_seconds": rec["cpu_seconds"]} if "cpu_seconds" in rec else {})}
                  for name, rec in steps.items()},
        "tracked": {"detected": round(float(detected.mean()), 4),
                    "valid": round(float(valid.mean()), 4)},
        "landmark_rms_px_512": round(stab["landmark_rms_px"] * to_512, 4),
        "landmark_rms_px_512_before_ba": round(stab["landmark_rms_px_before"] * to_512, 4),
        "track_rms_px_512": round(stab["track_rms_px"] * to_512, 4),
        "jitter_deg": {"raw_pnp": raw,
                       "mediapipe": round(rotation_jitter_deg(mediapipe_rotations(matrices[ok])), 4),
                       "stabilised": stabilised,
                       "ratio": round(stabilised / raw, 4) if raw else None},
        "focal_px": stab["focal_px"], "principal_point": stab.get("principal_point"),
        "principal_point_from": stab.get("principal_point_from"),
        "tracks_per_frame": stab.get("tracks_per_frame"),
        "landmark_weight": stab.get("landmark_weight"),
        "n_rigid_landmarks": stab.get("n_rigid_landmarks"),
        "shot_cuts": len(stab.get("shot_cuts", [])),
    }


def bench_clip(video, out: Path, args) -> dict:
    """Prep one clip into the new subject directory ``out`` and report (see the module
    docstring)."""
    video = require_file(video, "clip")
    rec = prep_measured(video, _fresh(out), **_prep_opts(args))
    return {"clip": video.name, **_row(subject_figures(out), rec, out, args.keep)}


def bench_synth(synth_dir: Path, out: Path, args) -> dict:
    """A synthetic clip with exact head poses (made in ``synth_dir``), prepped into ``out``
    and compared with the truth."""
    from data_prep.stabilize import (head_to_camera_rotations, relative_rotation_error_deg,
                                     rotation_jitter_deg)
    from synctalk.synth.generate import SynthOptions, generate
    from synctalk.synth.validate import pose_agreement

    _fresh(synth_dir), _fresh(out)
    t0 = time.perf_counter()
    generate(synth_dir, SynthOptions(seconds=args.synth_seconds, size=args.size, seed=args.seed))
    synth_s = time.perf_counter() - t0
    rec = prep_measured(synth_dir / "clip.mp4", out, **_prep_opts(args))
    fig = subject_figures(out)
    agree = pose_agreement(synth_dir, out)
    gt = json.loads((synth_dir / "ground_truth.json").read_text())
    r_true = np.array([f["rotation"] for f in gt["frames"]], np.float64)
    with np.load(out / "poses.npz") as poses:
        r_pnp = head_to_camera_rotations(poses["c2w_raw"])
        pp = poses["intrinsics"][:2, 2]
    m = min(len(r_true), len(r_pnp))
    crop, s = fig["crop"], fig["size"] / fig["crop"]["side"]
    pp_true = [(gt["intrinsics"]["cx"] - crop["x"]) * s, (gt["intrinsics"]["cy"] - crop["y"]) * s]
    err, jit, jit_true = (agree["relative_rotation_error_deg"], agree["jitter_deg"],
                          agree["true_jitter_deg"])
    truth = {
        "relative_rotation_error_deg": {
            "mediapipe": round(agree["raw_relative_rotation_error_deg"], 4),
            "raw_pnp": round(relative_rotation_error_deg(r_true[:m], r_pnp[:m]), 4),
            "stabilised": round(err, 4)},
        "jitter_deg": {"truth": round(jit_true, 4),
                       "raw_pnp": round(rotation_jitter_deg(r_pnp[:m]), 4),
                       "stabilised": round(jit, 4)},
        "head_ring_misregistration_px": round(agree["head_ring_misregistration_px"], 4),
        "error_within_limit": bool(err <= MAX_REL_ROT_ERR_DEG),
        "jitter_within_limit": bool(jit <= JITTER_FACTOR * jit_true + JITTER_SLACK_DEG),
        "principal_point_px": [round(float(v), 2) for v in pp],
        "true_principal_point_px": [round(float(v), 2) for v in pp_true],
    }
    row = _row(fig, rec, out, args.keep)
    return {"clip": f"synth {args.synth_seconds:g} s seed {args.seed}", "synth_s": round(synth_s, 2),
            **row, "truth": truth}


def _fresh(path: Path) -> Path:
    if path.exists():
        raise InputError(f"{path} already exists; the bench preps from scratch — remove it or "
                         "choose another --out.")
    return path


def _row(fig: dict, rec: dict, subject: Path, keep: bool) -> dict:
    """One clip's JSON record from :func:`subject_figures` and :func:`prep_measured`."""
    return {**{k: v for k, v in fig.items() if k != "crop"},
            "wall_s": round(rec["wall_s"], 2),
            "wall_per_duration": round(rec["wall_s"] / fig["duration_s"], 3),
            "cpu_s": round(rec["cpu_s"], 2), "peak_rss_mb": round(rec["peak_rss_mb"], 1),
            "load_start": rec["load_start"], "load_end": rec["load_end"],
            **({"subject": str(subject)} if keep else {})}


def _prep_opts(args) -> dict:
    opts = {"fps": args.fps, "size": args.size, "face_landmarker": args.face_landmarker,
            "max_seconds": args.max_seconds}
    # Options of prep's audio step, passed only when set.
    opts.update({k: v for k, v in (("ave", args.ave), ("ave_budget", args.ave_budget))
                 if v is not None})
    return opts


# ---------------------------------------------------------------------------- command
def default_clips() -> list[Path]:
    """The shared real clips that exist (empty when ``../shared/data`` is absent)."""
    return [p for p in (SHARED_DATA / "clips" / name for name in DEFAULT_CLIPS) if p.is_file()]


def _clips(args) -> list[Path]:
    if args.clips:
        return [require_file(c, "clip") for c in args.clips]
    if args.synth:
        return []
    clips = default_clips()
    if not clips:
        raise InputError(f"no clips to bench: pass --clips VIDEO ... or --synth (the default "
                         f"clips in {SHARED_DATA / 'clips'} are not there).")
    return clips


def run(args) -> int:
    clips = _clips(args)  # fail before any work on a missing clip
    if args.size < 64 or args.size % 2:
        raise InputError(f"--size must be an even number ≥ 64, got {args.size}")
    if args.face_landmarker is None:
        shared = SHARED_DATA / "models" / "face_landmarker.task"
        args.face_landmarker = str(shared) if shared.is_file() else None
    if args.out:
        work = Path(args.out)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="synctalk-bench-prep-"))
    made: list[Path] = []
    results: dict = {"bench": "prep", "cpus": os.cpu_count(), "load_start": _load(),
                     "clips": [], "synth": None}
    try:
        for clip in clips:
            out = _fresh(work / clip.stem)
            made.append(out)
            row = bench_clip(clip, out, args)
            results["clips"].append(row)
            _progress(row, args.json)
        if args.synth:
            synth_dir, out = _fresh(work / "synth_clip"), _fresh(work / "synth_subject")
            made += [synth_dir, out]
            results["synth"] = bench_synth(synth_dir, out, args)
            _progress(results["synth"], args.json)
    finally:
        if not args.keep:
            for d in made:
                shutil.rmtree(d, ignore_errors=True)
            if not args.out:
                shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = _load()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        where = f" (kept in {work})" if args.keep else ""
        synth = " + synth" if args.synth else ""
        print(f"bench prep: {len(results['clips'])} clip(s){synth}{where}")
    return 0


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _progress(row: dict, quiet: bool) -> None:
    """One summary line per clip on stderr (stdout is the JSON)."""
    line = (f"{row['clip']}: {row['frames']} frames, {row['wall_s']:.1f} s "
            f"({row['wall_per_duration']:.2f}× duration), "
            f"tracked {100 * row['tracked']['valid']:.1f}%, "
            f"landmark RMS {row['landmark_rms_px_512']:.2f} px@512, "
            f"jitter ×{row['jitter_deg']['ratio']}, peak RSS {row['peak_rss_mb']:.0f} MB, "
            f"load {row['load_start']}→{row['load_end']}")
    if "truth" in row:
        t = row["truth"]
        line += (f"; rel. rotation error {t['relative_rotation_error_deg']['stabilised']:.3f}° "
                 f"(MediaPipe {t['relative_rotation_error_deg']['mediapipe']:.3f}°), jitter "
                 f"{t['jitter_deg']['stabilised']:.3f}° (truth {t['jitter_deg']['truth']:.3f}°)")
    print(line, file=sys.stderr if quiet else sys.stdout, flush=True)

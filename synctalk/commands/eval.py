"""``synctalk eval``: score a trained model on a split of its subject.

Every frame of the split (default ``val``: the tail of the clip, never trained on) is
rendered with the subject's own audio features and poses and compared with the real frame.
The poses are prep's with the model's learned corrections (the val frames' come from the
trainer's register stage, which fits them to the frozen model: the val frames' images already
set their prep poses, so this is tracking, not training); ``--prep-poses`` leaves the
corrections out. The metrics:

* **image** — PSNR and SSIM over the full frame and over the face mask (``face_masks/``),
  and the same face-mask numbers for two do-nothing baselines: the background plate, and
  the per-pixel median of the training frames (a face that never moves);
* **lip sync** — LMD over MediaPipe's 40 lip landmarks (render vs real frame, mean-centred,
  px at 512); the mouth opening (inner-lip gap) of the render against that of the real
  frames and, for a subject made by ``synctalk synth``, against the synthetic ground truth
  (``ground_truth.json`` beside the source clip, or ``--ground-truth``): Pearson correlation
  and spread ratio (std of the render's opening / std of the reference's, same unit);
  AVE sync confidence and offset of the rendered split, and of the real frames for reference;
* **stability** — landmark jitter (mean |second temporal difference|, px at 512) of render
  and real frames;
* **speed** — rendering frames/s and per-stage milliseconds.

Writes ``eval.json``, ``eval.md``, PNG plots (per-frame PSNR, ground truth | render |
difference for a few frames, mouth-opening traces) and ``side_by_side.mp4`` (real | render,
with the split's audio) into ``MODEL/eval/`` or ``--out``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synctalk.errors import InputError, OutputError

log = logging.getLogger(__name__)

EVAL_FORMAT = "synctalk-eval/1"
#: Training frames (evenly spaced) whose per-pixel median is the "median frame" baseline.
MEDIAN_FRAMES = 150
#: Frames shown in the ground truth | render | difference plot.
SHOWN_FRAMES = 4


def register(sub) -> None:
    from synctalk.cli import subcommand_parser_kwargs

    p = sub.add_parser("eval", help="score a trained model on its subject's val split",
                       description=__doc__.splitlines()[0], **subcommand_parser_kwargs())
    p.add_argument("model", help="model directory written by `synctalk train`")
    p.add_argument("--split", default="val", help="split of the subject to evaluate (splits.json)")
    p.add_argument("--out", default=None, help="report directory (default MODEL/eval)")
    p.add_argument("--ground-truth", default=None,
                   help="synthetic ground_truth.json (default: beside the subject's source clip)")
    p.add_argument("--ave", default=None,
                   help="AVE file for the sync score (default: the model's own encoder)")
    p.add_argument("--face-landmarker", default=None, help="face_landmarker.task (else resolved)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "native"),
                   help="hot-op implementation")
    p.add_argument("--max-frames", type=int, default=None,
                   help="evaluate only the first N frames of the split")
    p.add_argument("--prep-poses", action="store_true",
                   help="render with prep's head poses, leaving out the model's learned pose "
                        "corrections (for val frames: the register stage's)")
    p.add_argument("--json", action="store_true", help="print eval.json to stdout")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- inputs

def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read {path} — re-run `synctalk prep` on the subject.")
    return np.ascontiguousarray(bgr[..., ::-1])


def _read_mask(path: Path, side: int) -> np.ndarray:
    """``[side, side]`` bool mask from a 0/255 PNG (nearest-neighbour resize)."""
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InputError(f"cannot read {path} — re-run `synctalk prep` on the subject.")
    if m.shape[0] != side or m.shape[1] != side:
        m = cv2.resize(m, (side, side), interpolation=cv2.INTER_NEAREST)
    return m > 127


def _resize(rgb: np.ndarray, side: int) -> np.ndarray:
    import cv2

    if rgb.shape[0] == side and rgb.shape[1] == side:
        return rgb
    interp = cv2.INTER_AREA if rgb.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(rgb, (side, side), interpolation=interp)


def split_frames(head, split: str, max_frames: int | None = None) -> list[int]:
    """Sorted frame indices of ``split`` (optionally the first ``max_frames``)."""
    splits = head.splits or {}
    if split not in splits:
        raise InputError(f"the model's subject has no split {split!r} "
                         f"(splits: {', '.join(sorted(splits)) or 'none'}).")
    frames = sorted(int(i) for i in splits[split])
    if max_frames is not None:
        if max_frames < 1:
            raise InputError(f"--max-frames must be ≥ 1, got {max_frames}")
        frames = frames[:max_frames]
    if not frames:
        raise InputError(f"split {split!r} of the model's subject is empty.")
    return frames


def median_frame(subject: Path, frames: list[int], side: int, n: int = MEDIAN_FRAMES) -> np.ndarray:
    """Per-pixel median of up to ``n`` evenly spaced frames, ``[side, side, 3]`` uint8."""
    pick = [frames[int(k)] for k in np.linspace(0, len(frames) - 1, min(n, len(frames)))]
    stack = np.stack([_resize(_read_rgb(subject / "frames" / f"{i:06d}.jpg"), side) for i in pick])
    return np.median(stack, axis=0).round().astype(np.uint8)


def find_ground_truth(subject: Path, explicit=None) -> Path | None:
    """The synth's ``ground_truth.json`` for a subject: ``explicit``, else the file beside the
    source clip recorded in the subject's manifest; None when there is none."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise InputError(f"--ground-truth {p} does not exist.")
        return p
    try:
        src = json.loads((subject / "manifest.json").read_text())["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    p = Path(src).parent / "ground_truth.json"
    return p if p.is_file() else None


def truth_opening(gt_path: Path, subject: Path, frames: list[int], fps: float) -> np.ndarray:
    """The synthetic ground-truth mouth opening of subject frames, px at 512 of the subject crop.

    Subject frame ``i`` (at ``i / fps`` s) is matched with synth frame ``round(i · fps_gt /
    fps)``; the synth's ``mouth_open_px`` (px of the synth frame = prep's source frame) is
    scaled by ``512 / crop side`` (the ingest crop). Frames past the truth's end are NaN.
    """
    try:
        gt = json.loads(Path(gt_path).read_text())
        per = [f["mouth_open_px"] for f in gt["frames"]]
        gt_fps = float(gt["fps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{gt_path} is not a synth ground_truth.json ({e}).") from e
    info = json.loads((subject / "manifest.json").read_text())["steps"]["ingest"]["info"]
    side = float(info["crop"]["side"])
    k = np.round(np.asarray(frames, np.float64) * gt_fps / fps).astype(np.int64)
    out = np.full(len(frames), np.nan)
    ok = k < len(per)
    out[ok] = np.asarray(per, np.float64)[k[ok]] * (512.0 / side)
    return out


def resolve_sync_ave(head, explicit=None):
    """``(ave, meta, where)`` for the sync score, or ``(None, None, reason)``.

    An explicit file wins; otherwise the model's own encoder (``TalkingHead.ave_path``, else
    the subject's ``ave.pt`` written by prep), which must carry a trained face branch."""
    from synctalk.audio.ave import load_ave

    if explicit:
        path = Path(explicit).expanduser()
    else:
        path = getattr(head, "ave_path", None) or Path(head.subject) / "ave.pt"
        if not Path(path).is_file():
            return None, None, "the model has no AVE file: pass --ave FILE to score sync"
    ave, meta = load_ave(path)
    if not meta.get("has_face", False):
        return None, None, (f"{path} has no trained face branch (an audio-only encoder); pass "
                            "--ave FILE with one (`synctalk ave train`) to score sync")
    return ave, meta, str(path)


# ---------------------------------------------------------------- evaluation

@dataclass
class _Acc:
    """Per-frame results gathered while rendering."""

    renders: list[np.ndarray] = field(default_factory=list)
    truths: list[np.ndarray] = field(default_factory=list)
    per_frame: dict[str, list[float]] = field(default_factory=dict)

    def put(self, **values: float) -> None:
        for k, v in values.items():
            self.per_frame.setdefault(k, []).append(float(v))


def evaluate(head, out_dir: Path, *, split: str = "val", ground_truth=None, ave_path=None,
             face_landmarker=None, max_frames: int | None = None, progress: bool = True) -> dict:
    """Render ``split`` and score it (module docstring); writes the report into ``out_dir``.

    Returns:
        The ``eval.json`` dict.
    """
    import torch
    from tqdm import tqdm

    from synctalk.metrics.image import psnr, ssim
    from synctalk.metrics.lipsync import (LandmarkDetector, inner_lip_gap, lmd, opening_agreement,
                                          px_scale)
    from synctalk.metrics.report import plot_series, plot_side_by_side, write_eval_report
    from synctalk.metrics.stability import landmark_jitter
    from synctalk.models import resolve_face_landmarker
    from synctalk.render.offline import StageTimes

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        raise OutputError(f"report directory's parent does not exist: {out_dir.parent} — "
                          "create it first.")
    subject = Path(head.subject)
    frames = split_frames(head, split, max_frames)
    side = int(head.size)
    fps = float(head.fps)
    landmarker = resolve_face_landmarker(face_landmarker)
    gt_path = find_ground_truth(subject, ground_truth)
    feats = head.subject_audio_features()
    plate = _resize(_read_rgb(subject / "background.png"), side)
    train = sorted(int(i) for i in head.splits.get("train", [])) or frames
    median = median_frame(subject, train, side)

    acc, times = _Acc(), StageTimes()
    with torch.no_grad():
        for i in tqdm(frames, desc="eval: render", unit="frame", disable=not progress or None,
                      leave=False):
            t0 = time.perf_counter()
            out = head.render_frame(feats, i, i)
            times.add("render", time.perf_counter() - t0)
            for k, v in (out.get("timings") or {}).items():
                times.add(k, v)
            pred = out["rgb"]
            truth = _resize(_read_rgb(subject / "frames" / f"{i:06d}.jpg"), side)
            mask = _read_mask(subject / "face_masks" / f"{i:06d}.png", side)
            acc.renders.append(pred)
            acc.truths.append(truth)
            acc.put(psnr=psnr(pred, truth), ssim=ssim(pred, truth),
                    psnr_face=psnr(pred, truth, mask=mask), ssim_face=ssim(pred, truth, mask=mask),
                    plate_psnr_face=psnr(plate, truth, mask=mask),
                    plate_ssim_face=ssim(plate, truth, mask=mask),
                    median_psnr_face=psnr(median, truth, mask=mask),
                    median_ssim_face=ssim(median, truth, mask=mask))
    n = len(frames)
    pf = {k: np.asarray(v) for k, v in acc.per_frame.items()}

    with LandmarkDetector(landmarker) as det:
        mk_render = det.detect_all(acc.renders)
        mk_truth = det.detect_all(acc.truths)
    scale = px_scale(side)
    lm = lmd(mk_render.landmarks, mk_truth.landmarks, side)
    open_render = inner_lip_gap(mk_render.landmarks) * scale
    open_truth = inner_lip_gap(mk_truth.landmarks) * scale
    mouth = {"vs_frames": opening_agreement(open_render, open_truth)}
    open_synth = None
    if gt_path is not None:
        open_synth = truth_opening(gt_path, subject, frames, fps)
        mouth["vs_synth_truth"] = opening_agreement(open_render, open_synth)
        mouth["vs_synth_truth"]["ground_truth"] = str(gt_path)
        mouth["frames_vs_synth_truth"] = opening_agreement(open_truth, open_synth)

    sync = _sync(head, ave_path, acc, frames, mk_render, mk_truth, subject, fps)

    def mean(key: str) -> float:
        v = pf[key]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")

    psnr_face = mean("psnr_face")
    baselines = {
        "plate": {"psnr_face": mean("plate_psnr_face"), "ssim_face": mean("plate_ssim_face"),
                  "what": "the background plate (nothing rendered)"},
        "median": {"psnr_face": mean("median_psnr_face"), "ssim_face": mean("median_ssim_face"),
                   "what": "per-pixel median of the training frames (a still face)"},
    }
    best_base = max(b["psnr_face"] for b in baselines.values())
    render_s = times.seconds.get("render", 0.0)
    index = np.asarray(frames)
    results = {
        "format": EVAL_FORMAT,
        "model": str(getattr(head, "model_dir", "")),
        "subject": str(subject),
        "split": split,
        "n_frames": n,
        "frame_range": [frames[0], frames[-1]],
        "size": side,
        "fps": fps,
        "encoder": getattr(head, "encoder_id", None),
        "pose_correction": {**head.model.poses.magnitude(torch.tensor(frames)),
                            "what": "RMS of the model's learned corrections of prep's head poses "
                                    "over the split's frames (0: prep's poses)"},
        "image": {"psnr": mean("psnr"), "ssim": mean("ssim"), "psnr_face": psnr_face,
                  "ssim_face": mean("ssim_face"), "baseline": baselines,
                  "psnr_face_gain_db": psnr_face - best_base},
        "lipsync": {"lmd": lm["lmd"], "lmd_frames": lm["frames_used"],
                    "detection_rate_render": mk_render.detection_rate,
                    "detection_rate_truth": mk_truth.detection_rate,
                    "mouth_opening": mouth,
                    "units": "px at 512 (frame side scaled to 512)"},
        "sync": sync,
        "stability": {
            "jitter_render": landmark_jitter(mk_render.landmarks, side, frame_index=index),
            "jitter_truth": landmark_jitter(mk_truth.landmarks, side, frame_index=index),
            "units": "px at 512, mean |x[t+1] - 2x[t] + x[t-1]| over 478 landmarks"},
        "speed": {"fps": n / render_s if render_s > 0 else float("nan"),
                  "ms_per_frame": 1000.0 * render_s / n,
                  "stage_ms": {k: v for k, v in times.per_frame_ms(n).items() if k != "render"},
                  "device": str(getattr(head, "device", "cpu"))},
        "per_frame": {"frame": index, **pf, "lmd": lm["per_frame"], "opening_render": open_render,
                      "opening_truth": open_truth,
                      **({"opening_synth_truth": open_synth} if open_synth is not None else {})},
    }
    out_dir.mkdir(exist_ok=True)  # only now: a failed evaluation leaves no empty directory
    results["plots"] = [str(p) for p in _plots(out_dir, index, pf, acc, open_render, open_truth,
                                                open_synth, plot_series, plot_side_by_side)]
    results["video"] = str(_side_by_side_video(out_dir, acc, subject, frames, fps))
    results["elapsed_s"] = time.perf_counter() - t_start
    write_eval_report(out_dir, results)
    return json.loads((out_dir / "eval.json").read_text())


def _sync(head, ave_path, acc: _Acc, frames: list[int], mk_render, mk_truth, subject: Path,
          fps: float) -> dict:
    """Sync of the render and of the real frames, over the split's longest run of
    consecutive frames (the AVE looks at ±2 neighbouring frames)."""
    from synctalk.media import read_audio
    from synctalk.metrics.lipsync import FrameLandmarks
    from synctalk.metrics.sync import frames_sync

    ave, meta, where = resolve_sync_ave(head, ave_path)
    if ave is None:
        return {"render": {"skipped": where}, "truth": {"skipped": where}}
    idx = np.asarray(frames)
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    runs = np.split(np.arange(len(idx)), breaks)
    run = max(runs, key=len)
    a, b = int(run[0]), int(run[-1]) + 1
    audio = read_audio(subject / "audio.wav", 16000)
    audio = audio[int(round(frames[a] / fps * 16000)):]
    out = {"ave": where, "frame_range": [frames[a], frames[b - 1]]}
    for key, imgs, mk in (("render", acc.renders, mk_render), ("truth", acc.truths, mk_truth)):
        part = FrameLandmarks(mk.landmarks[a:b], mk.detected[a:b], mk.side)
        try:
            res = frames_sync(imgs[a:b], part, audio, fps, ave, meta,
                              device=str(getattr(head, "device", "cpu")))
        except InputError as e:
            res = {"skipped": str(e)}
        out[key] = res
    return out


def _plots(out_dir: Path, index, pf, acc: _Acc, open_render, open_truth, open_synth,
           plot_series, plot_side_by_side) -> list[Path]:
    paths = [plot_series(out_dir / "psnr_per_frame.png", index,
                         {"render, full frame": pf["psnr"], "render, face mask": pf["psnr_face"],
                          "plate baseline, face mask": pf["plate_psnr_face"],
                          "median-frame baseline, face mask": pf["median_psnr_face"]},
                         title="PSNR per frame", xlabel="frame", ylabel="dB")]
    shown = np.unique(np.linspace(0, len(acc.renders) - 1, min(SHOWN_FRAMES, len(acc.renders)))
                      .round().astype(int))
    paths.append(plot_side_by_side(out_dir / "frames.png",
                                   [(f"frame {index[k]}\n{pf['psnr'][k]:.1f} dB", acc.truths[k],
                                     acc.renders[k]) for k in shown]))
    traces = {"render": open_render, "real frames": open_truth}
    if open_synth is not None:
        traces["synthetic ground truth"] = open_synth
    paths.append(plot_series(out_dir / "mouth_opening.png", index, traces,
                             title="mouth opening (inner-lip gap, MediaPipe)", xlabel="frame",
                             ylabel="px at 512"))
    return paths


def _side_by_side_video(out_dir: Path, acc: _Acc, subject: Path, frames: list[int],
                        fps: float) -> Path:
    """``side_by_side.mp4``: real | render, with the audio of the split's first frame on."""
    import tempfile

    from synctalk.media import read_audio, write_mp4, write_wav

    audio = read_audio(subject / "audio.wav", 16000)
    seg = audio[int(round(frames[0] / fps * 16000)):int(round((frames[-1] + 1) / fps * 16000))]
    path = out_dir / "side_by_side.mp4"
    frames_iter = (np.concatenate([t, r], axis=1) for t, r in zip(acc.truths, acc.renders))
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        wav = Path(tmp) / "audio.wav"
        if seg.size:
            write_wav(wav, seg, 16000)
        write_mp4(path, frames_iter, fps, audio_path=wav if seg.size else None)
    return path


def run(args) -> int:
    import torch

    from synctalk.commands.render import load_head

    model = Path(args.model).expanduser()
    out_dir = Path(args.out).expanduser() if args.out else model / "eval"
    if args.out and not out_dir.parent.is_dir():
        raise OutputError(f"--out parent directory does not exist: {out_dir.parent} — "
                          "create it first.")
    head = load_head(model, args.device, args.backend)
    if args.prep_poses:
        with torch.no_grad():
            head.model.poses.delta.zero_()
    res = evaluate(head, out_dir, split=args.split, ground_truth=args.ground_truth,
                   ave_path=args.ave, face_landmarker=args.face_landmarker,
                   max_frames=args.max_frames)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(summary_text(res, out_dir))
    return 0


def summary_text(res: dict, out_dir: Path) -> str:
    """A few lines of headline numbers for the terminal."""
    img, lip, st, sp = res["image"], res["lipsync"], res["stability"], res["speed"]

    def f(v, d=2):
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = [f"eval of {res['split']} ({res['n_frames']} frames at {res['size']}²):",
             f"  PSNR {f(img['psnr'])} dB (face {f(img['psnr_face'])} dB, "
             f"{f(img['psnr_face_gain_db'])} dB above the best do-nothing baseline), "
             f"SSIM {f(img['ssim'], 4)} (face {f(img['ssim_face'], 4)})",
             f"  LMD {f(lip['lmd'])} px@512; landmark jitter {f(st['jitter_render'], 3)} "
             f"(real frames {f(st['jitter_truth'], 3)})"]
    for key, label in (("vs_frames", "real frames"), ("vs_synth_truth", "synthetic truth")):
        m = lip["mouth_opening"].get(key)
        if m:
            lines.append(f"  mouth opening vs {label}: r={f(m['corr'], 3)}, "
                         f"spread ratio {f(m['spread_ratio'], 3)}")
    s = res["sync"].get("render", {})
    lines.append("  sync: " + (f"skipped ({s['skipped']})" if "skipped" in s else
                               f"confidence {f(s['confidence'], 3)}, offset {s['offset_frames']} "
                               f"frames (real frames: {f(res['sync']['truth'].get('confidence'), 3)})"))
    lines.append(f"  speed {f(sp['fps'])} frames/s ({f(sp['ms_per_frame'], 1)} ms/frame)")
    lines.append(f"  report: {out_dir / 'eval.md'}")
    return "\n".join(lines)

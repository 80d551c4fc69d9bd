"""Step "report": ``preview.mp4`` (landmarks, head-pose axes and masks drawn over the
frames) and ``report.json`` / ``report.md`` (per-step timings and quality figures)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from data_prep.subject import Manifest, frame_name
from synctalk.errors import InputError
from synctalk.fsutil import write_json_atomic, write_text_atomic
from synctalk.media import write_mp4

DEFAULT_PARAMS = {"preview_size": 256}
#: Label colours (RGB) of masks/: background, head, neck, torso.
LABEL_COLOURS = np.array([[0, 0, 0], [230, 80, 60], [250, 200, 40], [60, 140, 240]], np.uint8)


def _axes_2d(c2w: np.ndarray, k: np.ndarray) -> np.ndarray | None:
    """Projected head-frame origin and x/y/z axis tips ``[4, 2]`` px, or None if behind."""
    w2c = np.linalg.inv(c2w)
    length = 0.25 * float(np.linalg.norm(c2w[:3, 3]))
    pts = np.array([[0, 0, 0], [length, 0, 0], [0, length, 0], [0, 0, length]], np.float64)
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    if (cam[:, 2] <= 1e-6).any():
        return None
    uv = cam @ k.T
    return uv[:, :2] / uv[:, 2:3]


def draw_preview_frame(rgb: np.ndarray, labels: np.ndarray | None, landmarks: np.ndarray,
                       axes: np.ndarray | None, valid: bool) -> np.ndarray:
    """One preview frame: labels tinted at 35%, landmarks as dots, pose axes (x red,
    y green, z blue), and a red border when the frame is not usable for training.

    Args:
        rgb: ``[S, S, 3]`` uint8 frame.
        labels: ``[S, S]`` uint8 label map (or None).
        landmarks: ``[478, ≥2]`` px of ``rgb``.
        axes: ``[4, 2]`` px projected origin and axis tips (or None).
        valid: whether the frame is usable for training.
    """
    out = rgb.copy()
    if labels is not None:
        m = labels > 0
        tint = LABEL_COLOURS[np.minimum(labels, 3)]
        blend = cv2.addWeighted(rgb, 0.65, tint, 0.35, 0.0)
        np.copyto(out, blend, where=m[..., None])
    # Dots of radius 1: the 3×3 neighbourhood less its corners.
    xy = np.round(landmarks[:, :2]).astype(np.int64)
    h, w = out.shape[:2]
    for dx, dy in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        x, y = xy[:, 0] + dx, xy[:, 1] + dy
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        out[y[inside], x[inside]] = (0, 255, 120)
    if axes is not None:
        o = tuple(int(v) for v in axes[0])
        for tip, colour in zip(axes[1:], [(255, 40, 40), (40, 220, 40), (60, 90, 255)]):
            cv2.line(out, o, tuple(int(v) for v in tip), colour, 2, cv2.LINE_AA)
    if not valid:
        cv2.rectangle(out, (0, 0), (w - 1, h - 1), (255, 0, 0), max(2, w // 85))
    return out


def preview_frames(subject: Path, side: int) -> Iterator[np.ndarray]:
    """``[side, side, 3]`` uint8 preview frames of a subject (see :func:`draw_preview_frame`):
    each frame and its label map are reduced to ``side``² first and the landmarks and pose
    axes scaled to it, so the drawing costs little per frame."""
    subject = Path(subject)
    with np.load(subject / "track.npz") as tr:
        landmarks, valid = tr["landmarks"][..., :2].astype(np.float64), tr["valid"]
    c2w = k = None
    if (subject / "poses.npz").is_file():
        with np.load(subject / "poses.npz") as poses:
            c2w, k = poses["c2w"], poses["intrinsics"]
    first = cv2.imread(str(subject / "frames" / frame_name(0, "jpg")), cv2.IMREAD_COLOR)
    if first is None:
        raise InputError(f"no frames in {subject / 'frames'} — re-run prep.")
    scale = side / first.shape[1]
    # JPEG decoding at 1/2 or 1/4 scale when that is the preview's size (much faster).
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        first.shape[1] // side if first.shape[1] % side == 0 else 0, cv2.IMREAD_COLOR)
    for i in range(len(valid)):
        path = subject / "frames" / frame_name(i, "jpg")
        bgr = cv2.imread(str(path), flag)
        if bgr is None:
            raise InputError(f"missing frame {path} — re-run prep.")
        if bgr.shape[:2] != (side, side):
            bgr = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        lab_path = subject / "masks" / frame_name(i, "png")
        labels = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED) if lab_path.is_file() else None
        if labels is not None:
            labels = cv2.resize(labels, (side, side), interpolation=cv2.INTER_NEAREST)
        axes = _axes_2d(c2w[i], k) if c2w is not None else None
        yield draw_preview_frame(rgb, labels, landmarks[i] * scale,
                                 axes * scale if axes is not None else None, bool(valid[i]))


def run(subject: Path, params: dict) -> dict:
    subject = Path(subject)
    manifest = Manifest.load(subject)
    fps = manifest.step("ingest")["info"]["fps"]
    side = params["preview_size"]
    n = write_mp4(subject / "preview.mp4", preview_frames(subject, side), fps,
                  audio_path=subject / "audio.wav", crf=26, preset="veryfast")
    report = build_report(manifest)
    write_json_atomic(subject / "report.json", report)
    write_text_atomic(subject / "report.md", report_markdown(report))
    return {"preview_frames": n}


def build_report(manifest: Manifest) -> dict:
    """Per-step timings and the figures the steps reported, from the manifest."""
    steps = manifest.data["steps"]
    ingest = steps.get("ingest", {}).get("info", {})
    n = ingest.get("n_frames") or 0
    return {
        "source": manifest.data["source"],
        "n_frames": n,
        "fps": ingest.get("fps"),
        "steps": {name: {"seconds": rec.get("seconds"),
                         "seconds_per_frame": (rec.get("seconds") or 0) / n if n else None,
                         "cpu_seconds": rec.get("cpu_seconds"),
                         "info": rec.get("info", {})}
                  for name, rec in steps.items()},
        "total_seconds": round(sum(rec.get("seconds") or 0 for rec in steps.values()), 2),
        "tools": manifest.data.get("tools", {}),
    }


def report_markdown(report: dict) -> str:
    """A readable summary of :func:`build_report`."""
    src = report["source"]
    lines = [f"# prep report: {Path(src.get('path', '?')).name}", "",
             f"{report['n_frames']} frames at {report['fps']} fps; total {report['total_seconds']} s", "",
             "| step | seconds | s/frame | CPU s | key figures |", "|---|---:|---:|---:|---|"]
    for name, s in report["steps"].items():
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in s["info"].items()
                            if isinstance(v, (int, float, str, bool)))
        spf = f"{s['seconds_per_frame']:.4f}" if s["seconds_per_frame"] is not None else "-"
        cpu = s.get("cpu_seconds")
        lines.append(f"| {name} | {s['seconds']} | {spf} | {'-' if cpu is None else cpu} | {figures} |")
    lines += ["", "Tools: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()), ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

"""Step "report": ``preview.mp4`` (landmarks, head-pose axes and masks drawn over the
frames) and ``report.json`` / ``report.md`` (per-step timings and quality figures)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data_prep.subject import Manifest, frame_name
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
    y green, z blue), and a red border when the frame is not usable for training."""
    out = rgb.copy()
    if labels is not None:
        tint = LABEL_COLOURS[np.clip(labels, 0, 3)]
        m = (labels > 0)[..., None]
        out = np.where(m, (0.65 * out + 0.35 * tint).astype(np.uint8), out)
    for x, y in landmarks[:, :2].astype(int):
        cv2.circle(out, (int(x), int(y)), 1, (0, 255, 120), -1)
    if axes is not None:
        o = tuple(int(v) for v in axes[0])
        for tip, colour in zip(axes[1:], [(255, 40, 40), (40, 220, 40), (60, 90, 255)]):
            cv2.line(out, o, tuple(int(v) for v in tip), colour, 2, cv2.LINE_AA)
    if not valid:
        cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), (255, 0, 0), 6)
    return out


def run(subject: Path, params: dict) -> dict:
    subject = Path(subject)
    manifest = Manifest.load(subject)
    fps = manifest.step("ingest")["info"]["fps"]
    track = np.load(subject / "track.npz")
    poses = np.load(subject / "poses.npz") if (subject / "poses.npz").is_file() else None
    n = len(track["valid"])
    side = params["preview_size"]

    def frames():
        for i in range(n):
            rgb = cv2.cvtColor(cv2.imread(str(subject / "frames" / frame_name(i, "jpg"))),
                               cv2.COLOR_BGR2RGB)
            lab_path = subject / "masks" / frame_name(i, "png")
            labels = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED) if lab_path.is_file() else None
            axes = _axes_2d(poses["c2w"][i], poses["intrinsics"]) if poses is not None else None
            img = draw_preview_frame(rgb, labels, track["landmarks"][i], axes, bool(track["valid"][i]))
            yield cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)

    write_mp4(subject / "preview.mp4", frames(), fps, audio_path=subject / "audio.wav", crf=26)
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
             "| step | seconds | s/frame | key figures |", "|---|---:|---:|---|"]
    for name, s in report["steps"].items():
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in s["info"].items()
                            if isinstance(v, (int, float, str, bool)))
        spf = f"{s['seconds_per_frame']:.4f}" if s["seconds_per_frame"] is not None else "-"
        lines.append(f"| {name} | {s['seconds']} | {spf} | {figures} |")
    lines += ["", "Tools: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()), ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

"""Evaluation reports: ``eval.json``, a readable ``eval.md`` and PNG plots (matplotlib, Agg).

The JSON is the record (see :mod:`synctalk.commands.eval` for its keys); the Markdown is a
view of it: one table of headline numbers with their references (baselines, ground truth)
and links to the plots. Every file is written atomically.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from synctalk.fsutil import atomic_path, write_json_atomic, write_text_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)
    return path


def plot_series(path, x: Sequence[float], series: Mapping[str, Sequence[float]], *,
                title: str, xlabel: str, ylabel: str) -> Path:
    """Line plot of named series over ``x`` (e.g. per-frame PSNR, mouth-opening traces);
    NaN values leave gaps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for name, y in series.items():
        ax.plot(np.asarray(x), np.asarray(y, np.float64), label=name, lw=1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, Path(path))


def abs_diff_image(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """``[H, W, 3]`` uint8 visualisation of ``|a − b|`` (mean over channels, × ``gain``, grey)."""
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1) * gain
    return np.repeat(np.clip(d, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def side_by_side(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], *, gain: float = 4.0) -> np.ndarray:
    """Stack rows of ``ground truth | render | |difference| × gain`` into one RGB image.

    Args:
        rows: ``(label, truth [H, W, 3] uint8, render [H, W, 3] uint8)`` per row, all one size.

    Returns:
        ``[rows·H, 3·W, 3]`` uint8.
    """
    return np.concatenate([np.concatenate([gt, pred, abs_diff_image(gt, pred, gain)], axis=1)
                           for _, gt, pred in rows], axis=0)


def plot_side_by_side(path, rows: Sequence[tuple[str, np.ndarray, np.ndarray]], *,
                      gain: float = 4.0) -> Path:
    """PNG of :func:`side_by_side` with column titles and a label per row."""
    plt = _plt()
    img = side_by_side(rows, gain=gain)
    h, w = rows[0][1].shape[:2]
    cell = 2.2  # inches per image
    fig_w, fig_h = 3 * cell + 0.8, len(rows) * cell + 0.35
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.8 / fig_w, 0.0, 3 * cell / fig_w, len(rows) * cell / fig_h))
    ax.imshow(img, interpolation="nearest")
    ax.set_xticks([w * 0.5, w * 1.5, w * 2.5],
                  ["ground truth", "render", f"|difference| × {gain:g}"], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], [r[0] for r in rows], fontsize=8)
    ax.tick_params(length=0)
    return _save(fig, Path(path))


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub Markdown table; floats with 2 decimals (pass strings for other formats)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _get(d: Mapping, *keys, default=None):
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return default
        d = d[k]
    return d


def eval_markdown(res: Mapping[str, Any]) -> str:
    """``eval.md``: headline metrics of an ``eval.json`` dict with references, then the plots."""
    img, lip, st = res.get("image", {}), res.get("lipsync", {}), res.get("stability", {})
    base = img.get("baseline", {})
    best_base = _get(img, "psnr_face_gain_db")
    rows: list[tuple] = [
        ("PSNR, full frame (dB)", img.get("psnr"), "higher is better"),
        ("SSIM, full frame", _fmt(img.get("ssim"), 4), ""),
        ("PSNR, face mask (dB)", img.get("psnr_face"),
         f"{_fmt(best_base)} dB above the best do-nothing baseline" if best_base is not None else ""),
        ("SSIM, face mask", _fmt(img.get("ssim_face"), 4), ""),
    ]
    for name, b in base.items():
        rows.append((f"baseline '{name}': PSNR / SSIM, face mask",
                     f"{_fmt(b.get('psnr_face'))} / {_fmt(b.get('ssim_face'), 4)}",
                     b.get("what", "")))
    rows.append(("LMD, mouth (px at 512)", lip.get("lmd"),
                 f"{lip.get('lmd_frames', 0)} frames with a face in both"))
    rows.append(("face found by MediaPipe: render / truth",
                 f"{_fmt(lip.get('detection_rate_render'), 3)} / "
                 f"{_fmt(lip.get('detection_rate_truth'), 3)}", ""))
    for key, label in (("vs_frames", "render vs real frames"),
                       ("vs_synth_truth", "render vs synthetic ground truth"),
                       ("frames_vs_synth_truth", "real frames vs synthetic ground truth "
                                                 "(the measure's own accuracy)")):
        m = _get(lip, "mouth_opening", key)
        if m:
            rows.append((f"mouth opening, {label}: corr / spread ratio",
                         f"{_fmt(m.get('corr'), 3)} / {_fmt(m.get('spread_ratio'), 3)}",
                         f"{m.get('frames_used')} frames"))
    for key, label in (("render", "render"), ("truth", "ground-truth frames")):
        s = _get(res, "sync", key)
        if not s:
            continue
        if "skipped" in s:
            rows.append((f"AVE sync, {label}", "skipped", s["skipped"]))
        else:
            rows.append((f"AVE sync, {label}: confidence / offset (frames)",
                         f"{_fmt(s.get('confidence'), 3)} / {s.get('offset_frames')}",
                         f"±{s.get('max_offset')} frames searched"))
    rows.append(("landmark jitter, render / truth (px at 512)",
                 f"{_fmt(st.get('jitter_render'), 3)} / {_fmt(st.get('jitter_truth'), 3)}",
                 "mean |2nd temporal difference|"))
    sp = res.get("speed", {})
    if sp:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in (sp.get("stage_ms") or {}).items())
        rows.append(("render speed (frames/s)", sp.get("fps"),
                     f"{_fmt(sp.get('ms_per_frame'), 1)} ms/frame on {sp.get('device', '?')}"
                     + (f" ({stages} ms)" if stages else "")))
    head = (f"# Evaluation: {res.get('model', '')}\n\n"
            f"Subject `{res.get('subject', '')}`, split `{res.get('split', '')}`: "
            f"{res.get('n_frames', 0)} frames at {res.get('size', '?')}² px, "
            f"{_fmt(res.get('fps'), 2)} fps; rendered with the subject's own audio features "
            f"and poses.\n")
    parts = [head, markdown_table(rows, ("metric", "value", "note"))]
    plots = res.get("plots") or []
    if plots:
        parts.append("\n## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots))
    return "\n".join(parts) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_eval_report(out_dir, results: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``eval.json`` (NaN/inf as null) and ``eval.md`` into ``out_dir`` (which must exist).

    Returns:
        ``{"json": path, "md": path}``.
    """
    out_dir = Path(out_dir)
    data = _jsonable(results)
    write_json_atomic(out_dir / "eval.json", data)
    write_text_atomic(out_dir / "eval.md", eval_markdown(data))
    return {"json": out_dir / "eval.json", "md": out_dir / "eval.md"}

"""Eval report: eval.json / eval.md and PNG plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from synctalk.metrics.report import (abs_diff_image, markdown_table, plot_series, plot_side_by_side,
                                     side_by_side, write_eval_report)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_side_by_side_layout_and_difference():
    gt = np.zeros((8, 10, 3), np.uint8)
    pred = gt.copy()
    pred[2, 3] = [30, 60, 90]  # mean |diff| 60, x4 = 240
    img = side_by_side([("a", gt, pred), ("b", gt, gt)])
    assert img.shape == (16, 30, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:8, 10:20], pred)
    assert img[2, 23].tolist() == [240, 240, 240] and img[8:, 20:].max() == 0
    assert abs_diff_image(gt, pred, gain=10)[2, 3, 0] == 255  # clipped


def test_plots_are_pngs(tmp_path):
    p = plot_series(tmp_path / "psnr.png", np.arange(5), {"render": [20, 21, np.nan, 22, 23],
                                                          "baseline": [15] * 5},
                    title="t", xlabel="frame", ylabel="dB")
    w, h = _png_size(p)
    assert w > 200 and h > 100
    rng = np.random.default_rng(0)
    rows = [(f"frame {i}", rng.integers(0, 255, (32, 32, 3), np.uint8),
             rng.integers(0, 255, (32, 32, 3), np.uint8)) for i in range(3)]
    assert _png_size(plot_side_by_side(tmp_path / "frames.png", rows))[1] > 200
    assert sorted(q.name for q in tmp_path.iterdir()) == ["frames.png", "psnr.png"]  # no temp files


def test_eval_report_json_and_markdown(tmp_path):
    res = {
        "model": "m", "subject": "s", "split": "val", "n_frames": 3, "size": 256, "fps": 25.0,
        "image": {"psnr": 29.123, "ssim": 0.9, "psnr_face": 27.5, "ssim_face": 0.8,
                  "psnr_face_gain_db": 6.25,
                  "baseline": {"plate": {"psnr_face": 21.25, "ssim_face": 0.5, "what": "bg"}}},
        "lipsync": {"lmd": float("nan"), "lmd_frames": 0,
                    "mouth_opening": {"vs_frames": {"corr": 0.7, "spread_ratio": 0.5,
                                                    "frames_used": 3}}},
        "sync": {"render": {"skipped": "too short"}},
        "stability": {"jitter_render": 1.0, "jitter_truth": 0.5},
        "speed": {"fps": 3.0, "ms_per_frame": 333.3, "device": "cpu", "stage_ms": {"field": 200.0}},
        "per_frame": {"psnr": np.array([1.0, np.inf, np.nan]), "frame": np.arange(3)},
        "plots": [str(tmp_path / "psnr.png")],
    }
    paths = write_eval_report(tmp_path, res)
    data = json.loads(paths["json"].read_text())
    assert data["lipsync"]["lmd"] is None and data["per_frame"]["psnr"] == [1.0, None, None]
    assert data["per_frame"]["frame"] == [0, 1, 2] and data["image"]["psnr"] == pytest.approx(29.123)
    md = paths["md"].read_text()
    assert "| PSNR, full frame (dB) | 29.12 |" in md
    assert "6.25 dB above the best do-nothing baseline" in md
    assert "render vs real frames: corr / spread ratio | 0.700 / 0.500" in md and "skipped" in md and "![psnr](psnr.png)" in md
    assert markdown_table([(1, 2.5, None)], ("a", "b", "c")).splitlines()[-1] == "| 1 | 2.50 | — |"

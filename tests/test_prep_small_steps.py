"""Blendshape smoothing and train/val splits."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.blendshapes import smooth_scores
from data_prep.splits import make_splits
from synctalk.errors import InputError


def test_savgol_keeps_slow_motion_and_removes_jitter():
    t = np.linspace(0, 1, 200)[:, None]
    slow = 0.3 + 0.2 * t - 0.1 * t ** 2 + 0.05 * t ** 3  # a cubic passes unchanged
    np.testing.assert_allclose(smooth_scores(slow, 5, 3), slow, atol=1e-9)
    noisy = slow + np.random.default_rng(0).normal(0, 0.05, slow.shape)
    assert np.abs(smooth_scores(noisy) - slow).mean() < 0.8 * np.abs(noisy - slow).mean()
    assert smooth_scores(np.array([[2.0], [-1.0], [0.5], [0.5], [0.5]])).min() >= 0


def test_splits_hold_out_the_end_and_skip_unusable_frames():
    valid = np.ones(110, bool)
    valid[[3, 105]] = False
    s = make_splits(valid, 1 / 11)
    assert s["val"] == [i for i in range(100, 110) if i != 105]
    assert s["train"] == [i for i in range(100) if i != 3]
    with pytest.raises(InputError):
        make_splits(np.ones(5, bool), 0.01)

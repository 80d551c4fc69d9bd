"""Landmark jitter: mean |second temporal difference|, px at 512."""
from __future__ import annotations

import numpy as np
import pytest

from synctalk.metrics.stability import landmark_jitter, second_differences


def test_constant_velocity_has_no_jitter():
    t = np.arange(20.0)[:, None, None]
    lm = np.zeros((20, 5, 2)) + t * np.array([1.5, -0.5])  # steady drift
    assert landmark_jitter(lm, 256) == pytest.approx(0.0, abs=1e-12)


def test_alternating_offset_jitter_is_known():
    # x alternates +a / -a: second difference is ±4a every frame
    a = 0.5
    n = 12
    lm = np.zeros((n, 3, 2))
    lm[:, :, 0] = a * (-1.0) ** np.arange(n)[:, None]
    assert landmark_jitter(lm, 512) == pytest.approx(4 * a)
    assert landmark_jitter(lm, 256) == pytest.approx(8 * a)  # px at 512
    # a subset of landmarks, and 2-D magnitudes
    lm[:, 0, 1] = 3 * a * (-1.0) ** np.arange(n)
    assert landmark_jitter(lm, 512, indices=(0,)) == pytest.approx(np.hypot(4 * a, 12 * a))


def test_gaps_and_missing_frames_break_triples():
    lm = np.zeros((6, 2, 2))
    lm[3, :, 0] = 1.0  # one spike at frame 3
    full = second_differences(lm)
    assert full.shape == (4, 2)
    np.testing.assert_allclose(full[:, 0], [0.0, 1.0, 2.0, 1.0])
    # frames 0,1,2 then 10,11,12: only the two runs' own triples count
    idx = np.array([0, 1, 2, 10, 11, 12])
    assert second_differences(lm, idx).shape == (2, 2)
    lm[1] = np.nan
    assert second_differences(lm).shape == (2, 2)  # triples touching frame 1 dropped
    assert np.isnan(landmark_jitter(lm[:2], 512))
    with pytest.raises(ValueError):
        second_differences(lm, idx[:3])

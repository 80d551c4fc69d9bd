"""Head motion and blinks for the synthetic head: smooth, seeded, reproducible.

Rotation convention (OpenCV camera: x right, y down, z forward), angles in degrees:
``R = Rz(roll) · Ry(yaw) · Rx(pitch)``; ``R`` maps head-frame vectors into the camera
frame and is the identity when the subject faces the camera as in the photo. Positive yaw
turns the face towards image left (the subject's right), positive pitch turns it down,
positive roll rotates it clockwise on screen.
"""
from __future__ import annotations

import numpy as np

#: Peak amplitudes (degrees) at ``motion_scale = 1``.
YAW_DEG, PITCH_DEG, ROLL_DEG = 15.0, 7.0, 4.0
#: Peak translation as a fraction of the image side (x, y) and of the depth (z).
SHIFT_XY, SHIFT_Z = 0.025, 0.03


def euler_to_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``[3, 3]`` rotation ``Rz(roll) · Ry(yaw) · Rx(pitch)`` from angles in degrees."""
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_signal(rng: np.random.Generator, t: np.ndarray, f_lo: float = 0.04,
                  f_hi: float = 0.35, n: int = 4) -> np.ndarray:
    """A smooth random signal in [-1, 1]: a sum of ``n`` sinusoids with random frequencies
    in ``[f_lo, f_hi]`` Hz and random phases, normalised by the sum of amplitudes."""
    freqs = rng.uniform(f_lo, f_hi, n)
    phases = rng.uniform(0, 2 * np.pi, n)
    amps = rng.uniform(0.5, 1.0, n)
    s = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
    return s / amps.sum()


def head_motion(n_frames: int, fps: float, rng: np.random.Generator, scale: float = 1.0):
    """Per-frame (yaw, pitch, roll) degrees ``[n, 3]`` and translation fractions ``[n, 3]``."""
    t = np.arange(n_frames) / fps
    angles = np.stack([YAW_DEG * smooth_signal(rng, t), PITCH_DEG * smooth_signal(rng, t),
                       ROLL_DEG * smooth_signal(rng, t)], 1) * scale
    shift = np.stack([SHIFT_XY * smooth_signal(rng, t), SHIFT_XY * smooth_signal(rng, t),
                      SHIFT_Z * smooth_signal(rng, t)], 1) * scale
    return angles, shift


def blinks(n_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame (0 open … 1 shut): a blink every 2.5–5 s, each closing in
    ~70 ms, held ~30 ms, reopening in ~110 ms."""
    t = np.arange(n_frames) / fps
    out = np.zeros(n_frames)
    start = rng.uniform(0.8, 2.5)
    while start < t[-1] + 1.0:
        close, hold, reopen = 0.07, 0.03, 0.11
        u = t - start
        down = np.clip(u / close, 0, 1)
        up = np.clip(1 - (u - close - hold) / reopen, 0, 1)
        prof = np.where(u < close, down, np.where(u < close + hold, 1.0, up))
        prof = np.where((u >= 0) & (u <= close + hold + reopen), prof, 0.0)
        out = np.maximum(out, 0.5 - 0.5 * np.cos(np.pi * prof))
        start += rng.uniform(2.5, 5.0)
    return out

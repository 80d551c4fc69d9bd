"""Mel front-end: agreement with a plain loop-based reference, window timing, input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synctalk.audio import mel as M
from synctalk.errors import InputError, SyncTalkError

SR = 16000


# ---------------------------------------------------------------- loop-based reference

def ref_hz_to_mel(f: float) -> float:
    """Slaney: 3 mel per 200 Hz up to 1 kHz (15 mel), then 27 mel per factor 6.4."""
    return 3.0 * f / 200.0 if f < 1000.0 else 15.0 + 27.0 * math.log(f / 1000.0) / math.log(6.4)


def ref_mel_to_hz(m: float) -> float:
    return 200.0 * m / 3.0 if m < 15.0 else 1000.0 * 6.4 ** ((m - 15.0) / 27.0)


def ref_filterbank(sr=SR, n_fft=800, n_mels=80, fmin=55.0, fmax=7600.0) -> np.ndarray:
    lo_mel, hi_mel = ref_hz_to_mel(fmin), ref_hz_to_mel(fmax)
    edges = [ref_mel_to_hz(lo_mel + (hi_mel - lo_mel) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for band in range(n_mels):
        left, centre, right = edges[band], edges[band + 1], edges[band + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left < f <= centre:
                w = (f - left) / (centre - left)
            elif centre < f < right:
                w = (right - f) / (right - centre)
            else:
                w = 0.0
            fb[band, k] = w * 2.0 / (right - left)
    return fb


def ref_melspectrogram(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    y = np.empty_like(x)
    y[0] = x[0]
    for i in range(1, len(x)):
        y[i] = x[i] - 0.97 * x[i - 1]
    padded = np.pad(y, 400, mode="reflect")
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / 800) for n in range(800)])
    n_frames = 1 + len(y) // 200
    mag = np.zeros((401, n_frames))
    for m in range(n_frames):
        frame = padded[m * 200: m * 200 + 800] * window
        mag[:, m] = np.abs(np.fft.rfft(frame))
    mel = ref_filterbank() @ mag
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - 20.0
    return np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def chirp(seconds: float, f0: float = 100.0, f1: float = 7000.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    return (amp * np.sin(phase)).astype(np.float32)


# ---------------------------------------------------------------- spectrogram values

@pytest.mark.parametrize("name", ["noise", "chirp"])
def test_matches_loop_reference(name):
    rng = np.random.default_rng(1)
    x = (0.2 * rng.standard_normal(2 * SR + 123)).astype(np.float32) if name == "noise" else chirp(2.0)
    ours = M.melspectrogram(x)
    ref = ref_melspectrogram(x)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (80, 1 + len(x) // 200)
    assert np.abs(ours.numpy() - ref).max() < 1e-4
    assert ours.min() >= -4 and ours.max() <= 4 and ours.std() > 0.1  # not saturated


def test_filterbank_matches_reference():
    np.testing.assert_allclose(M.mel_filterbank(), ref_filterbank(), rtol=0, atol=1e-9)


def test_frame_rate_and_tensor_input():
    x = torch.from_numpy(chirp(1.0))
    mel = M.melspectrogram(x)
    assert mel.shape == (80, 81)  # 80 frames per second + the frame centred on the last hop
    assert torch.equal(mel, M.melspectrogram(x.numpy()))


def test_sine_lands_in_its_band():
    t = np.arange(SR) / SR
    mel = M.melspectrogram((0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32))
    fb = M.mel_filterbank()
    assert int(mel[:, 10:-10].mean(1).argmax()) == int(fb[:, 1000 * 800 // SR].argmax())


# ---------------------------------------------------------------- resampling helper

def test_48k_stereo_through_helper():
    seconds, f = 1.5, 440.0
    t48 = np.arange(int(seconds * 48000)) / 48000
    s = 0.4 * np.sin(2 * np.pi * f * t48)
    stereo = np.stack([0.5 * s, 1.5 * s], axis=1).astype(np.float32)  # channel mean = s
    mono16 = M.to_mono_16k(stereo, 48000)
    assert mono16.dtype == np.float32 and mono16.shape == (int(seconds * SR),)
    t16 = np.arange(len(mono16)) / SR
    expected = 0.4 * np.sin(2 * np.pi * f * t16)
    assert np.abs(mono16 - expected)[200:-200].max() < 1e-3  # edges carry filter transients

    mel = M.audio_to_mel(stereo, 48000)
    direct = M.melspectrogram(expected.astype(np.float32))
    assert mel.shape == direct.shape
    assert (mel - direct)[:, 4:-4].abs().max() < 0.02


def test_helper_passes_16k_mono_through():
    x = chirp(0.5)
    np.testing.assert_array_equal(M.to_mono_16k(x, 16000), x)
    np.testing.assert_array_equal(M.to_mono_16k(x[:, None], 16000), x)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("audio, match", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros(3199, np.float32), "at least 0.2 s"),
    (np.concatenate([np.zeros(5000), [np.nan], np.zeros(100)]).astype(np.float32), "NaN"),
    (np.concatenate([np.zeros(5000), [np.inf]]).astype(np.float32), "sample 5000"),
    (np.zeros((2, 5000), np.float32), "mono"),
])
def test_bad_audio_is_a_user_error(audio, match):
    with pytest.raises(InputError, match=match):
        M.melspectrogram(audio)


@pytest.mark.parametrize("audio, sr, match", [
    (np.zeros(0, np.float32), 48000, "empty"),
    (np.zeros(4000, np.float32), 48000, "0.083 s"),  # 4000 samples at 48 kHz → 1334 at 16 kHz
    (np.full((9000, 2), np.nan, np.float32), 44100, "NaN"),
    (np.zeros((2, 9000), np.float32), 44100, r"\[channels, samples\]"),
    (np.zeros(9000, np.float32), 0, "sample rate"),
    (np.zeros(9000, np.float32), 22050.5, "sample rate"),
])
def test_bad_audio_through_helper(audio, sr, match):
    with pytest.raises(SyncTalkError, match=match):
        M.audio_to_mel(audio, sr)


# ---------------------------------------------------------------- per-frame windows

def test_window_starts_25fps_are_centred_convention():
    n_mel = 400
    n_frames = 130  # runs past the end of the audio: windows clamp
    starts = M.window_starts(n_frames, 25, n_mel)
    t = np.arange(n_frames)
    expected = np.clip((16 * (t - 2)) // 5, 0, n_mel - 16)  # ⌊3.2·(t−2)⌋, exact
    np.testing.assert_array_equal(starts, expected)
    assert starts[0] == starts[1] == starts[2] == 0 and starts[3] == 3
    assert starts[-1] == n_mel - 16
    assert starts[7] == 16  # 3.2·5 = 16 exactly; naive float 80·(7/25 − 0.08) floors to 15


def test_frame_windows_layout_and_content():
    mel = M.melspectrogram(chirp(2.0))
    windows = M.frame_windows(mel, 60, 25.0)
    assert windows.shape == (60, 1, 80, 16) and windows.dtype == torch.float32
    starts = M.window_starts(60, 25.0, mel.shape[1])
    for t in (0, 1, 7, 33, 59):
        assert torch.equal(windows[t, 0], mel[:, starts[t]: starts[t] + 16])


def test_30fps_windows_line_up_in_time():
    n_mel = 2000
    s30 = M.window_starts(600, 30, n_mel)
    s25 = M.window_starts(500, 25, n_mel)
    # Frames shown at the same instant (t30/30 == t25/25) get the same window.
    np.testing.assert_array_equal(s30[::6], s25[::5])
    # Every window starts within one mel hop before t/fps − 80 ms.
    t = np.arange(3, 600)
    lead = t / 30 - 0.08 - s30[3:] / 80
    assert lead.min() >= -1e-9 and lead.max() < 1 / 80
    # NTSC rates use exact fractions too.
    np.testing.assert_array_equal(M.window_starts(600, 30000 / 1001, n_mel),
                                  M.window_starts(600, 29.97, n_mel))


@pytest.mark.parametrize("fps, frames", [(25.0, [40, 57, 78]), (30.0, [48, 67, 95]),
                                         (30000 / 1001, [50, 93])])
def test_click_at_frame_time_lands_mid_window(fps, frames):
    """A click at t/fps must sit in the middle of frame t's window (column 7.5 of 0..15).

    Clicks are ≥ 10 frames apart so each window holds one.
    """
    x = np.zeros(5 * SR, np.float32)
    for t in frames:
        x[round(t / fps * SR)] = 1.0
    windows = M.frame_windows(M.melspectrogram(x), max(frames) + 5, fps)
    for t in frames:
        energy = (windows[t, 0] + 4.0).sum(0).numpy()  # silence is exactly −4
        centroid = float((energy * np.arange(16)).sum() / energy.sum())
        assert 6.0 <= centroid <= 8.0, (t, centroid)
        # Two frames later the click has moved to the start of the window (uncentred would be here).
        later = (windows[t + 2, 0] + 4.0).sum(0).numpy()
        assert float((later * np.arange(16)).sum() / later.sum()) < 3.0


def test_window_errors():
    mel = torch.zeros(80, 15)
    with pytest.raises(InputError, match="16"):
        M.frame_windows(mel, 3, 25.0)
    with pytest.raises(InputError, match="fps"):
        M.frame_windows(torch.zeros(80, 40), 3, 0.0)
    with pytest.raises(InputError, match=r"\[80, T\]"):
        M.frame_windows(torch.zeros(40, 80), 3, 25.0)

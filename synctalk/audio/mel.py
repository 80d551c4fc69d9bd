"""Mel front-end of the audio-visual encoder (the Wav2Lip / SyncTalk ``audio.melspectrogram``).

Pipeline, for 16 kHz mono float audio ``x`` of ``n`` samples:

1. pre-emphasis ``y[i] = x[i] - 0.97·x[i-1]`` (``y[0] = x[0]``);
2. STFT: ``n_fft = win = 800`` samples (50 ms), periodic Hann window, hop 200 samples
   (12.5 ms), centred frames with reflect padding → magnitude ``[401, T]``,
   ``T = 1 + n // 200`` (80 frames per second);
3. 80 mel bands, 55–7600 Hz, Slaney mel scale and Slaney area normalisation
   (``librosa.filters.mel`` defaults);
4. ``S = 20·log10(max(1e-5, mel)) − 20`` dB, then ``clip(8·(S + 100)/100 − 4, −4, 4)``.

The result is ``[80, T]`` float32 in ``[-4, 4]``; silence is ``-4``. Everything is computed in
float64 and rounded once at the end, so results do not depend on the device.

Per-video-frame windows (the AVE input) are described in :func:`frame_windows`.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from scipy.signal import resample_poly

from synctalk.errors import InputError

SAMPLE_RATE = 16_000
N_FFT = 800
HOP_LENGTH = 200
WIN_LENGTH = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
#: Mel frames per second of audio.
MEL_FPS = SAMPLE_RATE // HOP_LENGTH
#: Mel frames in one AVE input window (200 ms).
WINDOW_FRAMES = 16
#: Shortest accepted input: one full window, 200 ms.
MIN_SAMPLES = WINDOW_FRAMES * HOP_LENGTH
#: A frame's window starts this many seconds before the frame's timestamp (two 25-fps frames).
WINDOW_LEAD_S = Fraction(2, 25)

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log_part, m * _F_SP)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Triangular mel filters on the Slaney scale with Slaney (area) normalisation.

    Band ``i`` rises linearly from edge ``i`` to edge ``i+1`` and falls to edge ``i+2``, the
    ``n_mels + 2`` edges being equally spaced in mel between ``fmin`` and ``fmax``; each band
    is scaled by ``2 / (edge[i+2] − edge[i])`` (Hz) so all bands have the same area.

    Returns:
        ``[n_mels, n_fft // 2 + 1]`` float64 weights, to multiply a magnitude spectrogram.
    """
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lo) / (mid - lo)
    falling = (hi - bins) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (hi - lo))


def _check_samples(x: torch.Tensor, min_samples: int = MIN_SAMPLES) -> None:
    """Raise :class:`InputError` for empty, non-finite or (at 16 kHz) too short 1-D audio."""
    n = x.shape[0]
    if n == 0:
        raise InputError("audio is empty (0 samples) — check that the input has an audio track.")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise InputError(f"audio contains NaN or infinite samples (first at sample {first}) — "
                         "the decoded audio is corrupt; re-encode the file.")
    if n < min_samples:
        raise InputError(f"audio is {n / SAMPLE_RATE:.3f} s long; at least "
                         f"{min_samples / SAMPLE_RATE:.1f} s ({min_samples} samples at "
                         f"{SAMPLE_RATE} Hz) is needed for one mel window.")


def to_mono_16k(audio: np.ndarray | torch.Tensor, sr: int) -> np.ndarray:
    """Downmix and resample audio to what :func:`melspectrogram` takes.

    Args:
        audio: ``[n]`` mono or ``[n, channels]`` samples (float, nominally in [-1, 1]).
        sr: sample rate of ``audio`` in Hz (a positive integer).

    Returns:
        ``[m]`` float32 mono at 16 kHz: channels averaged, then polyphase resampling
        (``scipy.signal.resample_poly``, Kaiser window), ``m = ceil(n · 16000 / sr)``.

    Raises:
        InputError: wrong shape, bad ``sr``, empty or non-finite audio.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        if x.shape[1] > x.shape[0]:
            raise InputError(f"audio of shape {x.shape} looks like [channels, samples]; "
                             "pass it as [samples, channels].")
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise InputError(f"audio must be [samples] or [samples, channels], got shape {x.shape}")
    if not (float(sr).is_integer() and sr > 0):
        raise InputError(f"sample rate must be a positive integer number of Hz, got {sr}")
    sr = int(sr)
    _check_samples(torch.from_numpy(x), min_samples=1)
    if sr != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, sr)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    return x.astype(np.float32)


def melspectrogram(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Normalised log-mel spectrogram of 16 kHz mono audio (see the module docstring).

    Args:
        audio: ``[n]`` samples at 16 kHz, ``n ≥ 3200`` (200 ms). A tensor stays on its device.
            For other rates or several channels use :func:`audio_to_mel`.

    Returns:
        ``[80, T]`` float32 in ``[-4, 4]``, ``T = 1 + n // 200``; frame ``m`` is centred on
        sample ``200·m`` (time ``m / 80`` s) and sees ``m / 80 ± 0.025`` s.

    Raises:
        InputError: not 1-D, empty, shorter than 200 ms, or NaN/inf samples.
    """
    x = torch.as_tensor(audio).to(torch.float64)
    if x.ndim != 1:
        raise InputError(f"melspectrogram takes [samples] mono audio at {SAMPLE_RATE} Hz, got "
                         f"shape {tuple(x.shape)}; use audio_to_mel(audio, sr) to downmix/resample.")
    _check_samples(x)
    y = torch.cat([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    window = torch.hann_window(WIN_LENGTH, periodic=True, dtype=torch.float64, device=x.device)
    spec = torch.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
                      center=True, pad_mode="reflect", return_complex=True).abs()  # [401, T]
    mel = torch.from_numpy(mel_filterbank()).to(x.device) @ spec  # [80, T]
    min_amplitude = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * torch.log10(mel.clamp_min(min_amplitude)) - REF_LEVEL_DB
    norm = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB) - MAX_ABS_VALUE
    return norm.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE).to(torch.float32)


def audio_to_mel(audio: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
    """:func:`melspectrogram` of ``[n]`` or ``[n, channels]`` audio at any rate ``sr`` (Hz).

    Returns:
        ``[80, T]`` float32 (CPU), 80 frames per second of audio.
    """
    return melspectrogram(to_mono_16k(audio, sr))


def window_starts(n_frames: int, fps: float, n_mel: int) -> np.ndarray:
    """First mel frame of each video frame's window (see :func:`frame_windows`).

    ``start(t) = ⌊80·(t/fps − 0.08)⌋`` computed exactly (``fps`` is taken as the nearest
    fraction with denominator ≤ 10000, so 29.97 and 30000/1001 both work), then clamped to
    ``[0, n_mel − 16]``. At 25 fps this is ``⌊3.2·(t − 2)⌋``.

    Returns:
        ``[n_frames]`` int64.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps}")
    if n_mel < WINDOW_FRAMES:
        raise InputError(f"the mel spectrogram has {n_mel} frames; a window needs {WINDOW_FRAMES} "
                         f"({WINDOW_FRAMES / MEL_FPS:.1f} s of audio).")
    rate = Fraction(fps).limit_denominator(10_000)
    # 80·t/fps − 80·lead = (a·t − b) / c with integers: floor division is exact.
    a = MEL_FPS * rate.denominator * WINDOW_LEAD_S.denominator
    b = MEL_FPS * WINDOW_LEAD_S.numerator * rate.numerator
    c = rate.numerator * WINDOW_LEAD_S.denominator
    t = np.arange(n_frames, dtype=np.int64)
    return np.clip((a * t - b) // c, 0, n_mel - WINDOW_FRAMES)


def frame_windows(mel: torch.Tensor | np.ndarray, n_frames: int, fps: float) -> torch.Tensor:
    """Cut one 16-frame (200 ms) mel window per video frame: the AVE audio input.

    Timing: video frame ``t`` at ``fps`` is shown at ``t/fps`` s. Its window is mel frames
    ``s … s+15`` with ``s = ⌊80·(t/fps − 0.08)⌋``, i.e. the 200 ms from ``t/fps − 0.08`` to
    ``t/fps + 0.12`` s (mel frames counted as 12.5 ms hops); with each mel frame's ±25 ms STFT
    support the audio seen is about ``t/fps − 0.105 … t/fps + 0.13`` s. At 25 fps that is
    exactly video frames ``t−2 … t+2``, the 5-frame block SyncNet / Wav2Lip experts pair with a
    mel window, so frame ``t`` sits in the middle: a sound at ``t/fps`` lands at window column
    ≈ 6.4–7.4 of 0–15. An uncentred window (``s = ⌊80·t/fps⌋``) would describe the mouth two
    frames later and shift lip motion by 80 ms against the audio.
    Look-ahead: frame ``t`` needs audio up to ~120 ms (~130 ms with the STFT half-window) after
    its timestamp; a streaming renderer must buffer that much.
    At the ends windows are clamped to ``[0, T − 16]``: the first two frames (at 25 fps) and any
    frame past the end of the audio repeat the edge windows.

    Args:
        mel: ``[80, T]`` from :func:`melspectrogram`, ``T ≥ 16``.
        n_frames: number of video frames.
        fps: video frame rate (frames per second).

    Returns:
        ``[n_frames, 1, 80, 16]`` float32 on ``mel``'s device.
    """
    mel = torch.as_tensor(mel)
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise InputError(f"mel must be [{N_MELS}, T], got shape {tuple(mel.shape)}")
    starts = torch.from_numpy(window_starts(n_frames, fps, mel.shape[1])).to(mel.device)
    index = starts[:, None] + torch.arange(WINDOW_FRAMES, device=mel.device)  # [n_frames, 16]
    return mel[:, index].permute(1, 0, 2).unsqueeze(1).to(torch.float32).contiguous()

"""Streaming audio features: push short chunks of 16 kHz audio, get per-frame AVE features
as soon as each frame's mel window is complete — the same numbers as the offline path.

* :class:`StreamingMel` reproduces :func:`synctalk.audio.mel.melspectrogram` incrementally:
  the pre-emphasis filter carries its last input sample across chunks, mel frame ``m`` (STFT
  centred on sample ``200·m``, ±400 samples) is emitted once sample ``200·m + 399`` has
  arrived, the first frames use the same reflect padding of the stream's first 401 samples,
  and :meth:`StreamingMel.finish` emits the last frames with the end reflection.
* :class:`StreamingFeatures` cuts each video frame's centred window
  (:func:`synctalk.audio.mel.frame_windows`) from the streamed mel and runs the AVE's audio
  branch on it. Frame ``t`` (shown at ``t/fps``) is emitted after at most
  :data:`LOOKAHEAD_S` = 132.5 ms of audio beyond ``t/fps`` has been pushed: its window ends
  120 ms after the frame, plus the STFT's 25 ms half-window, minus the 12.5 ms of the last
  mel hop. A real-time renderer must delay video by that much. (Frames in the first 80 ms,
  whose window is clamped to the start of the audio, wait for the first 212.5 ms.)

Per-clip mel normalisation cannot look at a stream's future, so a ``"clip"``-normalised AVE
streams with fixed band statistics (e.g. :func:`~synctalk.audio.dataset.mel_band_stats` of the
subject's training audio); :func:`~synctalk.audio.features.ave_features` given the same
``mel_stats`` gives the same features.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from synctalk.audio import mel as M
from synctalk.audio.ave import AVE, EMBED_DIM
from synctalk.audio.features import embed_windows
from synctalk.errors import InputError

#: Seconds of audio after a frame's timestamp needed before its features can be emitted.
LOOKAHEAD_S = float(Fraction(M.WINDOW_FRAMES - 1, M.MEL_FPS) + Fraction(M.N_FFT // 2, M.SAMPLE_RATE)
                    - M.WINDOW_LEAD_S)
_HALF = M.N_FFT // 2  # reflect padding each side (400 samples)
_HOP = M.HOP_LENGTH


class StreamingMel:
    """Incremental :func:`~synctalk.audio.mel.melspectrogram` of one 16 kHz mono stream.

    Memory stays bounded: only the samples still needed by unfinished frames are kept.
    """

    def __init__(self) -> None:
        self._fb = torch.from_numpy(M.mel_filterbank())  # [80, 401] float64
        self._window = torch.hann_window(M.WIN_LENGTH, periodic=True, dtype=torch.float64)
        self._y = np.zeros(0, np.float64)  # pre-emphasised samples from absolute index _y0 on
        self._y0 = 0
        self._head = np.zeros(0, np.float64)  # y[0 … 400], for the start reflection
        self._last_x: float | None = None
        self.n_samples = 0
        self.n_emitted = 0
        self.finished = False

    def push(self, samples: np.ndarray | torch.Tensor) -> np.ndarray:
        """Add ``[k]`` samples (float, 16 kHz); returns the newly complete mel frames
        ``[80, j]`` float32 (``j`` may be 0)."""
        if self.finished:
            raise InputError("this stream is finished; start a new one")
        x = np.asarray(samples.cpu() if isinstance(samples, torch.Tensor) else samples, np.float64)
        if x.ndim != 1:
            raise InputError(f"stream chunks must be [samples] mono at {M.SAMPLE_RATE} Hz, "
                             f"got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError(f"audio chunk contains NaN or infinite samples (stream sample "
                             f"{self.n_samples + int(np.flatnonzero(~np.isfinite(x))[0])}) — "
                             "the audio source is corrupt.")
        if x.size == 0:
            return np.zeros((M.N_MELS, 0), np.float32)
        first = x[0] if self._last_x is None else x[0] - M.PREEMPHASIS * self._last_x
        y = np.concatenate([[first], x[1:] - M.PREEMPHASIS * x[:-1]])
        self._last_x = float(x[-1])
        self._y = np.concatenate([self._y, y])
        if len(self._head) <= _HALF:
            self._head = np.concatenate([self._head, y[:_HALF + 1 - len(self._head)]])
        self.n_samples += len(x)
        ready = (self.n_samples - _HALF) // _HOP + 1 if self.n_samples >= _HALF + 1 else 0
        return self._emit(ready, final=False)

    def finish(self) -> np.ndarray:
        """End the stream: the remaining frames ``[80, j]`` (with the end reflection), so that
        all frames emitted number ``1 + n_samples // 200`` as offline.

        Raises:
            InputError: fewer than 3200 samples (200 ms) were pushed, as offline.
        """
        if self.finished:
            return np.zeros((M.N_MELS, 0), np.float32)
        if self.n_samples < M.MIN_SAMPLES:
            raise InputError(f"audio stream is {self.n_samples / M.SAMPLE_RATE:.3f} s long; at "
                             f"least {M.MIN_SAMPLES / M.SAMPLE_RATE:.1f} s is needed for one "
                             "mel window.")
        out = self._emit(1 + self.n_samples // _HOP, final=True)
        self.finished = True
        return out

    def _padded(self, lo: int, hi: int, final: bool) -> np.ndarray:
        """Reflect-padded signal ``P[lo:hi]`` (``P[j] = y[j − 400]`` inside)."""
        j = np.arange(lo, hi) - _HALF  # index into y, before reflection
        n = self.n_samples
        j = np.where(j < 0, -j, j)
        if final:
            j = np.where(j >= n, 2 * (n - 1) - j, j)
        out = np.empty(len(j), np.float64)
        head = j < self._y0
        out[head] = self._head[j[head]]
        out[~head] = self._y[j[~head] - self._y0]
        return out

    def _emit(self, ready: int, final: bool) -> np.ndarray:
        first, self.n_emitted = self.n_emitted, max(self.n_emitted, ready)
        if self.n_emitted == first:
            return np.zeros((M.N_MELS, 0), np.float32)
        frames = np.stack([self._padded(m * _HOP, m * _HOP + M.N_FFT, final)
                           for m in range(first, self.n_emitted)])  # [j, 800]
        spec = torch.fft.rfft(torch.from_numpy(frames) * self._window, dim=1).abs().T  # [401, j]
        mel = self._fb @ spec
        db = 20.0 * torch.log10(mel.clamp_min(10.0 ** (M.MIN_LEVEL_DB / 20.0))) - M.REF_LEVEL_DB
        norm = 2.0 * M.MAX_ABS_VALUE * (db - M.MIN_LEVEL_DB) / (-M.MIN_LEVEL_DB) - M.MAX_ABS_VALUE
        keep_from = max(0, self.n_emitted * _HOP - _HALF)  # first y index the next frame needs
        if keep_from > self._y0:
            self._y = self._y[keep_from - self._y0:]
            self._y0 = keep_from
        return norm.clamp(-M.MAX_ABS_VALUE, M.MAX_ABS_VALUE).to(torch.float32).numpy()


class StreamingFeatures:
    """Per-frame AVE audio features of a live 16 kHz stream (see the module docstring).

    Args:
        ave: the encoder.
        fps: video frame rate.
        mel_norm: the AVE's mel convention, ``"raw"`` or ``"clip"``.
        mel_stats: ``(mean [80], std [80])`` band statistics; required for ``"clip"``.
        normalize: unit-length embeddings instead of the raw branch output, as
            :func:`~synctalk.audio.features.ave_features`.
        device: where the AVE runs.
    """

    def __init__(self, ave: AVE, fps: float, *, mel_norm: str = "raw",
                 mel_stats: tuple[np.ndarray, np.ndarray] | None = None, normalize: bool = False,
                 device: torch.device | str = "cpu") -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a positive number, got {fps}")
        if mel_norm not in ("raw", "clip"):
            raise InputError(f"unknown mel normalisation {mel_norm!r}")
        if mel_norm == "clip" and mel_stats is None:
            raise InputError("a 'clip'-normalised AVE needs fixed mel_stats to stream (e.g. "
                             "mel_band_stats of the subject's audio): a stream has no whole clip.")
        self.ave, self.fps, self.normalize, self.device = ave, float(fps), normalize, device
        self._stats = None if mel_norm == "raw" else tuple(
            torch.as_tensor(np.asarray(s, np.float32))[:, None] for s in mel_stats)
        self.mel = StreamingMel()
        self._cols = np.zeros((M.N_MELS, 0), np.float32)  # mel frames from index _c0 on
        self._c0 = 0
        self._starts = np.zeros(0, np.int64)
        self.n_emitted = 0

    def _raw_starts(self, n: int) -> np.ndarray:
        """Window starts of frames ``0 … n−1``, clamped at 0 only (the end is not known yet)."""
        if len(self._starts) < n:
            self._starts = M.window_starts(max(n, 2 * len(self._starts), 256), self.fps, 1 << 40)
        return self._starts[:n]

    def push(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Add ``[k]`` samples at 16 kHz; returns ``[j, 512]`` features of the frames completed
        by them (frames ``n_emitted − j … n_emitted − 1``)."""
        self._add(self.mel.push(samples))
        n_mel = self._c0 + self._cols.shape[1]
        count = self.n_emitted
        while self._raw_starts(count + 1)[count] + M.WINDOW_FRAMES <= n_mel:
            count += 1
        return self._features(self._raw_starts(count)[self.n_emitted:count], count)

    def finish(self, n_frames: int | None = None) -> torch.Tensor:
        """End the stream; returns features of frames ``n_emitted … n_frames − 1``, windows
        clamped at the end of the audio as offline.

        Args:
            n_frames: total frames of the video; default: frames whose timestamp lies inside
                the audio, ``⌈n_samples · fps / 16000⌉``.
        """
        self._add(self.mel.finish())
        if n_frames is None:
            rate = Fraction(self.fps).limit_denominator(10_000)
            n_frames = math.ceil(Fraction(self.mel.n_samples) * rate / M.SAMPLE_RATE)
        if n_frames <= self.n_emitted:
            return torch.zeros(0, EMBED_DIM)
        total = self._c0 + self._cols.shape[1]
        starts = M.window_starts(n_frames, self.fps, total)[self.n_emitted:]
        return self._features(starts, n_frames)

    def _add(self, cols: np.ndarray) -> None:
        self._cols = np.concatenate([self._cols, cols], axis=1)

    def _features(self, starts: np.ndarray, count: int) -> torch.Tensor:
        if len(starts) == 0:
            return torch.zeros(0, EMBED_DIM)
        cols = torch.from_numpy(self._cols)
        idx = torch.from_numpy(starts - self._c0)[:, None] + torch.arange(M.WINDOW_FRAMES)
        windows = cols[:, idx].permute(1, 0, 2)  # [j, 80, 16]
        if self._stats is not None:
            windows = (windows - self._stats[0]) / self._stats[1]
        feats = embed_windows(self.ave, windows.unsqueeze(1), normalize=self.normalize,
                              device=self.device)
        self.n_emitted = count
        # First mel frame the next video frame can need: its own window start, or, if the
        # stream ends before that window is complete, the last 16 frames (clamped window).
        n_mel = self._c0 + self._cols.shape[1]
        keep = min(int(self._raw_starts(count + 1)[count]), n_mel - M.WINDOW_FRAMES)
        if keep > self._c0:
            self._cols = self._cols[:, keep - self._c0:]
            self._c0 = keep
        return feats

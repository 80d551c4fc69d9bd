"""Balanced in-sync / off-sync training batches for the AVE, with augmentation.

Each batch holds ``B`` face inputs (frames ``t−2 … t+2`` of an anchor frame ``t``) and ``B``
mel windows: in even rows the window of ``t`` itself (in sync), in odd rows the window of
``t + s`` in the same clip portion, ``min_shift ≤ |s| ≤ max_shift`` frames (off sync;
``min_shift`` defaults to :data:`MIN_SHIFT`). Every face is also compared with the audio of
every other row from the same portion (:attr:`SyncBatch.targets`): those pairs are off sync
too, unless they happen to lie within ``min_shift`` frames of each other (left out). Pairs across clips are left out as well: on a
few speakers they are separable by "which clip" alone, a shortcut that teaches nothing about
sync. So a batch gives ``B/2`` in-sync pairs and up to ``B²`` off-sync pairs for the price of
``B`` embeddings. To make those count on many short clips too, a batch is drawn in groups of
``group_size`` rows from one portion each (a portion is picked with probability proportional
to its number of anchor frames).
All randomness comes from the ``torch.Generator`` passed to :meth:`SyncSampler.batch`, so a
run restarted from a saved generator state draws the same batches.

Augmentation (training only), per sample: colour jitter (brightness, contrast, saturation
each ×[0.95, 1.05]), a translation of the five crops by up to ±1 px (edges repeated), a
cutout (a 12×24 px rectangle of all five crops replaced by the mean crop, half of the
samples), a volume change of ±10 % (−0.9 … +0.8 dB, as a mel offset before normalisation) and
SpecAugment-style masks (up to 12 mel bands and up to 2 mel frames set to their mean).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from synctalk.audio.dataset import ClipPortion, InputSpec, face_inputs, mel_inputs
from synctalk.errors import InputError

#: Smallest audio shift (frames) of a negative pair by default, and of the held-out
#: evaluation's negatives: nearer shifts still partly look in sync (the 200 ms windows overlap).
MIN_SHIFT = 5
#: Colour-jitter range: each factor is drawn from ``[1 − COLOUR, 1 + COLOUR]``. Kept small:
#: after subtracting the clip's mean crop, the lip motion to be learnt is a residual of a few
#: grey levels, which strong photometric jitter (or large shifts) would swamp — on two clips
#: ±20 % jitter and ±4 px shifts delayed learning by several epochs.
COLOUR = 0.05
#: Largest translation of the crops, pixels (x, y).
MAX_TRANSLATE = (1, 1)
#: Volume change range as gain factors.
GAIN = (0.9, 1.1)
#: Widest masks (SpecAugment-style, in normalised units set to 0): mel bands, mel frames.
MEL_MASK = (12, 2)
#: Face cutout: a (H, W) pixel rectangle of the five crops set to the clip's mean crop, applied
#: with this probability.
CUTOUT, CUTOUT_P = (12, 24), 0.5


@dataclass
class SyncBatch:
    """One training batch.

    Attributes:
        faces: ``[B, 15, 48, 96]`` face inputs.
        mels: ``[B, 1, 80, 16]`` mel windows.
        targets: ``[B, B]`` float32: ``targets[i, j]`` is 1 when face ``i`` and audio ``j`` are
            in sync, 0 when they are from the same portion and at least ``min_shift`` frames
            apart, −1 (ignore) otherwise. The diagonal is 1, 0, 1, 0, …
    """

    faces: torch.Tensor
    mels: torch.Tensor
    targets: torch.Tensor


class SyncSampler:
    """Random training batches from clip portions.

    Args:
        portions: training portions (:func:`synctalk.audio.dataset.split_clip`).
        spec: input normalisation.
        max_shift: largest ``|s|`` (frames) of a negative's audio shift.
        min_shift: smallest ``|s|`` of a negative (1 ≤ min_shift ≤ max_shift).
        group_size: rows of a batch drawn from the same portion (even; divides the batch size,
            else the whole batch is one group).
        augment: apply the augmentations listed in the module docstring.
        device: where batches are built.

    Raises:
        InputError: no portion has a usable anchor (too short, or no face).
    """

    def __init__(self, portions: list[ClipPortion], spec: InputSpec, *, max_shift: int = 15,
                 group_size: int = 16, augment: bool = True,
                 device: torch.device | str = "cpu", min_shift: int = MIN_SHIFT) -> None:
        if min_shift < 1:
            raise InputError(f"--min-shift must be ≥ 1, got {min_shift}")
        if max_shift < min_shift:
            raise InputError(f"--max-shift must be ≥ --min-shift ({min_shift}), got {max_shift}")
        self.min_shift = min_shift
        if group_size < 2 or group_size % 2:
            raise InputError(f"--group-size must be an even number ≥ 2, got {group_size}")
        self.portions, self.spec, self.max_shift = portions, spec, max_shift
        self.group_size = group_size
        self.augment, self.device = augment, torch.device(device)
        owners, frames = [], []
        for i, p in enumerate(portions):
            anchors = p.frames_where(p.visual_ok & p.audio_ok & self._has_negative(p))
            owners.append(np.full(len(anchors), i, np.int64))
            frames.append(anchors)
        self.anchor_portion = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        self.anchor_frame = np.concatenate(frames) if frames else np.zeros(0, np.int64)
        # anchors of portion k are anchor_*[first[k] : first[k + 1]]
        self._first = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
        if len(self.anchor_frame) == 0:
            raise InputError("no training window found: every clip is shorter than ~0.5 s of "
                             "tracked face with audio around it, or no face was tracked.")

    def __len__(self) -> int:
        """Number of anchor frames (possible positives)."""
        return len(self.anchor_frame)

    def _has_negative(self, p: ClipPortion) -> np.ndarray:
        """``[n]`` bool: frame ``t`` has a frame ``u`` with ``audio_ok`` and
        ``min_shift ≤ |u − t| ≤ max_shift`` in the portion."""
        ok = np.concatenate([[0], np.cumsum(p.audio_ok, dtype=np.int64)])  # ok[i] = Σ audio_ok[:i]
        n, t = len(p.audio_ok), np.arange(len(p.audio_ok))

        def count(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # Σ audio_ok[a … b], clipped
            a, b = np.clip(a, 0, n), np.clip(b + 1, 0, n)
            return np.where(b > a, ok[b] - ok[np.minimum(a, b)], 0)

        before = count(t - self.max_shift, t - self.min_shift)
        return before + count(t + self.min_shift, t + self.max_shift) > 0

    def _negative(self, p: ClipPortion, t: int, g: torch.Generator) -> int:
        """A random frame ``u`` of ``p`` with ``audio_ok`` and ``min_shift ≤ |u − t| ≤ max_shift``."""
        lo, hi = max(p.lo, t - self.max_shift), min(p.hi, t + self.max_shift + 1)
        candidates = np.arange(lo, hi)
        far = np.abs(candidates - t) >= self.min_shift
        candidates = candidates[p.audio_ok[lo - p.lo:hi - p.lo] & far]
        return int(candidates[int(torch.randint(len(candidates), (1,), generator=g))])

    def batch(self, batch_size: int, g: torch.Generator) -> SyncBatch:
        """Draw one batch of ``batch_size`` rows (even, ≥ 2) on the sampler's device."""
        if batch_size < 2 or batch_size % 2:
            raise InputError(f"--batch-size must be an even number ≥ 2, got {batch_size}")
        group = self.group_size if batch_size % self.group_size == 0 else batch_size
        pick = []
        for a in torch.randint(len(self), (batch_size // group,), generator=g).tolist():
            k = self.anchor_portion[a]
            lo, hi = int(self._first[k]), int(self._first[k + 1])
            pick.append(lo + torch.randint(hi - lo, (group,), generator=g).numpy())
        pick = np.concatenate(pick)
        in_sync = np.arange(batch_size) % 2 == 0
        owner, face_frame = self.anchor_portion[pick], self.anchor_frame[pick]
        audio = face_frame.copy()
        for i in np.flatnonzero(~in_sync):
            audio[i] = self._negative(self.portions[owner[i]], int(face_frame[i]), g)
        if self.augment:
            colour = 1.0 + COLOUR * (2.0 * torch.rand(batch_size, 3, generator=g) - 1.0)
            shift = torch.stack([torch.randint(-m, m + 1, (batch_size,), generator=g)
                                 for m in MAX_TRANSLATE], dim=1)
            lo, hi = (20.0 * math.log10(x) for x in GAIN)
            gain_db = lo + (hi - lo) * torch.rand(batch_size, generator=g)
        faces = torch.empty(batch_size, 15, 48, 96, device=self.device)
        mels = torch.empty(batch_size, 1, 80, 16, device=self.device)
        for k in np.unique(owner):
            rows = np.flatnonzero(owner == k)
            p, idx = self.portions[k], torch.from_numpy(rows)
            faces[idx.to(self.device)] = face_inputs(
                p, face_frame[rows], self.spec, self.device,
                colour=colour[idx] if self.augment else None)
            mels[idx.to(self.device)] = mel_inputs(
                p, audio[rows], self.spec, self.device,
                gain_db=gain_db[idx] if self.augment else None)
        if self.augment:
            faces = cutout(translate(faces, shift.to(self.device)), g)
            mels = mask_mel(mels, g)
        same = owner[:, None] == owner[None, :]
        gap = np.abs(face_frame[:, None] - audio[None, :])
        targets = np.where(~same | (gap < self.min_shift), -1.0, 0.0)
        targets[same & (gap == 0)] = 1.0
        return SyncBatch(faces, mels, torch.from_numpy(targets).float().to(self.device))


def mask_mel(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Zero one random run of up to ``MEL_MASK[0]`` bands and one of up to ``MEL_MASK[1]``
    frames in each ``[B, 1, 80, 16]`` normalised mel window (zero = the band's mean)."""
    out = x.clone()
    for axis, (widest, size) in enumerate(zip(MEL_MASK, x.shape[-2:])):
        width = torch.randint(widest + 1, (len(x),), generator=g)
        start = (torch.rand(len(x), generator=g) * (size - width + 1)).long()
        pos = torch.arange(size)
        hit = (pos >= start[:, None]) & (pos < (start + width)[:, None])  # [B, size]
        hit = hit[:, None, :, None] if axis == 0 else hit[:, None, None, :]
        out = out.masked_fill(hit.to(x.device), 0.0)
    return out


def cutout(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """With probability ``CUTOUT_P`` per sample, zero a random ``CUTOUT`` rectangle of all
    channels of ``x`` ``[B, 15, 48, 96]`` (normalised crops: zero = the clip's mean crop)."""
    (ch, cw), (h, w) = CUTOUT, x.shape[-2:]
    apply = torch.rand(len(x), generator=g) < CUTOUT_P
    top = torch.randint(h - ch + 1, (len(x),), generator=g)
    left = torch.randint(w - cw + 1, (len(x),), generator=g)
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (((rows >= top[:, None]) & (rows < (top + ch)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + cw)[:, None]))[:, None, :])
    return x.masked_fill((inside & apply[:, None, None])[:, None].to(x.device), 0.0)


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image of ``x`` ``[B, C, H, W]`` by whole pixels ``shift`` ``[B, 2]`` (dx, dy),
    repeating edge pixels into the uncovered border."""
    mx, my = (int(shift[:, k].abs().max()) for k in range(2))
    if mx == 0 and my == 0:
        return x
    padded = F.pad(x, (mx, mx, my, my), mode="replicate")
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i, (dx, dy) in enumerate(shift.tolist()):
        out[i] = padded[i, :, my - dy:my - dy + h, mx - dx:mx - dx + w]
    return out

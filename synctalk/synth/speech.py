"""Speech for the synthetic head and the mouth motion it drives.

Mouth targets come from phone labels when they exist (per-phone opening/width targets,
smoothed with a ~20 ms Gaussian for coarticulation) and otherwise from the 40 ms RMS
envelope of the audio. Times are seconds; audio is 16 kHz mono float32.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from synctalk.errors import InputError, require_file
from synctalk.media import read_audio
from synctalk.synth.face import ASSETS

SR = 16000
#: Rate (Hz) at which mouth trajectories are built before sampling at video frames.
TRACK_HZ = 200.0

#: Default speech: (wav, phone labels or None), in order. Public domain / CMU ARCTIC licence,
#: see synctalk/synth/assets/README.md.
DEFAULT_SPEECH = [
    ("arctic_a0009.wav", "arctic_a0009_phone.lab"),
    ("sense_and_sensibility_01_austen_64kb-0870.wav", None),
    ("sense_and_sensibility_01_austen_64kb-0880.wav", None),
    ("sense_and_sensibility_01_austen_64kb-0890.wav", None),
    ("sense_and_sensibility_01_austen_64kb-0920.wav", None),
]
#: Held out of the default synth speech: novel audio for rendering in the demo.
NOVEL_SPEECH = "sense_and_sensibility_01_austen_64kb-0930.wav"
PAUSE_S = 0.35

#: ARPAbet phone → (mouth opening 0..1, lip width factor). Vowels open by height;
#: rounded vowels and /w/ narrow the lips; bilabials close them; /s/-like sounds widen.
VISEMES: dict[str, tuple[float, float]] = {
    "aa": (1.00, 1.00), "ae": (0.80, 1.08), "ah": (0.70, 1.00), "ao": (0.85, 0.85),
    "aw": (0.85, 0.85), "ay": (0.85, 1.02), "eh": (0.60, 1.06), "er": (0.40, 0.88),
    "ey": (0.50, 1.08), "ih": (0.40, 1.05), "iy": (0.28, 1.12), "ow": (0.65, 0.78),
    "oy": (0.65, 0.82), "uh": (0.40, 0.85), "uw": (0.30, 0.72), "ax": (0.50, 1.00),
    "p": (0.0, 0.97), "b": (0.0, 0.97), "m": (0.0, 0.98), "f": (0.10, 1.0), "v": (0.10, 1.0),
    "th": (0.20, 1.0), "dh": (0.20, 1.0), "s": (0.15, 1.10), "z": (0.15, 1.10),
    "sh": (0.25, 0.85), "zh": (0.25, 0.85), "ch": (0.25, 0.85), "jh": (0.25, 0.85),
    "t": (0.22, 1.02), "d": (0.22, 1.02), "n": (0.20, 1.02), "l": (0.30, 1.0),
    "k": (0.30, 1.0), "g": (0.30, 1.0), "ng": (0.25, 1.0), "hh": (0.45, 1.0),
    "r": (0.30, 0.85), "w": (0.18, 0.72), "y": (0.28, 1.05),
}
SILENCE = ("sil", "pau", "sp", "h#", "")


@dataclass
class Speech:
    """Audio plus optional phone labels on the same timeline.

    Attributes:
        audio: ``[n]`` float32, 16 kHz mono.
        phones: ``(start_s, end_s, phone)`` tuples (ARPAbet, lower case); may be empty.
        labelled: ``(start_s, end_s)`` spans covered by phone labels; the mouth is driven by
            the audio envelope outside them.
    """

    audio: np.ndarray
    phones: list[tuple[float, float, str]] = field(default_factory=list)
    labelled: list[tuple[float, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


def read_phone_labels(path) -> list[tuple[float, float, str]]:
    """Parse phone timings: HTS labels (``start end label`` in 100 ns units, full-context
    or plain) or ``start end phone`` in seconds (one per line)."""
    path = require_file(path, "phone label file")
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            a, b = float(parts[0]), float(parts[1])
        except ValueError:
            raise InputError(f"{path}: expected 'start end phone' lines, got {line!r}") from None
        label = parts[2]
        m = re.search(r"-([^+]+)\+", label)  # HTS full context: a^b-PHONE+c=d...
        rows.append((a, b, (m.group(1) if m else label).lower()))
    if not rows:
        raise InputError(f"{path} holds no phone labels.")
    if max(r[1] for r in rows) > 1e4:  # HTS 100 ns units
        rows = [(a * 1e-7, b * 1e-7, p) for a, b, p in rows]
    return rows


def load_speech(audio=None, phones=None, seconds: float | None = None) -> Speech:
    """The speech to animate: a user's file (with optional phone labels) or the default
    recordings joined by short pauses; looped and trimmed to ``seconds`` when given."""
    if audio is not None:
        pieces = [(read_audio(audio, SR), read_phone_labels(phones) if phones else [])]
    else:
        pieces = [(read_audio(ASSETS / wav, SR), read_phone_labels(ASSETS / lab) if lab else [])
                  for wav, lab in DEFAULT_SPEECH]
    pause = np.zeros(int(PAUSE_S * SR), np.float32)
    chunks, all_phones, labelled, t = [], [], [], 0.0
    while True:
        for x, ph in pieces:
            chunks += [x, pause]
            all_phones += [(t + a, t + b, p) for a, b, p in ph]
            if ph:
                labelled.append((t, t + len(x) / SR))
            t += (len(x) + len(pause)) / SR
        if seconds is None or t >= seconds:
            break
    audio_all = np.concatenate(chunks[:-1] if seconds is None else chunks)
    if seconds is not None:
        n = int(round(seconds * SR))
        audio_all = audio_all[:n]
        all_phones = [(a, min(b, seconds), p) for a, b, p in all_phones if a < seconds]
        labelled = [(a, min(b, seconds)) for a, b in labelled if a < seconds]
    return Speech(audio_all.astype(np.float32), all_phones, labelled)


def mouth_tracks(speech: Speech, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mouth opening (0..1) and lip-width factor (≈0.7..1.15) per video frame.

    Returns:
        ``(opening [n_frames], width [n_frames])`` float64; frame ``i`` is at ``i / fps`` s.
    """
    n = int(np.ceil(speech.seconds * TRACK_HZ)) + 1
    t = np.arange(n) / TRACK_HZ
    opening, width = _envelope_targets(speech.audio, t)
    for a, b in speech.labelled:
        sel = (t >= a) & (t < b)
        opening[sel], width[sel] = 0.0, 1.0
    for a, b, p in speech.phones:
        if p in SILENCE:
            continue
        o, w = VISEMES.get(p, (0.35, 1.0))
        sel = (t >= a) & (t < b)
        opening[sel], width[sel] = o, w
    sigma = 0.020 * TRACK_HZ  # 20 ms coarticulation
    opening = np.clip(gaussian_filter1d(opening, sigma), 0.0, 1.0)
    width = gaussian_filter1d(width, sigma)
    tf = np.arange(n_frames) / fps
    return np.interp(tf, t, opening), np.interp(tf, t, width)


def _envelope_targets(audio: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Opening from the 40 ms RMS envelope (dB, normalised between the noise floor and the
    loud end of the clip); width from the share of energy above 3 kHz (sibilance)."""
    win = int(0.040 * SR)
    centers = np.clip((t * SR).astype(int), 0, len(audio) - 1)
    pad = np.pad(audio.astype(np.float64), (win // 2, win - win // 2))
    frames = np.lib.stride_tricks.sliding_window_view(pad, win)[centers]
    rms_db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)
    loud = np.percentile(rms_db, 97)
    floor = max(np.percentile(rms_db, 10) + 6.0, loud - 40.0)
    opening = np.clip((rms_db - floor) / max(loud - floor, 1e-3), 0.0, 1.0) ** 1.3
    spec = np.abs(np.fft.rfft(frames * np.hanning(win), axis=1)) ** 2
    freqs = np.fft.rfftfreq(win, 1.0 / SR)
    hf = spec[:, freqs > 3000].sum(1) / (spec.sum(1) + 1e-12)
    width = np.where(opening > 0, 1.0 + 0.25 * (hf - 0.3), 1.0)
    return opening, np.clip(width, 0.85, 1.15)

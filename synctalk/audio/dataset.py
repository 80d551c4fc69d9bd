"""Lip-sync data for the AVE: per-frame mouth crops and the mel spectrogram of a clip.

A *clip* is a talking-head video (any fps) or a prepared subject directory (``frames/``,
``track.npz``, ``audio.wav``, ``manifest.json``; see :mod:`data_prep.subject`). From it:

* **mouth crops** ``[N, 48, 96, 3]`` uint8 RGB, one per video frame: a square box around the
  MediaPipe face oval (centre of the oval's bounding box, side = its larger extent), smoothed
  over :data:`BOX_SMOOTH_FRAMES` frames, of which the lower half (box centre → chin) is
  resized to 48×96 (H×W) — the region Wav2Lip's expert sees;
* **valid** ``[N]`` bool: a face was tracked in that frame (subject dirs: ``track.npz``'s
  ``valid``; videos: MediaPipe detected it);
* **mel** ``[80, T]`` float32 (:func:`synctalk.audio.mel.audio_to_mel`, 80 frames/s), audio
  sample 0 heard with video frame 0.

Both are cached (:func:`load_clip`) under a key derived from the source's sha256, so repeated
training runs neither re-decode nor re-track.

Per-clip normalisation (:class:`InputSpec` ``"clip"``, what :mod:`synctalk.audio.train`
trains with): crops in [0, 1] minus the clip's mean crop, divided by the std of that residual
(one scalar); each mel band minus its mean over the clip, divided by its std. On a few
speakers this stops the network from learning "which speaker" instead of "in sync". A
*portion* (training part, held-out part, a clip being scored) is normalised with its own
statistics (:class:`ClipPortion`).

Sample layout (the AVE's input, :mod:`synctalk.audio.ave`): the face input of frame ``t`` is
frames ``t−2 … t+2`` stacked channel-wise ``[15, 48, 96]`` (frame-major, RGB); the audio
input is the centred mel window :func:`synctalk.audio.mel.frame_windows` gives frame ``t``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from synctalk.audio import mel as M
from synctalk.audio.ave import FACE_CROP, FACE_FRAMES
from synctalk.errors import InputError, require_file
from synctalk.fsutil import atomic_dir, sha256_file

log = logging.getLogger(__name__)

#: Bump when crops, boxes or the cache layout change: old cache entries are then ignored.
CACHE_VERSION = 1
#: MediaPipe face-mesh face-oval landmark indices (``FACEMESH_FACE_OVAL``).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
#: Frames in the centred moving average applied to face boxes (odd).
BOX_SMOOTH_FRAMES = 5
#: Frames each side of the centre frame in a face input (``t−2 … t+2``).
HALF_SPAN = FACE_FRAMES // 2
#: Mel frames of STFT support each side of a mel frame's centre (±25 ms = 2 × 12.5 ms).
STFT_HALF_SUPPORT = 2
#: Video file suffixes :func:`find_clips` picks up in folders.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
#: Rec. 601 luma weights (R, G, B), for colour jitter.
_LUMA = torch.tensor([0.299, 0.587, 0.114])
#: Input conventions of AVEs that were not trained here (imported Wav2Lip/SyncTalk experts).
IMPORTED_INPUTS = {"face": "bgr", "mel": "raw"}


@dataclass(frozen=True)
class InputSpec:
    """How an AVE expects its inputs; stored in the AVE file's ``meta["inputs"]``.

    Attributes:
        face: ``"clip"``: RGB in [0, 1] minus the portion's mean crop, divided by its residual
            std (trained here); ``"bgr"``: BGR in [0, 1], un-normalised (Wav2Lip's expert).
        mel: ``"clip"``: each band standardised over the portion; ``"raw"``: mel.py's values.
    """

    face: str = "clip"
    mel: str = "clip"

    def __post_init__(self) -> None:
        if self.face not in ("clip", "bgr") or self.mel not in ("clip", "raw"):
            raise ValueError(f"unknown AVE input convention face={self.face!r} mel={self.mel!r}")

    @classmethod
    def from_meta(cls, meta: dict) -> "InputSpec":
        """The spec recorded in an AVE file's meta; files without one are imported experts."""
        inputs = meta.get("inputs") or IMPORTED_INPUTS
        return cls(face=inputs.get("face", "bgr"), mel=inputs.get("mel", "raw"))

    def to_meta(self) -> dict:
        return {"face": self.face, "mel": self.mel}


@dataclass
class MouthClip:
    """One clip's lip-sync data.

    Attributes:
        name: label for messages and logs (``folder/file`` of a video, a subject's name).
        fps: video frame rate.
        crops: ``[N, 48, 96, 3]`` uint8 RGB mouth crops (may be a read-only memory map).
        valid: ``[N]`` bool, a face was tracked in the frame.
        mel: ``[80, T]`` float32 log-mel (mel.py scale, not normalised), 80 frames per second.
        key: cache key (hex); identifies the source data and the crop procedure.
    """

    name: str
    fps: float
    crops: np.ndarray
    valid: np.ndarray
    mel: np.ndarray
    key: str

    @property
    def n_frames(self) -> int:
        return int(self.crops.shape[0])


# ---------------------------------------------------------------- crops from landmarks

def face_boxes(landmarks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Square face boxes from face-mesh landmarks, filled across gaps and smoothed.

    Args:
        landmarks: ``[N, 478, ≥2]`` pixel coordinates (x right, y down); rows of invalid
            frames are ignored (may be NaN).
        valid: ``[N]`` bool.

    Returns:
        ``[N, 3]`` float64 ``(cx, cy, side)`` in pixels: centre and side of the square around
        the face oval; invalid frames take values interpolated linearly from the nearest valid
        ones (held constant beyond the first/last); then a centred moving average over
        :data:`BOX_SMOOTH_FRAMES` frames (edges replicated).

    Raises:
        InputError: no frame is valid.
    """
    valid = np.asarray(valid, dtype=bool)
    good = np.flatnonzero(valid)
    if good.size == 0:
        raise InputError("no face was found in any frame — use a video that shows one face, "
                         "frontal enough for MediaPipe to track.")
    oval = np.asarray(landmarks, dtype=np.float64)[:, FACE_OVAL, :2]  # [N, 36, 2]
    lo, hi = oval.min(axis=1), oval.max(axis=1)
    boxes = np.concatenate([(lo + hi) / 2.0, (hi - lo).max(axis=1, keepdims=True)], axis=1)
    frames = np.arange(len(valid))
    boxes = np.stack([np.interp(frames, good, boxes[good, k]) for k in range(3)], axis=1)
    half = BOX_SMOOTH_FRAMES // 2
    padded = np.concatenate([boxes[:1].repeat(half, 0), boxes, boxes[-1:].repeat(half, 0)])
    kernel = np.full(BOX_SMOOTH_FRAMES, 1.0 / BOX_SMOOTH_FRAMES)
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=1)


def mouth_crop(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The lower half of a square face box, resized to 48×96.

    Args:
        rgb: ``[H, W, 3]`` uint8 frame.
        box: ``(cx, cy, side)`` pixels (:func:`face_boxes`).

    Returns:
        ``[48, 96, 3]`` uint8: rows ``cy … cy + side/2``, columns ``cx ± side/2`` (rounded to
        whole pixels; parts outside the frame repeat the edge), area-averaged.
    """
    import cv2

    cx, cy, side = (float(v) for v in box)
    s = max(2, int(round(side)))
    x0, y0 = int(round(cx - s / 2.0)), int(round(cy))
    h, w = rgb.shape[:2]
    pad = (max(0, -y0), max(0, y0 + s // 2 - h), max(0, -x0), max(0, x0 + s - w))
    region = rgb[max(0, y0):min(h, y0 + s // 2), max(0, x0):min(w, x0 + s)]
    if region.size == 0:  # the box lies wholly outside the frame
        region = rgb[min(max(y0, 0), h - 1):min(max(y0, 0), h - 1) + 1,
                     min(max(x0, 0), w - 1):min(max(x0, 0), w - 1) + 1]
        pad = (0, 0, 0, 0)
    if any(pad):
        region = cv2.copyMakeBorder(region, *pad, cv2.BORDER_REPLICATE)
    crop_h, crop_w = FACE_CROP
    return cv2.resize(np.ascontiguousarray(region), (crop_w, crop_h), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- sources

def is_subject_dir(path) -> bool:
    """True when ``path`` is a prepared subject directory (has ``manifest.json``)."""
    from data_prep.subject import MANIFEST

    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def find_clips(paths) -> list[Path]:
    """Expand training inputs into clips: video files, subject directories, and folders
    searched recursively for both (sorted, e.g. an LRS2-style ``root/<speaker>/<clip>.mp4``).

    Raises:
        InputError: a path is missing, or nothing usable was found.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"training input not found: {p} — check the path.")
        if p.is_file() or is_subject_dir(p):
            found.append(p)
            continue
        subjects = sorted(m.parent for m in p.rglob("manifest.json") if is_subject_dir(m.parent))
        videos = sorted(f for f in p.rglob("*")
                        if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file()
                        and not any(s in f.parents for s in subjects))
        found += subjects + videos
    if not found:
        raise InputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) or subject directories found "
                         f"in {', '.join(map(str, paths))}.")
    return found


def subject_info(subject) -> tuple[int, float]:
    """``(n_frames, fps)`` of a subject directory: frames in ``frames/`` (else ``track.npz``)
    and the ingest step's fps from ``manifest.json``.

    Raises:
        InputError: not a subject directory, or the manifest records no fps.
    """
    from data_prep.subject import Manifest

    subject = Path(subject)
    manifest = Manifest.load(subject) if subject.is_dir() else None
    if manifest is None:
        raise InputError(f"{subject} is not a subject directory (no manifest.json) — "
                         "run `synctalk prep` on the video first.")
    fps = ((manifest.step("ingest") or {}).get("info") or {}).get("fps")
    if not (isinstance(fps, (int, float)) and fps > 0):
        raise InputError(f"{subject}/manifest.json records no ingest fps — "
                         "re-run `synctalk prep`.")
    frames = list((subject / "frames").glob("*.jpg"))
    if frames:
        return len(frames), float(fps)
    track = subject / "track.npz"
    if not track.is_file():
        raise InputError(f"{subject} has neither frames/ nor track.npz — re-run `synctalk prep`.")
    with np.load(track) as z:
        return int(z["landmarks"].shape[0]), float(fps)


def video_audio(path) -> np.ndarray:
    """A video's audio track at 16 kHz mono, aligned so that sample 0 is heard with frame 0.

    A stream that starts later than the other (e.g. video at 0.08 s, audio at 0) is
    compensated as in prep's ingest: leading audio before the first video frame is dropped,
    or silence is prepended when the audio starts after it.

    Returns:
        ``[n]`` float32.
    """
    from data_prep.ingest import align_audio, probe_video
    from synctalk.media import read_audio

    probe = probe_video(path)
    audio = read_audio(path, M.SAMPLE_RATE)
    offset = probe["audio"]["start_s"] - probe["video"]["start_s"]
    n = len(audio) + max(0, int(round(offset * M.SAMPLE_RATE)))
    return align_audio(audio, offset, n, M.SAMPLE_RATE)


def _video_clip(path: Path, face_landmarker) -> dict[str, np.ndarray | float]:
    import imageio.v2 as imageio

    from data_prep.face_tracking import track_video
    from synctalk.models import resolve_face_landmarker

    audio = video_audio(path)  # first: fails fast on a file without usable audio
    mel = M.melspectrogram(audio).numpy()
    track = track_video(path, resolve_face_landmarker(face_landmarker))
    if not track.detected.any():
        raise InputError(f"no face was found in any frame of {path} — the AVE needs a video "
                         "of one talking face.")
    boxes = face_boxes(track.landmarks, track.detected)
    reader = imageio.get_reader(str(path), "ffmpeg")
    try:
        crops = [mouth_crop(frame, boxes[i]) for i, frame in zip(range(len(boxes)), reader)]
    finally:
        reader.close()
    n = len(crops)
    return {"crops": np.stack(crops), "valid": track.detected[:n], "mel": mel, "fps": track.fps}


def _subject_clip(subject: Path) -> dict[str, np.ndarray | float]:
    import cv2

    from synctalk.media import read_audio

    n, fps = subject_info(subject)
    with np.load(subject / "track.npz") as z:
        landmarks, valid = z["landmarks"], z["valid"].astype(bool)
    if len(valid) != n:
        raise InputError(f"{subject}: track.npz has {len(valid)} frames but frames/ has {n} — "
                         "re-run `synctalk prep`.")
    boxes = face_boxes(landmarks, valid)
    crops = []
    for i in range(n):
        bgr = cv2.imread(str(subject / "frames" / f"{i:06d}.jpg"))
        if bgr is None:
            raise InputError(f"cannot read {subject}/frames/{i:06d}.jpg — "
                             "re-run `synctalk prep`.")
        crops.append(mouth_crop(bgr[..., ::-1], boxes[i]))
    mel = M.melspectrogram(read_audio(subject / "audio.wav", M.SAMPLE_RATE)).numpy()
    return {"crops": np.stack(crops), "valid": valid, "mel": mel, "fps": fps}


def clip_key(path) -> str:
    """Cache key of a clip: sha256 of :data:`CACHE_VERSION` and the source's content
    (a video's bytes; a subject's ``track.npz``, ``audio.wav`` and frame count/fps)."""
    path = Path(path)
    h = hashlib.sha256(f"synctalk-mouth-clip/{CACHE_VERSION}\n".encode())
    if path.is_dir():
        n, fps = subject_info(path)
        for name in ("track.npz", "audio.wav"):
            if not (path / name).is_file():
                raise InputError(f"{path} has no {name} — re-run `synctalk prep`.")
            h.update(f"{name}:{sha256_file(path / name)}\n".encode())
        h.update(f"frames:{n}:{fps!r}".encode())
    else:
        h.update(f"video:{sha256_file(require_file(path, 'video file'))}".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``<synctalk cache>/ave_clips`` (see :func:`synctalk.models.cache_dir`)."""
    from synctalk.models import cache_dir

    return cache_dir() / "ave_clips"


def load_clip(path, *, cache_dir=None, face_landmarker=None) -> MouthClip:
    """Mouth crops and mel of a video or subject directory, from the cache when present.

    The cache entry is ``<cache_dir>/<key>/`` (:func:`clip_key`) holding ``crops.npy``
    ``[N,48,96,3]`` uint8, ``valid.npy`` ``[N]`` bool, ``mel.npy`` ``[80,T]`` float32 and
    ``clip.json`` (fps, frame count, source); written atomically, read with memory mapping.

    Args:
        path: video file (decoded at its own fps; audio aligned with :func:`video_audio`;
            faces tracked with MediaPipe) or subject directory.
        cache_dir: default :func:`default_cache_dir`; created if missing.
        face_landmarker: ``face_landmarker.task`` for videos; None resolves it
            (:func:`synctalk.models.resolve_face_landmarker`) only when tracking is needed.

    Raises:
        InputError: missing/unsupported input, no face found. MediaError: undecodable media.
    """
    path = Path(path)
    if not is_subject_dir(path):
        if path.is_dir():
            raise InputError(f"{path} is a directory but not a subject directory (no "
                             "manifest.json); pass a video file or a prepared subject.")
        require_file(path, "video file")
    key = clip_key(path)
    entry = Path(cache_dir or default_cache_dir()) / key
    if not (entry / "clip.json").is_file():
        log.info("ave: preparing mouth crops of %s (cached under %s)", path, entry)
        data = _subject_clip(path) if path.is_dir() else _video_clip(path, face_landmarker)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(entry) as tmp:
            for name in ("crops", "valid", "mel"):
                np.save(tmp / f"{name}.npy", data[name])
            info = {"version": CACHE_VERSION, "source": str(path.resolve()), "fps": data["fps"],
                    "n_frames": int(len(data["crops"]))}
            (tmp / "clip.json").write_text(json.dumps(info, indent=2) + "\n")
    info = json.loads((entry / "clip.json").read_text())
    name = path.name if path.is_dir() else f"{path.parent.name}/{path.name}"
    return MouthClip(name=name, fps=float(info["fps"]),
                     crops=np.load(entry / "crops.npy", mmap_mode="r"),
                     valid=np.load(entry / "valid.npy"), mel=np.load(entry / "mel.npy"), key=key)


def _prepare(path: Path, cache_dir: Path, face_landmarker) -> str | None:
    """Build one cache entry (worker process); returns an error message instead of raising."""
    from synctalk.errors import SyncTalkError

    try:
        load_clip(path, cache_dir=cache_dir, face_landmarker=face_landmarker)
    except SyncTalkError as e:
        return str(e)
    return None


def load_clips(paths, *, cache_dir=None, face_landmarker=None, workers: int = 1,
               progress: bool = True) -> list[MouthClip]:
    """:func:`load_clip` for many inputs, preparing uncached ones in ``workers`` processes.

    A clip that cannot be used (no face, no audio, undecodable) is skipped with a warning, so
    one bad file does not stop training on a large folder.

    Raises:
        InputError: no clip could be loaded (the message gives the first reason).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from synctalk.errors import SyncTalkError
    from synctalk.models import resolve_face_landmarker

    paths = [Path(p) for p in paths]
    cache = Path(cache_dir or default_cache_dir())
    errors: dict[Path, str] = {}
    todo = []
    for p in paths:
        try:
            if not (cache / clip_key(p) / "clip.json").is_file():
                todo.append(p)
        except SyncTalkError as e:
            errors[p] = str(e)
    if any(not is_subject_dir(p) for p in todo):
        face_landmarker = resolve_face_landmarker(face_landmarker)
    if workers > 1 and len(todo) > 1:
        cache.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(workers) as ex:
            jobs = ex.map(_prepare, todo, [cache] * len(todo), [face_landmarker] * len(todo))
            for p, err in zip(todo, tqdm(jobs, total=len(todo), disable=not progress,
                                         desc="mouth crops", unit="clip")):
                if err is not None:
                    errors[p] = err
    clips = []
    for p in tqdm(paths, disable=not progress or len(paths) < 2, desc="clips", unit="clip"):
        if p in errors:
            continue
        try:
            clips.append(load_clip(p, cache_dir=cache, face_landmarker=face_landmarker))
        except SyncTalkError as e:
            errors[p] = str(e)
    for p, err in errors.items():
        log.warning("ave: skipping %s: %s", p, err)
    if not clips:
        first = next(iter(errors.values()), "no inputs")
        raise InputError(f"none of the {len(paths)} inputs could be used: {first}")
    return clips


# ---------------------------------------------------------------- portions and normalisation

def genuine_windows(n_frames: int, fps: float, n_mel: int) -> np.ndarray:
    """``[n_frames]`` bool: frame ``t``'s centred mel window lies wholly inside the audio
    (not clamped at the start or end as :func:`synctalk.audio.mel.window_starts` does)."""
    t = np.arange(n_frames)
    rate = Fraction(fps).limit_denominator(10_000)
    after_start = t * M.WINDOW_LEAD_S.denominator * rate.denominator >= \
        M.WINDOW_LEAD_S.numerator * rate.numerator  # t/fps ≥ 0.08 s
    starts = M.window_starts(n_frames, fps, max(n_mel, M.WINDOW_FRAMES))
    return after_start & (starts + M.WINDOW_FRAMES <= n_mel)


def mel_band_stats(mel: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every mel band over the columns of ``mel`` ``[80, T]``.

    Returns:
        ``(mean, std)``, each ``[80]`` float32; std is at least 1e-3 (silent bands).
    """
    cols = np.asarray(mel.cpu() if isinstance(mel, torch.Tensor) else mel, dtype=np.float64)
    return (cols.mean(axis=1).astype(np.float32),
            np.maximum(cols.std(axis=1), 1e-3).astype(np.float32))


@dataclass
class ClipPortion:
    """Frames ``lo … hi−1`` of a clip, normalised with their own statistics.

    Attributes:
        clip: the clip.
        lo, hi: frame range.
        visual_ok: ``[n]`` bool (index ``t − lo``): frames ``t−2 … t+2`` are all in the
            portion and valid.
        audio_ok: ``[n]`` bool: frame ``t``'s mel window, with its STFT support, lies in the
            portion's own audio (``lo/fps … hi/fps``), so two adjacent portions share no audio.
        face_mean: ``[48, 96, 3]`` float32 mean crop (values in [0, 1]) over the valid frames.
        face_std: scalar std of crops minus the mean crop.
        mel_mean, mel_std: ``[80]`` float32 band statistics over the portion's mel frames.
    """

    clip: MouthClip
    lo: int
    hi: int
    visual_ok: np.ndarray
    audio_ok: np.ndarray
    face_mean: np.ndarray
    face_std: float
    mel_mean: np.ndarray
    mel_std: np.ndarray

    @classmethod
    def of(cls, clip: MouthClip, lo: int = 0, hi: int | None = None) -> "ClipPortion":
        hi = clip.n_frames if hi is None else hi
        if not 0 <= lo < hi <= clip.n_frames:
            raise ValueError(f"bad frame range {lo}…{hi} of a {clip.n_frames}-frame clip")
        frames = np.arange(lo, hi)
        valid = clip.valid[lo:hi].astype(bool)
        near = np.ones(hi - lo, bool)
        for d in range(-HALF_SPAN, HALF_SPAN + 1):
            inside = (frames + d >= lo) & (frames + d < hi)
            near &= inside & valid[np.clip(frames + d - lo, 0, hi - lo - 1)]
        n_mel = clip.mel.shape[1]
        col_lo = math.ceil(lo * M.MEL_FPS / clip.fps) + STFT_HALF_SUPPORT
        col_hi = math.floor(hi * M.MEL_FPS / clip.fps) - STFT_HALF_SUPPORT
        starts = M.window_starts(clip.n_frames, clip.fps, max(n_mel, M.WINDOW_FRAMES))[lo:hi]
        audio_ok = (genuine_windows(clip.n_frames, clip.fps, n_mel)[lo:hi]
                    & (starts >= col_lo) & (starts + M.WINDOW_FRAMES <= col_hi))
        if not valid.any():
            raise InputError(f"{clip.name}: no tracked face in frames {lo}…{hi - 1}.")
        crops = np.asarray(clip.crops[lo:hi][valid], dtype=np.float32) / 255.0
        face_mean = crops.mean(axis=0)
        face_std = float(max((crops - face_mean).std(), 1e-3))
        cols = slice(max(0, col_lo), max(col_lo + 1, min(col_hi, n_mel)))
        mel_mean, mel_std = mel_band_stats(clip.mel[:, cols])
        return cls(clip, lo, hi, near, audio_ok, face_mean, face_std, mel_mean, mel_std)

    def frames_where(self, mask: np.ndarray) -> np.ndarray:
        """Clip frame indices ``t`` (int64) where ``mask[t − lo]``."""
        return np.flatnonzero(mask).astype(np.int64) + self.lo


def split_clip(clip: MouthClip, val_fraction: float) -> tuple[ClipPortion, ClipPortion | None]:
    """``(train, held_out)``: the first ``1 − val_fraction`` of the frames and the last part.

    The split frame is ``v = round(N · (1 − val_fraction))``; with ``val_fraction == 0`` there
    is no held-out part. Training windows never see held-out frames or audio (see
    :class:`ClipPortion`'s ``audio_ok``).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    v = int(round(clip.n_frames * (1.0 - val_fraction)))
    if val_fraction == 0 or v >= clip.n_frames:
        return ClipPortion.of(clip), None
    return ClipPortion.of(clip, 0, v), ClipPortion.of(clip, v, clip.n_frames)


# ---------------------------------------------------------------- model inputs

def face_inputs(portion: ClipPortion, centres: np.ndarray, spec: InputSpec,
                device: torch.device | str = "cpu",
                colour: torch.Tensor | None = None) -> torch.Tensor:
    """Face inputs of the frames ``centres`` (clip indices, each with ``visual_ok``).

    Args:
        colour: optional ``[B, 3]`` colour-jitter factors (brightness, contrast, saturation;
            1 = unchanged) applied to the RGB crops in [0, 1] before normalisation: ``x·b``,
            then contrast about the sample's mean grey level, then saturation about each
            pixel's grey level, clipped to [0, 1].

    Returns:
        ``[B, 15, 48, 96]`` float32: frames ``t−2 … t+2`` normalised per ``spec.face``.
    """
    crops = portion.clip.crops
    stack = np.stack([np.asarray(crops[t - HALF_SPAN:t + HALF_SPAN + 1]) for t in centres])
    x = torch.from_numpy(stack).to(device).float().div_(255.0)  # [B, 5, 48, 96, 3]
    if colour is not None:
        b, c, s = (colour[:, k].to(device).view(-1, 1, 1, 1, 1) for k in range(3))
        x = x * b
        grey = x.mul(_LUMA.to(device)).sum(-1, keepdim=True)  # [B, 5, 48, 96, 1]
        level = grey.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - level) * c + level
        grey = x.mul(_LUMA.to(device)).sum(-1, keepdim=True)
        x = ((x - grey) * s + grey).clamp_(0.0, 1.0)
    if spec.face == "clip":
        mean = torch.from_numpy(portion.face_mean).to(device)
        x = (x - mean) / portion.face_std
    else:
        x = x.flip(-1)  # RGB → BGR
    return x.permute(0, 1, 4, 2, 3).reshape(len(centres), 3 * FACE_FRAMES, *FACE_CROP)


def mel_inputs(portion: ClipPortion, frames: np.ndarray, spec: InputSpec,
               device: torch.device | str = "cpu",
               gain_db: torch.Tensor | None = None) -> torch.Tensor:
    """Mel windows of the frames ``frames`` (clip indices).

    Args:
        gain_db: optional ``[B]`` volume change in dB applied before normalisation (a mel
            offset of ``8·gain/100`` on mel.py's scale, clipped to [−4, 4]).

    Returns:
        ``[B, 1, 80, 16]`` float32 normalised per ``spec.mel``.
    """
    clip = portion.clip
    starts = M.window_starts(clip.n_frames, clip.fps, clip.mel.shape[1])[frames]
    mel = torch.from_numpy(clip.mel).to(device)
    index = (torch.from_numpy(starts).to(device)[:, None]
             + torch.arange(M.WINDOW_FRAMES, device=device))
    x = mel[:, index].permute(1, 0, 2)  # [B, 80, 16]
    if gain_db is not None:
        scale = 2.0 * M.MAX_ABS_VALUE / -M.MIN_LEVEL_DB
        x = (x + scale * gain_db.to(device)[:, None, None]).clamp(-M.MAX_ABS_VALUE, M.MAX_ABS_VALUE)
    if spec.mel == "clip":
        mean = torch.from_numpy(portion.mel_mean).to(device)[:, None]
        std = torch.from_numpy(portion.mel_std).to(device)[:, None]
        x = (x - mean) / std
    return x.unsqueeze(1).contiguous()

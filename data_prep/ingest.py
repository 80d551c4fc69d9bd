"""Step ``ingest``: source video → ``frames/%06d.jpg`` (cropped, resampled) + ``audio.wav``.

The video is decoded once by ffmpeg, resampled to the target fps, cropped to one fixed
square around the head and shoulders and scaled to ``size``² in the same filter chain;
frames are streamed to JPEG files, never held together in memory. The audio track is
decoded to 16 kHz mono and shifted so that sample 0 is heard with frame 0.

Times: frame ``i`` of the subject is at ``i / fps`` s after the first frame of the source
video stream (the stream's own start time, not the container's).

Pixel coordinates are continuous (pixel ``j`` covers ``[j, j + 1)``, as MediaPipe's
landmarks × image size): a point ``p`` in the crop is at
``(crop.x, crop.y) + p · crop.side / size`` in the source frame (:func:`crop_to_source`).
Source frames are in display orientation (ffmpeg applies rotation metadata).
"""
from __future__ import annotations

import logging
import queue
import re
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import cv2
import numpy as np

from data_prep.subject import Manifest, frame_name
from synctalk.errors import InputError, MediaError, ModelFileError, OutputError, require_file
from synctalk.fsutil import atomic_dir
from synctalk.media import ffmpeg_exe, read_audio, write_wav

log = logging.getLogger(__name__)
_T = TypeVar("_T")

FRAMES_DIR = "frames"
AUDIO_NAME = "audio.wav"
SAMPLE_RATE = 16000
JPEG_QUALITY = 95
#: RMS (full scale 1) below which the audio track is reported as silent.
SILENCE_RMS = 1e-4

#: Auto-crop: frames sampled over the clip (fewer for short clips, ≥ 2 per second).
CROP_SAMPLES = 40
#: Long side (px) of the reduced frames the face is detected in.
SAMPLE_LONG_SIDE = 640
#: Face-box height as a fraction of the crop side (typical 512² talking-head crops).
FACE_FRACTION = 0.45
#: Where the centre of the face box sits in the crop, from the top (0) to the bottom (1).
FACE_CENTRE_Y = 0.48
#: The union of all sampled face boxes, grown by this factor, must fit in the crop.
MOTION_MARGIN = 1.25
#: Smallest usable face-box height in source pixels.
MIN_FACE_PX = 64
#: Fraction of sampled frames that must show a face.
MIN_FACE_FRACTION = 0.5

DEFAULT_PARAMS = {"fps": 25.0, "size": 512, "auto_crop": True, "face_landmarker": None,
            "min_seconds": 5.0, "max_seconds": None}


# --------------------------------------------------------------------------- probing

_INPUT = re.compile(r"^Input #0, ")
_DURATION = re.compile(r"Duration: (?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A), start: (-?\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #0:(\d+)\S*: (\w+): (.*)$")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"(\d+(?:\.\d+)?)(k?) (?:fps|tbr)\b")
_START = re.compile(r"\bstart (-?\d+(?:\.\d+)?)")
_HZ = re.compile(r"(\d+) Hz, ([^,]+)")
_DISPLAYMATRIX = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.I)
_ROTATE_TAG = re.compile(r"^\s*rotate\s*: (-?\d+)")
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "4.1": 5,
                    "5.0": 5, "5.1": 6, "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8}


def probe_video(path) -> dict:
    """Describe a video file from ``ffmpeg -i`` (no decoding, no ffprobe needed).

    Returns:
        ``{"duration_s" (container, None if unknown), "start_s" (container),
        "video": {"index", "codec", "width", "height" (coded px), "fps", "start_s",
        "rotation" (display-matrix degrees, counter-clockwise; 0 if none),
        "display_size" [w, h] (frames as decoded, rotation applied)},
        "audio": {"index", "codec", "sample_rate", "channels", "start_s"}}``.

    Raises:
        InputError: the file is missing or unreadable.
        MediaError: ffmpeg cannot read it, it has no video stream, or no audio stream
            (prep needs the speech).
    """
    path = require_file(path, "video")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                          capture_output=True)
    text = proc.stderr.decode(errors="replace")
    info = _parse_probe(text)
    if info is None:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise MediaError(f"{path} is not a video ffmpeg can read ({last}).")
    if info["video"] is None:
        raise MediaError(f"{path} has no video stream; prep needs a video of the person talking.")
    if info["audio"] is None:
        raise MediaError(f"prep needs the speech: the video has no audio track ({path}). "
                         "Mux the recorded audio into it, e.g. ffmpeg -i video -i audio -c copy out.mp4.")
    return info


def _parse_probe(text: str) -> dict | None:
    """Parse ``ffmpeg -i`` stderr; None when it shows no input at all.

    ffmpeg prints a stream's start time only when it is not 0.
    """
    lines = text.splitlines()
    if not any(_INPUT.match(line) for line in lines):
        return None
    out: dict = {"duration_s": None, "start_s": 0.0, "video": None, "audio": None}
    current: dict | None = None
    for line in lines:
        if m := _DURATION.search(line):
            if m.group(1) is not None:
                h, mi, s = m.group(1, 2, 3)
                out["duration_s"] = int(h) * 3600 + int(mi) * 60 + float(s)
            out["start_s"] = float(m.group(4))
        elif m := _STREAM.match(line):
            current = None  # rotation lines that follow belong to this stream
            kind, desc = m.group(2), m.group(3)
            if kind == "Video" and out["video"] is None and "(attached pic)" not in desc:
                current = out["video"] = _parse_video(int(m.group(1)), desc)
            elif kind == "Audio" and out["audio"] is None:
                out["audio"] = _parse_audio(int(m.group(1)), desc)
        elif current is not None and (m := _DISPLAYMATRIX.search(line)):
            current["rotation"] = float(m.group(1))
            _set_display_size(current)
        elif current is not None and (m := _ROTATE_TAG.match(line)):
            current["rotation"] = -float(m.group(1))  # the old tag turns clockwise
            _set_display_size(current)
    return out


def _parse_video(index: int, desc: str) -> dict:
    size = _SIZE.search(desc)
    fps = _FPS.search(desc)
    start = _START.search(desc)
    w, h = (int(size.group(1)), int(size.group(2))) if size else (0, 0)
    video = {"index": index, "codec": desc.split()[0].rstrip(","), "width": w, "height": h,
             "fps": float(fps.group(1)) * (1000 if fps.group(2) else 1) if fps else None,
             "start_s": float(start.group(1)) if start else 0.0, "rotation": 0.0}
    _set_display_size(video)
    return video


def _set_display_size(video: dict) -> None:
    quarter_turn = round(video["rotation"] / 90.0) % 2 == 1
    w, h = video["width"], video["height"]
    video["display_size"] = [h, w] if quarter_turn else [w, h]


def _parse_audio(index: int, desc: str) -> dict:
    hz = _HZ.search(desc)
    start = _START.search(desc)
    channels = None
    if hz:
        layout = hz.group(2).strip()
        m = re.match(r"(\d+) channels", layout)
        channels = int(m.group(1)) if m else _LAYOUT_CHANNELS.get(layout.split("(")[0])
    return {"index": index, "codec": desc.split()[0].rstrip(","),
            "sample_rate": int(hz.group(1)) if hz else None, "channels": channels,
            "start_s": float(start.group(1)) if start else 0.0}


# --------------------------------------------------------------------------- decoding

class FrameStream:
    """RGB frames of a file's video stream, decoded by ffmpeg through a filter chain.

    Frames are read from ffmpeg's pipe one at a time; decode errors are concealed
    (``-err_detect ignore_err``) and counted. Stopping the iteration early ends ffmpeg.

    Args:
        path: the video file.
        video: the ``"video"`` entry of :func:`probe_video`.
        filters: ffmpeg ``-vf`` filters applied in order, e.g. ``["fps=25", "scale=256:256"]``.
        out_size: ``(width, height)`` of the frames the chain produces.
        max_frames: stop after this many output frames (None: the whole stream).

    Attributes:
        stats: after a complete iteration, :func:`decode_stats` of ffmpeg's log.
    """

    def __init__(self, path, video: dict, filters: list[str], out_size: tuple[int, int], *,
                 max_frames: int | None = None) -> None:
        self.path = Path(path)
        self.out_size = out_size
        self.cmd = [ffmpeg_exe(), "-nostdin", "-v", "level+verbose", "-err_detect", "ignore_err",
                    "-i", str(self.path), "-map", f"0:{video['index']}", "-vf", ",".join(filters)]
        if max_frames is not None:
            self.cmd += ["-frames:v", str(max_frames)]
        self.cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        self.stats: dict | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        w, h = self.out_size
        nbytes = w * h * 3
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=err)
            try:
                while len(buf := proc.stdout.read(nbytes)) == nbytes:
                    yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            finally:
                proc.stdout.close()
                if proc.poll() is None:
                    proc.kill()
                rc = proc.wait()
            err.seek(0)
            text = err.read().decode(errors="replace")
        if rc != 0:
            errors = [line for line in text.splitlines() if "[error]" in line or "[fatal]" in line]
            raise MediaError(f"ffmpeg could not decode {self.path}: "
                             f"{(errors or text.splitlines() or ['no output'])[-1]}")
        self.stats = decode_stats(text)


_DECODED = re.compile(r"\(video\): (\d+) packets read .*?; (\d+) frames decoded; (\d+) decode errors")


def decode_stats(log_text: str) -> dict:
    """Frame accounting from an ffmpeg ``-v level+verbose`` log of one video decode.

    Returns:
        ``packets`` (compressed frames read), ``decoded`` (frames the decoder produced),
        ``lost`` (packets the decoder rejected: the fps filter repeats the previous frame
        in their place), ``damaged`` (frames decoded with concealed errors) and ``errors``
        (decoder error messages).
    """
    lines = log_text.splitlines()
    packets = decoded = lost = 0
    if found := _DECODED.findall(log_text):
        packets, decoded, lost = (int(v) for v in found[-1])
    return {"packets": packets, "decoded": decoded, "lost": lost,
            "damaged": sum("corrupt decoded frame" in line for line in lines),
            "errors": sum("[error]" in line for line in lines)}


def _fps_filter(fps: float) -> list[str]:
    """Filters putting frame 0 at the stream's first frame, then resampling to ``fps``."""
    rate = Fraction(fps).limit_denominator(1001)
    return ["setpts=PTS-STARTPTS", f"fps={rate.numerator}/{rate.denominator}"]


def source_frames(path, fps: float, *, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Re-decode the ORIGINAL full-size frames at ``fps``, indexed like the subject's frames.

    Yields:
        ``[H, W, 3]`` uint8 RGB in display orientation, frame ``i`` at ``i / fps`` s.
    """
    video = probe_video(path)["video"]
    w, h = video["display_size"]
    yield from FrameStream(path, video, _fps_filter(fps), (w, h), max_frames=max_frames)


# --------------------------------------------------------------------------- auto-crop

def face_boxes(path, video: dict, seconds: float | None, model_path) -> np.ndarray:
    """Face boxes in frames sampled evenly over the first ``seconds`` of the video.

    One decoding pass keeps :data:`CROP_SAMPLES` frames (at least 2 per second; 1 per second
    when the duration is unknown), reduced to a long side of :data:`SAMPLE_LONG_SIDE`.
    MediaPipe FaceLandmarker (IMAGE mode) finds the face in each; boxes are scaled back to
    source pixels.

    Returns:
        ``[K, 4]`` float ``x0, y0, x1, y1`` source px (bounds of the 478 landmarks) for the
        K sampled frames; NaN rows where no face was found.
    """
    from data_prep.face_tracking import FaceLandmarker

    n = CROP_SAMPLES if seconds is None else min(CROP_SAMPLES, max(8, int(2 * seconds)))
    rate = 1.0 if seconds is None else n / seconds
    w, h = video["display_size"]
    k = min(1.0, SAMPLE_LONG_SIDE / max(w, h))
    sw, sh = max(2, round(w * k / 2) * 2), max(2, round(h * k / 2) * 2)
    stream = FrameStream(path, video, _fps_filter(rate) + [f"scale={sw}:{sh}:flags=area"],
                         (sw, sh), max_frames=n)
    boxes = []
    with FaceLandmarker(model_path, video=False, num_faces=1) as fl:
        for rgb in stream:
            faces = fl.detect(rgb)
            xy = faces[0].landmarks[:, :2] if faces else np.full((1, 2), np.nan)
            boxes.append(np.concatenate([xy.min(0), xy.max(0)]) * [w / sw, h / sh, w / sw, h / sh])
    return np.array(boxes).reshape(-1, 4)


def choose_crop(boxes: np.ndarray, frame_size: tuple[int, int]) -> dict:
    """One fixed square crop holding head and shoulders over the whole clip.

    The side makes the median face-box height :data:`FACE_FRACTION` of the crop, grown if
    needed so the union of all face boxes (× :data:`MOTION_MARGIN`) fits; the crop is
    centred horizontally on that union with the face centre :data:`FACE_CENTRE_Y` down,
    then shrunk/shifted to lie inside the frame. x, y and side are even, so yuv420 video
    is cropped exactly.

    Args:
        boxes: ``[K, 4]`` ``x0, y0, x1, y1`` face boxes in source px (rows with NaN ignored).
        frame_size: ``(width, height)`` of the source frame.

    Returns:
        ``{"x", "y", "side"}`` source px, plus ``"face_px"``: median face-box height.

    Raises:
        InputError: no face in most boxes, or the face is smaller than :data:`MIN_FACE_PX`.
    """
    found = boxes[~np.isnan(boxes).any(axis=1)]
    if len(found) < MIN_FACE_FRACTION * len(boxes) or len(found) == 0:
        raise InputError(
            f"no face found in most sampled frames ({len(found)} of {len(boxes)}): prep needs "
            "one person facing the camera. If the face is small in the frame, crop the video "
            "closer around the person first; a video already cropped to the head can be "
            "ingested with auto-crop off.")
    face_h = float(np.median(found[:, 3] - found[:, 1]))
    if face_h < MIN_FACE_PX:
        raise InputError(
            f"face too small: {face_h:.0f} px high in the source frame, at least {MIN_FACE_PX} px "
            "are needed — use a higher-resolution or closer video.")
    w, h = frame_size
    x0, y0 = found[:, :2].min(axis=0)
    x1, y1 = found[:, 2:].max(axis=0)
    side = max(face_h / FACE_FRACTION, MOTION_MARGIN * max(x1 - x0, y1 - y0))
    side = _even(min(side, w, h))
    x = _even(np.clip((x0 + x1) / 2 - side / 2, 0, w - side))
    y = _even(np.clip((y0 + y1) / 2 - FACE_CENTRE_Y * side, 0, h - side))
    return {"x": x, "y": y, "side": side, "face_px": round(face_h, 1)}


def centre_crop(frame_size: tuple[int, int]) -> dict:
    """The largest centred square of a ``(width, height)`` frame, even-aligned."""
    w, h = frame_size
    side = _even(min(w, h))
    return {"x": _even((w - side) / 2), "y": _even((h - side) / 2), "side": side}


def _even(v: float) -> int:
    return int(v // 2) * 2


def crop_to_source(points: np.ndarray, crop: dict, size: int) -> np.ndarray:
    """Map ``[..., 2]`` (x, y) px of the ``size``² crop to source-frame px."""
    return np.asarray(points, dtype=np.float64) * (crop["side"] / size) + [crop["x"], crop["y"]]


def source_to_crop(points: np.ndarray, crop: dict, size: int) -> np.ndarray:
    """Map ``[..., 2]`` (x, y) source-frame px to px of the ``size``² crop."""
    return (np.asarray(points, dtype=np.float64) - [crop["x"], crop["y"]]) * (size / crop["side"])


def crop_principal_point(info: dict) -> tuple[float, float] | None:
    """The source camera's principal point in px of the crop, from an ingest ``info``.

    The source camera's principal point is taken to be the centre ``(W/2, H/2)`` of the
    (display-orientation) source frame; in the crop it lands at
    ``((W/2 − x) · s, (H/2 − y) · s)`` with ``s = size / side`` — outside the crop when the
    crop is off-centre and small (e.g. the head of a full-body shot).

    Args:
        info: the ``ingest`` step's info (``crop`` {x, y, side} source px,
            ``source_size`` [W, H] px, ``size`` crop side px).

    Returns:
        ``(cx, cy)`` px of the crop, or None when ``info`` lacks the crop record.
    """
    crop, source, size = info.get("crop"), info.get("source_size"), info.get("size")
    if not crop or not source or not size:
        return None
    cx, cy = source_to_crop(np.array([source[0] / 2.0, source[1] / 2.0]), crop, int(size))
    return float(cx), float(cy)


# --------------------------------------------------------------------------- audio

def align_audio(audio: np.ndarray, offset_s: float, n_samples: int,
                sr: int = SAMPLE_RATE) -> np.ndarray:
    """Shift and cut audio so that sample 0 is at the time of video frame 0.

    Args:
        audio: ``[n]`` float32 decoded from the audio stream's first sample.
        offset_s: audio stream start minus video stream start, seconds: > 0 pads the front
            with silence, < 0 drops the audio heard before the first frame.
        n_samples: output length (the video's duration); the end is cut or zero-padded.

    Returns:
        ``[n_samples]`` float32.
    """
    shift = int(round(offset_s * sr))
    audio = np.concatenate([np.zeros(shift, np.float32), audio]) if shift > 0 else audio[-shift:]
    out = np.zeros(n_samples, np.float32)
    n = min(n_samples, len(audio))
    out[:n] = audio[:n]
    return out


# --------------------------------------------------------------------------- the step

def run(subject: Path, params: dict) -> dict:
    """Ingest ``params["source"]`` into the subject directory ``subject``.

    Params (see :data:`DEFAULT_PARAMS`): ``source`` video path; ``fps`` target frame rate;
    ``size`` crop side px; ``auto_crop`` (else the centred square); ``face_landmarker``
    model path (needed for auto-crop); ``min_seconds``; ``max_seconds`` (use only the
    start of the clip; None: all of it).

    Writes ``frames/%06d.jpg`` (RGB, ``size``², JPEG q95) and ``audio.wav`` (16 kHz mono).

    Returns:
        info: ``n_frames``, ``fps``, ``size``, ``duration_s``, ``crop`` {x, y, side} source
        px, ``scale`` (crop px per source px), ``source_fps``, ``source_size`` [w, h],
        ``audio_offset_s``, ``audio_rms``, ``face_px`` (auto-crop only), decode accounting
        (``source_frames_decoded``, ``source_frames_lost``, ``source_frames_damaged``) and
        ``corrupt_warnings`` (decoder error messages).

    Raises:
        InputError: clip shorter than ``min_seconds``, no usable face (auto-crop).
        MediaError: unreadable video, no audio track.
    """
    p = {**DEFAULT_PARAMS, **params}
    subject, fps, size = Path(subject), float(p["fps"]), int(p["size"])
    source = require_file(p["source"], "video")
    probe = probe_video(source)
    video = probe["video"]
    seconds = _usable_seconds(probe, p["max_seconds"])
    if seconds is not None and seconds < p["min_seconds"]:
        raise InputError(_too_short(source, seconds, p["min_seconds"]))
    audio = read_audio(source, SAMPLE_RATE)

    frame_size = tuple(video["display_size"])
    if p["auto_crop"]:
        if p["face_landmarker"] is None:
            raise ModelFileError("auto-crop needs MediaPipe's face_landmarker.task; pass its path "
                                 "(`synctalk models fetch` downloads it) or turn auto-crop off.")
        crop = choose_crop(face_boxes(source, video, seconds, p["face_landmarker"]), frame_size)
    else:
        crop = centre_crop(frame_size)
    box = {k: crop[k] for k in ("x", "y", "side")}
    if box["side"] < size:
        log.warning("ingest: the %d px crop of %s is upscaled to %d px; a higher-resolution "
                    "video gives sharper results", box["side"], source, size)

    max_frames = None if p["max_seconds"] is None else int(round(p["max_seconds"] * fps))
    n, stats = _write_frames(subject, source, video, box, fps, size, max_frames, p["min_seconds"])
    offset = probe["audio"]["start_s"] - video["start_s"]
    rms = _write_audio(subject / AUDIO_NAME, audio, offset, n / fps, source)
    _report_corruption(source, stats)

    info = {"n_frames": n, "fps": fps, "size": size, "duration_s": round(n / fps, 3),
            "crop": box, "scale": size / box["side"], "source_fps": video["fps"],
            "source_size": list(frame_size), "audio_offset_s": round(offset, 6),
            "audio_rms": round(rms, 6), "source_frames_decoded": stats["decoded"],
            "source_frames_lost": stats["lost"], "source_frames_damaged": stats["damaged"],
            "corrupt_warnings": stats["errors"]}
    if "face_px" in crop:
        info["face_px"] = crop["face_px"]
    return info


def _write_audio(path: Path, audio: np.ndarray, offset_s: float, seconds: float,
                 source: Path) -> float:
    """Align ``audio`` with the frames (:func:`align_audio`), write it; returns its RMS.

    Logs a warning when the track is silent or ends more than half a second early.
    """
    aligned = align_audio(audio, offset_s, int(round(seconds * SAMPLE_RATE)))
    rms = float(np.sqrt(np.mean(np.square(aligned, dtype=np.float64)))) if aligned.size else 0.0
    if rms < SILENCE_RMS:
        log.warning("ingest: the audio track of %s is silent (RMS %.1e); lip sync cannot be "
                    "learned from it", source, rms)
    covered = len(audio) / SAMPLE_RATE + offset_s
    if covered < seconds - 0.5:
        log.warning("ingest: the audio of %s ends %.1f s before the video; the rest is silence",
                    source, seconds - covered)
    write_wav(path, aligned, SAMPLE_RATE)
    return rms


def _usable_seconds(probe: dict, max_seconds: float | None) -> float | None:
    """Seconds of video from its first frame (None if the container does not say)."""
    if probe["duration_s"] is None:
        return max_seconds
    seconds = probe["duration_s"] + probe["start_s"] - probe["video"]["start_s"]
    return seconds if max_seconds is None else min(seconds, max_seconds)


def _too_short(source: Path, seconds: float, min_seconds: float) -> str:
    return (f"{source} gives {seconds:.1f} s of video; prep needs at least {min_seconds:g} s "
            "(3–5 minutes of speech are recommended).")


def _write_frames(subject: Path, source: Path, video: dict, crop: dict, fps: float, size: int,
                  max_frames: int | None, min_seconds: float) -> tuple[int, dict]:
    """Decode, crop, scale and write ``frames/`` atomically; returns (n_frames, decode stats)."""
    from tqdm import tqdm

    side = crop["side"]
    filters = _fps_filter(fps) + [f"crop={side}:{side}:{crop['x']}:{crop['y']}",
                                  f"scale={size}:{size}:flags=lanczos"]
    stream = FrameStream(source, video, filters, (size, size), max_frames=max_frames)
    n = 0
    with atomic_dir(subject / FRAMES_DIR) as tmp:
        for rgb in tqdm(stream, desc="ingest", unit="frame", disable=None, leave=False):
            path = tmp / frame_name(n, "jpg")
            if not cv2.imwrite(str(path), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OutputError(f"cannot write {path}")
            n += 1
        if n / fps < min_seconds:
            raise InputError(_too_short(source, n / fps, min_seconds))
    return n, stream.stats


def _report_corruption(source: Path, stats: dict) -> None:
    if stats["lost"] or stats["damaged"] or stats["errors"]:
        log.warning("ingest: %s is damaged: %d of %d source frames could not be decoded (the "
                    "previous frame repeats in their place), %d decoded with concealed errors, "
                    "%d decoder errors", source, stats["lost"], stats["packets"],
                    stats["damaged"], stats["errors"])


# --------------------------------------------------------------------------- reading back

def frame_count(subject: Path) -> int:
    """Number of frames in ``subject/frames`` (0 when there are none)."""
    d = Path(subject) / FRAMES_DIR
    return sum(1 for _ in d.glob("*.jpg")) if d.is_dir() else 0


def read_frame(subject: Path, i: int) -> np.ndarray:
    """Frame ``i`` of the subject as ``[S, S, 3]`` uint8 RGB."""
    path = Path(subject) / FRAMES_DIR / frame_name(i, "jpg")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"missing or unreadable frame {path} — re-run prep.")
    return bgr[:, :, ::-1].copy()


def iter_frames(subject: Path) -> Iterator[tuple[int, np.ndarray]]:
    """``(i, [S, S, 3] uint8 RGB)`` for every frame of the subject, in order."""
    for i in range(frame_count(subject)):
        yield i, read_frame(subject, i)


def prefetched(items: Iterable[_T], depth: int = 8) -> Iterator[_T]:
    """Iterate ``items`` produced ahead by a background thread (at most ``depth`` waiting).

    Frame decoding (OpenCV releases the GIL) then overlaps with the consumer's work on
    the previous frames. Exceptions raised by the producer are re-raised here, in order;
    closing the iterator early stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((False, e))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def subject_fps(subject: Path) -> float:
    """Frame rate of the subject's frames, from the ingest record of its manifest."""
    manifest = Manifest.load(subject)
    rec = manifest.step("ingest") if manifest else None
    if not rec or rec.get("status") != "done":
        raise InputError(f"{subject} has not been ingested yet — run `synctalk prep` on it.")
    return float(rec["info"]["fps"])

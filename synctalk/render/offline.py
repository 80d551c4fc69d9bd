"""Offline rendering: an audio file → an H.264 mp4 of the talking head with that audio.

Timing: output frame ``t`` is shown at ``t / fps`` s (the model's fps) and is driven by the
audio feature centred on that instant (:meth:`TalkingHead.encode_audio`). The video has
``⌈duration · fps⌉`` frames — every frame that begins before the audio ends — and the input
audio is muxed whole (re-encoded as AAC), so the video outlasts the audio by less than a frame.

What each frame takes from the training video (:class:`FramePlan`):

* **Source frames** (torso, background, per-frame appearance code, blendshapes and, by default,
  the head pose): the model's training frames replayed in *ping-pong* order —
  ``f0, f1, …, f_{m−1}, f_{m−2}, …, f1, f0, f1, …`` — so the motion never jumps back at a loop
  boundary, however long the audio.
* **Head pose** (``pose_from``): another subject directory's ``poses.npz`` or a pose file
  (:data:`POSES_FORMAT`: an ``.npz`` holding ``c2w [M, 4, 4]`` camera-to-world matrices in a
  subject's convention — OpenCV camera, head-centred world in mm, see
  :mod:`data_prep.stabilize` — and optionally ``fps``, a scalar, to resample them in time),
  replayed in ping-pong order too and *retargeted* (:func:`retarget_poses`): the source's head
  motion about its mean pose is applied about the model subject's mean pose, translations
  scaled by the ratio of the two mean head depths, so another camera distance or framing does
  not move the head out of the model's box.
* **Eyes**: the source frames' blink blendshapes (default), synthetic blinks every 2.5–5 s
  (``blink="synth"``, ``--blink``), or held open (``blink="open"``, ``--fix-eyes``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from synctalk.errors import InputError, OutputError

log = logging.getLogger(__name__)

#: Name of the pose-file layout accepted by ``--pose-from`` (an ``.npz`` with ``c2w``).
POSES_FORMAT = "synctalk-poses/1"
#: Sample rate audio is decoded at for features (any input rate/channel count is converted).
SAMPLE_RATE = 16000
#: Blink modes of :func:`plan_frames`.
BLINK_MODES = ("replay", "synth", "open")


def pingpong(n_out: int, sequence: Sequence[int]) -> np.ndarray:
    """``n_out`` entries of ``sequence`` in ping-pong order (module docstring).

    Returns:
        ``[n_out]`` int64; a one-element sequence repeats.
    """
    seq = np.asarray(sequence, np.int64)
    if seq.ndim != 1 or seq.size == 0:
        raise InputError("no source frames to replay (the model's training split is empty)")
    if seq.size == 1:
        return np.full(n_out, seq[0], np.int64)
    period = 2 * (seq.size - 1)
    k = np.arange(n_out) % period
    return seq[np.where(k < seq.size, k, period - k)]


def frames_for_audio(n_samples: int, sr: int, fps: float) -> int:
    """Video frames covering ``n_samples`` of audio: ``⌈duration · fps⌉`` (a frame counts when
    it starts before the audio ends)."""
    return int(math.ceil(n_samples / float(sr) * fps - 1e-9))


# ---------------------------------------------------------------- poses

def _mean_rotation(r: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of ``[N, 3, 3]`` rotations (SVD projection of their average)."""
    u, _, vt = np.linalg.svd(r.mean(axis=0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _head_to_camera(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(R [N,3,3], t [N,3])`` of ``x_cam = R·X + t`` from camera-to-world ``[N, 4, 4]``."""
    r_c2w, c = c2w[:, :3, :3], c2w[:, :3, 3]
    r = np.swapaxes(r_c2w, 1, 2)
    return r, -np.einsum("nij,nj->ni", r, c)


def _camera_to_world(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros((len(r), 4, 4))
    rt = np.swapaxes(r, 1, 2)
    out[:, :3, :3] = rt
    out[:, :3, 3] = -np.einsum("nij,nj->ni", rt, t)
    out[:, 3, 3] = 1.0
    return out


def retarget_poses(src_c2w: np.ndarray, ref_c2w: np.ndarray) -> np.ndarray:
    """Apply the head motion of ``src`` about its mean pose to ``ref``'s mean pose.

    With head→camera poses ``(R_i, t_i)`` (:mod:`data_prep.stabilize`): ``R'_i = R_i R̄ᵀ R̄_ref``
    (the rotation relative to the source's mean, applied in the camera frame) and
    ``t'_i = t̄_ref + s (t_i − t̄_src)`` with ``s = t̄_ref,z / t̄_src,z``.

    Args:
        src_c2w: ``[M, 4, 4]`` camera-to-world poses to replay.
        ref_c2w: ``[K, 4, 4]`` the model subject's poses.

    Returns:
        ``[M, 4, 4]`` float64 camera-to-world poses in the model subject's world.
    """
    src = np.asarray(src_c2w, np.float64)
    ref = np.asarray(ref_c2w, np.float64)
    r_s, t_s = _head_to_camera(src)
    r_r, t_r = _head_to_camera(ref)
    mean_s, mean_r = _mean_rotation(r_s), _mean_rotation(r_r)
    ts_mean, tr_mean = t_s.mean(axis=0), t_r.mean(axis=0)
    scale = tr_mean[2] / ts_mean[2] if abs(ts_mean[2]) > 1e-9 else 1.0
    r_out = r_s @ mean_s.T @ mean_r
    t_out = tr_mean + scale * (t_s - ts_mean)
    return _camera_to_world(r_out, t_out)


def load_pose_source(path, fps: float) -> np.ndarray:
    """Camera-to-world poses to replay, from a subject directory or a pose file.

    Args:
        path: a subject directory (its ``poses.npz``, frames whose pose is ``valid``) or an
            ``.npz`` in :data:`POSES_FORMAT` (module docstring).
        fps: the model's frame rate; poses with another recorded ``fps`` are resampled to it
            (nearest pose in time).

    Returns:
        ``[M, 4, 4]`` float64.

    Raises:
        InputError: missing path, no ``c2w`` array of shape ``[M, 4, 4]``, non-finite values.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / "poses.npz"
        if not f.is_file():
            raise InputError(f"--pose-from {p}: no poses.npz there — give a subject directory "
                             "made by `synctalk prep`, or a pose file.")
    elif p.is_file():
        f = p
    else:
        raise InputError(f"--pose-from {p} does not exist.")
    try:
        with np.load(f, allow_pickle=False) as z:
            if "c2w" not in z.files:
                raise InputError(f"{f} has no 'c2w' array; a pose file is an .npz with c2w "
                                 "[M, 4, 4] camera-to-world matrices (and optionally fps).")
            c2w = np.asarray(z["c2w"], np.float64)
            valid = np.asarray(z["valid"], bool) if "valid" in z.files else None
            src_fps = float(z["fps"]) if "fps" in z.files else None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {f} as an .npz pose file: {e}") from e
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
        raise InputError(f"{f}: c2w must be [M, 4, 4] with M ≥ 1, got {list(c2w.shape)}")
    if valid is not None and valid.shape == (len(c2w),) and valid.any():
        c2w = c2w[valid]
    if not np.isfinite(c2w).all():
        raise InputError(f"{f}: c2w holds NaN or infinite values.")
    if src_fps is not None and src_fps > 0 and abs(src_fps - fps) > 1e-6:
        n = max(1, int(round(len(c2w) * fps / src_fps)))
        idx = np.minimum(np.round(np.arange(n) * src_fps / fps).astype(np.int64), len(c2w) - 1)
        c2w = c2w[idx]
    return c2w


def subject_poses(subject) -> np.ndarray:
    """``[N, 4, 4]`` camera-to-world poses of a subject directory (``poses.npz``)."""
    f = Path(subject) / "poses.npz"
    if not f.is_file():
        raise InputError(f"the model's subject {subject} has no poses.npz — is the subject "
                         "directory the model was trained on still there?")
    with np.load(f) as z:
        return np.asarray(z["c2w"], np.float64)


# ---------------------------------------------------------------- plan

@dataclass
class FramePlan:
    """What drives each output frame besides the audio.

    Attributes:
        source_frames: ``[T]`` int64 frame indices of the model's subject (torso, background,
            appearance, blendshapes, and the head pose unless ``c2w`` is given).
        c2w: ``[T, 4, 4]`` float64 head poses overriding the source frames', or None.
        blink: ``[T]`` float64 eyelid closure (0 open … 1 shut) overriding the source frames'
            blink blendshapes, or None to replay them.
    """

    source_frames: np.ndarray
    c2w: np.ndarray | None = None
    blink: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.source_frames.shape[0])


def plan_frames(head, n_out: int, *, pose_from=None, blink: str = "replay",
                seed: int = 0) -> FramePlan:
    """Source frames, poses and eye state for ``n_out`` output frames (module docstring).

    Args:
        head: the loaded :class:`~synctalk.nerf.inference.TalkingHead`.
        n_out: number of output frames.
        pose_from: subject directory or pose file whose head motion to replay, or None.
        blink: ``"replay"``, ``"synth"`` or ``"open"``.
        seed: seed of the synthetic blink times.
    """
    if blink not in BLINK_MODES:
        raise InputError(f"blink mode must be one of {', '.join(BLINK_MODES)}, got {blink!r}")
    train = sorted(int(i) for i in head.splits.get("train", [])) or list(range(head.n_frames))
    plan = FramePlan(pingpong(n_out, train))
    if pose_from is not None:
        src = load_pose_source(pose_from, head.fps)
        poses = retarget_poses(src, subject_poses(head.subject))
        plan.c2w = poses[pingpong(n_out, np.arange(len(poses)))]
    if blink == "synth":
        from synctalk.synth.motion import blinks

        plan.blink = blinks(n_out, head.fps, np.random.default_rng(seed)).astype(np.float64)
    elif blink == "open":
        plan.blink = np.zeros(n_out)
    return plan


# ---------------------------------------------------------------- rendering

@dataclass
class StageTimes:
    """Seconds spent per stage, summed over frames."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, secs: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + float(secs)

    def per_frame_ms(self, n: int) -> dict[str, float]:
        return {k: 1000.0 * v / max(n, 1) for k, v in self.seconds.items()}


def render_frames(head, feats, plan: FramePlan, times: StageTimes | None = None,
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Render ``len(plan)`` frames one at a time.

    Args:
        head: the talking head.
        feats: ``[T, D]`` audio features (:meth:`TalkingHead.encode_audio`), ``T ≥ len(plan)``.
        plan: :func:`plan_frames`.
        times: accumulates the renderer's per-stage seconds (``march``, ``field``,
            ``composite``, ``torso``) and ``render`` (wall time of each call).

    Yields:
        ``(rgb [H, W, 3] uint8, alpha [H, W] float32)`` per frame.
    """
    for t in range(len(plan)):
        kwargs = {}
        if plan.blink is not None:
            kwargs["blink"] = float(plan.blink[t])
        if plan.c2w is not None:
            kwargs["c2w"] = plan.c2w[t]
        t0 = time.perf_counter()
        out = head.render_frame(feats, t, int(plan.source_frames[t]), **kwargs)
        if times is not None:
            times.add("render", time.perf_counter() - t0)
            for k, v in (out.get("timings") or {}).items():
                times.add(k, v)
        yield out["rgb"], out["alpha"]


def check_output_path(out, suffix: str = ".mp4") -> Path:
    """``out`` as a Path if it can be written: its directory exists and is writable, and it
    ends in ``suffix``. Checked before any work is done."""
    import os

    out = Path(out).expanduser()
    if out.suffix.lower() != suffix:
        raise OutputError(f"output {out} must end in {suffix}")
    if not out.parent.is_dir():
        raise OutputError(f"output directory does not exist: {out.parent} — create it first.")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {out.parent}")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file name ending in {suffix}")
    return out


def load_audio(path, fps: float) -> tuple[np.ndarray, int]:
    """Decode any audio file (any rate, any channel count) to 16 kHz mono and count frames.

    Returns:
        ``(audio [n] float32, n_frames)``.

    Raises:
        InputError: shorter than one video frame. MediaError: not decodable.
    """
    from synctalk.media import read_audio

    audio = read_audio(path, SAMPLE_RATE)
    n_out = frames_for_audio(len(audio), SAMPLE_RATE, fps)
    if len(audio) < SAMPLE_RATE / fps:
        raise InputError(f"{path} holds {1000.0 * len(audio) / SAMPLE_RATE:.1f} ms of audio, "
                         f"shorter than one video frame ({1000.0 / fps:.1f} ms at {fps:g} fps) "
                         "— give a longer recording.")
    return audio, n_out


def audio_features(head, audio: np.ndarray, n_out: int):
    """``[n_out, D]`` features of 16 kHz audio; audio shorter than the encoder's window is
    padded with silence first, and the feature sequence is cut (or its last row repeated)
    to exactly ``n_out`` frames."""
    import torch

    from synctalk.audio.mel import MIN_SAMPLES

    if len(audio) < MIN_SAMPLES:
        audio = np.concatenate([audio, np.zeros(MIN_SAMPLES - len(audio), np.float32)])
    feats = head.encode_audio(audio, SAMPLE_RATE)
    if feats.shape[0] < n_out:
        feats = torch.cat([feats, feats[-1:].expand(n_out - feats.shape[0], *feats.shape[1:])])
    return feats[:n_out]


@dataclass
class RenderResult:
    """Summary of :func:`render_to_mp4`."""

    out: Path
    n_frames: int
    audio_s: float
    fps: float
    wall_s: float
    render_fps: float
    stage_ms: dict[str, float]
    frames_dir: Path | None = None

    def to_dict(self) -> dict:
        return {"out": str(self.out), "frames": self.n_frames, "audio_s": round(self.audio_s, 3),
                "fps": self.fps, "wall_s": round(self.wall_s, 3),
                "render_fps": round(self.render_fps, 3),
                "stage_ms_per_frame": {k: round(v, 2) for k, v in self.stage_ms.items()},
                "frames_dir": str(self.frames_dir) if self.frames_dir else None}


def render_to_mp4(head, audio_path, out, *, pose_from=None, blink: str = "replay",
                  frames_dir=None, seed: int = 0, progress: bool = True) -> RenderResult:
    """Render speech to an mp4 (module docstring); outputs are written atomically.

    Args:
        head: a loaded :class:`~synctalk.nerf.inference.TalkingHead`.
        audio_path: any audio (or video with audio) ffmpeg decodes.
        out: ``.mp4`` path; its directory must exist.
        pose_from, blink, seed: see :func:`plan_frames`.
        frames_dir: also write every frame as ``%06d.png`` into this new directory (its
            parent must exist; an existing one is replaced when the render succeeds).
        progress: show a progress bar.

    Returns:
        A :class:`RenderResult` with frames/s and per-stage milliseconds per frame
        (``features`` once, divided by the frame count; ``march``/``field``/``composite``/
        ``torso`` from the renderer; ``render`` its wall time; ``encode`` the time spent in
        ffmpeg's pipe and PNG writing).
    """
    from contextlib import ExitStack

    from tqdm import tqdm

    from synctalk.fsutil import atomic_dir
    from synctalk.media import write_mp4

    out = check_output_path(out)
    if frames_dir is not None:
        frames_dir = Path(frames_dir).expanduser()
        if not frames_dir.parent.is_dir():
            raise OutputError(f"--frames-dir parent does not exist: {frames_dir.parent} — "
                              "create it first.")
    t_start = time.perf_counter()
    audio, n_out = load_audio(audio_path, head.fps)
    times = StageTimes()
    t0 = time.perf_counter()
    feats = audio_features(head, audio, n_out)
    times.add("features", time.perf_counter() - t0)
    plan = plan_frames(head, n_out, pose_from=pose_from, blink=blink, seed=seed)

    with ExitStack() as stack:
        png_dir = stack.enter_context(atomic_dir(frames_dir)) if frames_dir is not None else None
        bar = stack.enter_context(tqdm(total=n_out, desc="render", unit="frame",
                                       disable=not progress or None, leave=False))
        t_loop = time.perf_counter()

        def frames() -> Iterator[np.ndarray]:
            for i, (rgb, _alpha) in enumerate(render_frames(head, feats, plan, times)):
                if png_dir is not None:
                    t1 = time.perf_counter()
                    _write_png(png_dir / f"{i:06d}.png", rgb)
                    times.add("png", time.perf_counter() - t1)
                bar.update(1)
                yield rgb

        n = write_mp4(out, frames(), head.fps, audio_path=audio_path, shortest=False)
        loop_s = time.perf_counter() - t_loop
    times.add("encode", max(0.0, loop_s - times.seconds.get("render", 0.0)
                            - times.seconds.get("png", 0.0)))
    wall = time.perf_counter() - t_start
    render_s = times.seconds.get("render", 0.0)
    return RenderResult(out, n, len(audio) / SAMPLE_RATE, head.fps, wall,
                        n / render_s if render_s > 0 else float("inf"),
                        times.per_frame_ms(n), frames_dir)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OutputError(f"cannot write {path}")

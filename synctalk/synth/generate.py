"""``synctalk synth``: write ``clip.mp4`` (H.264 + AAC) and ``ground_truth.json``."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.errors import InputError
from synctalk.fsutil import atomic_dir, write_json_atomic
from synctalk.media import write_mp4, write_wav
from synctalk.synth.face import background_plate, crop_head_and_shoulders, load_source_face, person_matte
from synctalk.synth.motion import blinks, euler_to_matrix, head_motion
from synctalk.synth.rig import KEY_LANDMARKS, FrameState, HeadRig
from synctalk.synth.speech import SR, load_speech, mouth_tracks

log = logging.getLogger(__name__)

GROUND_TRUTH_FORMAT = "synctalk-synth-gt/1"
#: Focal length as a multiple of the image side (≈ 28° field of view).
FOCAL_PER_SIDE = 2.0
#: Interpupillary distance assumed to give the head-frame translation a metric unit.
IPD_MM = 63.0


@dataclass
class SynthOptions:
    seconds: float | None = 20.0
    size: int = 256
    fps: float = 25.0
    seed: int = 0
    motion_scale: float = 1.0
    image: str | None = None
    audio: str | None = None
    phones: str | None = None
    face_landmarker: str | None = None


def generate(out_dir, opts: SynthOptions) -> dict:
    """Generate a synthetic talking-head clip with ground truth into ``out_dir``.

    ``out_dir`` is created (its parent must exist) and filled atomically: on failure
    nothing is left behind; an existing ``out_dir`` is replaced only on success.

    Returns:
        A summary: paths, frame count, seconds and timings.
    """
    if opts.size < 64 or opts.size % 2:
        raise InputError(f"--size must be an even number ≥ 64, got {opts.size}")
    if opts.fps <= 0:
        raise InputError(f"--fps must be positive, got {opts.fps}")
    if opts.seconds is not None and opts.seconds <= 0:
        raise InputError(f"--seconds must be positive, got {opts.seconds}")
    t0 = time.perf_counter()
    speech = load_speech(opts.audio, opts.phones, opts.seconds)
    n = int(np.floor(speech.seconds * opts.fps + 1e-6))
    if n < 1:
        raise InputError("the audio is shorter than one video frame.")
    face = crop_head_and_shoulders(load_source_face(opts.image, opts.face_landmarker), opts.size)
    matte = person_matte(face)
    rig = HeadRig(face, matte, background_plate(face.rgb, matte), FOCAL_PER_SIDE * opts.size)
    rng = np.random.default_rng(opts.seed)
    opening, width = mouth_tracks(speech, n, opts.fps)
    angles, shift = head_motion(n, opts.fps, rng, opts.motion_scale)
    blink = blinks(n, opts.fps, rng)
    t_setup = time.perf_counter() - t0

    states = [FrameState(float(opening[i]), float(width[i]), float(blink[i]),
                         euler_to_matrix(*angles[i]), shift[i]) for i in range(n)]
    per_frame: list[dict] = []
    mm_per_unit = _mm_per_unit(rig)

    def frames():
        for i, st in enumerate(states):
            rgb, lm = rig.render(st)
            per_frame.append(_frame_record(i, st, angles[i], lm, rig, mm_per_unit))
            per_frame[-1]["head_ring"] = [[round(float(x), 2), round(float(y), 2)]
                                          for x, y in rig.head_ring_2d(st)]
            yield rgb

    out_dir = Path(out_dir)
    t1 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        wav = tmp / "audio.wav"
        write_wav(wav, speech.audio, SR)
        write_mp4(tmp / "clip.mp4", frames(), opts.fps, audio_path=wav)
        gt = {
            "format": GROUND_TRUTH_FORMAT,
            "fps": opts.fps,
            "size": [opts.size, opts.size],
            "n_frames": n,
            "seed": opts.seed,
            "motion_scale": opts.motion_scale,
            "intrinsics": {"fx": rig.focal, "fy": rig.focal, "cx": rig.c, "cy": rig.c},
            "conventions": {
                "camera": "OpenCV: x right, y down, z forward; pixels of the frame",
                "rotation": "R = Rz(roll)·Ry(yaw)·Rx(pitch), head → camera; degrees; +yaw turns "
                            "the face to image left, +pitch down, +roll clockwise on screen",
                "translation_mm": "head displacement from the photo's pose, camera frame, mm "
                                  f"(scale from an assumed {IPD_MM:.0f} mm interpupillary distance)",
                "mouth_open": "0..1 jaw control; mouth_open_px is the projected gap between "
                              "inner-lip landmarks 13 and 14",
                "lip_width": "lip width factor (1 = neutral)",
                "blink": "eyelid closure, 0 open .. 1 shut",
                "landmarks": "projected positions [x, y] px of MediaPipe landmarks "
                             + ", ".join(f"{k}={v}" for k, v in KEY_LANDMARKS.items()),
                "head_ring": "projected positions [x, y] px of the rig's head ring: points that "
                             "move rigidly with the head, just beyond its hair or hat (a pose "
                             "that registers them registers the whole head)",
            },
            "frames": per_frame,
        }
        write_json_atomic(tmp / "ground_truth.json", gt)
    t_render = time.perf_counter() - t1
    log.debug("synth: %d frames (%.1f s) at %dx%d, %.1f fps -> %s  [setup %.1fs, render+encode %.1fs]",
             n, n / opts.fps, opts.size, opts.size, opts.fps, out_dir, t_setup, t_render)
    return {"out": str(out_dir), "clip": str(out_dir / "clip.mp4"),
            "ground_truth": str(out_dir / "ground_truth.json"), "n_frames": n,
            "seconds": n / opts.fps, "setup_s": t_setup, "render_s": t_render}


def _mm_per_unit(rig: HeadRig) -> float:
    """Millimetres per head-frame unit, from the photo's interpupillary distance."""
    ipd = np.linalg.norm(rig.P0[468] - rig.P0[473])
    return IPD_MM / float(ipd)


def _frame_record(i: int, st: FrameState, angles, lm: np.ndarray, rig: HeadRig,
                  mm_per_unit: float) -> dict:
    r = lambda v, k=3: round(float(v), k)  # noqa: E731
    t_units = np.array([st.shift[0] * rig.size, st.shift[1] * rig.size, st.shift[2] * rig.focal])
    return {
        "index": i,
        "mouth_open": r(st.opening, 4),
        "mouth_open_px": r(np.linalg.norm(lm[13] - lm[14])),
        "lip_width": r(st.width, 4),
        "blink": r(st.blink, 4),
        "yaw": r(angles[0]), "pitch": r(angles[1]), "roll": r(angles[2]),
        "rotation": [[r(v, 6) for v in row] for row in st.rotation],
        "translation_mm": [r(v) for v in t_units * mm_per_unit],
        "landmarks": {k: [r(lm[j, 0], 2), r(lm[j, 1], 2)] for k, j in KEY_LANDMARKS.items()},
    }

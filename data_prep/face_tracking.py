"""MediaPipe FaceLandmarker (Tasks API) wrapper: 478 landmarks, 52 blendshapes, head matrix.

Coordinates returned here are in **pixels of the image passed in**: ``x`` right, ``y`` down,
and ``z`` (relative depth, smaller = nearer the camera) scaled by the image width as
MediaPipe does for x, so all three axes share one unit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# MediaPipe's C++ logging is noisy on stderr; keep warnings and errors only.
os.environ.setdefault("GLOG_minloglevel", "2")

N_LANDMARKS = 478
N_BLENDSHAPES = 52

#: Landmark indices used throughout (MediaPipe face-mesh topology).
LIP_INNER_UPPER = 13
LIP_INNER_LOWER = 14
MOUTH_CORNER_LEFT = 61    # image-left (subject's right)
MOUTH_CORNER_RIGHT = 291
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10
EYE_OUTER_LEFT = 33       # image-left eye, outer corner
EYE_INNER_LEFT = 133
EYE_INNER_RIGHT = 362
EYE_OUTER_RIGHT = 263


@dataclass
class FaceObservation:
    """One detected face.

    Attributes:
        landmarks: ``[478, 3]`` float32, pixels (x, y) and width-scaled depth z.
        blendshapes: ``[52]`` float32 scores in [0, 1], order of :attr:`blendshape_names`.
        blendshape_names: the 52 ARKit-style names, in MediaPipe's order.
        matrix: ``[4, 4]`` float32 facial transformation matrix (canonical face → camera,
            MediaPipe's metric camera, centimetres).
    """

    landmarks: np.ndarray
    blendshapes: np.ndarray
    blendshape_names: list[str]
    matrix: np.ndarray


class FaceLandmarker:
    """Context-managed MediaPipe FaceLandmarker.

    Args:
        model_path: path of ``face_landmarker.task`` (see :mod:`synctalk.models`).
        video: True for VIDEO mode (temporal tracking; call :meth:`detect` with increasing
            timestamps), False for independent images.
        num_faces: maximum faces to return (prep tracks one and picks the nearest).
        min_confidence: detection/presence/tracking confidence threshold.
    """

    def __init__(self, model_path, *, video: bool = True, num_faces: int = 1,
                 min_confidence: float = 0.5) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        self._video = video
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(Path(model_path))),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=num_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        self._impl = vision.FaceLandmarker.create_from_options(opts)

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None

    def detect(self, rgb: np.ndarray, timestamp_ms: int = 0) -> list[FaceObservation]:
        """Detect faces in one ``[H, W, 3]`` uint8 RGB frame.

        Args:
            rgb: the frame.
            timestamp_ms: frame time; must strictly increase in VIDEO mode.

        Returns:
            Zero or more :class:`FaceObservation`, MediaPipe's order.
        """
        import mediapipe as mp

        h, w = rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        res = (self._impl.detect_for_video(image, int(timestamp_ms)) if self._video
               else self._impl.detect(image))
        out = []
        for i, lms in enumerate(res.face_landmarks):
            pts = np.array([[p.x * w, p.y * h, p.z * w] for p in lms], dtype=np.float32)
            cats = res.face_blendshapes[i] if res.face_blendshapes else []
            mat = (np.asarray(res.facial_transformation_matrixes[i], dtype=np.float32)
                   if res.facial_transformation_matrixes else np.eye(4, dtype=np.float32))
            out.append(FaceObservation(
                landmarks=pts,
                blendshapes=np.array([c.score for c in cats], dtype=np.float32),
                blendshape_names=[c.category_name for c in cats],
                matrix=mat,
            ))
        return out


def matrix_to_euler_deg(matrix: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees from a MediaPipe facial transformation matrix.

    MediaPipe's camera is OpenGL-style (y up, looking down −z); the rotation is converted
    to this project's OpenCV convention (x right, y down, z forward) and decomposed as
    ``R = Rz(roll) · Ry(yaw) · Rx(pitch)`` — the same convention as
    :func:`synctalk.synth.motion.euler_to_matrix`.
    """
    flip = np.diag([1.0, -1.0, -1.0])
    r = flip @ np.asarray(matrix, dtype=np.float64)[:3, :3] @ flip
    return rotation_to_euler_deg(r)


def rotation_to_euler_deg(r: np.ndarray) -> tuple[float, float, float]:
    """Inverse of ``R = Rz(roll) · Ry(yaw) · Rx(pitch)``; returns (yaw, pitch, roll) degrees."""
    yaw = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[2, 1], r[2, 2])
    roll = np.arctan2(r[1, 0], r[0, 0])
    return tuple(float(np.degrees(a)) for a in (yaw, pitch, roll))


@dataclass
class Track:
    """Per-frame face tracking of a video (one face).

    Attributes:
        detected: ``[N]`` bool.
        landmarks: ``[N, 478, 3]`` float32 pixels (NaN where not detected).
        blendshapes: ``[N, 52]`` float32 (NaN where not detected).
        matrices: ``[N, 4, 4]`` float32 facial transformation matrices (NaN where not detected).
        blendshape_names: the 52 names.
        fps: frame rate of the video.
    """

    detected: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray
    matrices: np.ndarray
    blendshape_names: list[str]
    fps: float


def track_video(path, model_path, *, max_frames: int | None = None) -> Track:
    """Run FaceLandmarker in VIDEO mode over every frame of a video file.

    When several faces are found the one nearest the previous frame's face is kept.
    """
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), "ffmpeg")
    fps = float(reader.get_meta_data().get("fps", 25.0))
    det, lms, bss, mats, names = [], [], [], [], []
    prev = None
    with FaceLandmarker(model_path, video=True, num_faces=2) as fl:
        for i, frame in enumerate(reader):
            if max_frames is not None and i >= max_frames:
                break
            faces = fl.detect(frame, int(round(i * 1000.0 / fps)))
            if faces:
                if prev is not None and len(faces) > 1:
                    faces.sort(key=lambda f: float(np.linalg.norm(f.landmarks[:, :2].mean(0) - prev)))
                f = faces[0]
                prev = f.landmarks[:, :2].mean(0)
                names = names or f.blendshape_names
                det.append(True), lms.append(f.landmarks), bss.append(f.blendshapes), mats.append(f.matrix)
            else:
                det.append(False)
                lms.append(np.full((N_LANDMARKS, 3), np.nan, np.float32))
                bss.append(np.full(N_BLENDSHAPES, np.nan, np.float32))
                mats.append(np.full((4, 4), np.nan, np.float32))
    reader.close()
    return Track(np.array(det, bool), np.stack(lms), np.stack(bss), np.stack(mats), names, fps)

"""The source face: photo, its 478 landmarks, a square head-and-shoulders crop, the person
matte and the background plate the moving person is composited over."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from synctalk.errors import InputError, require_file
from synctalk.fsutil import sha256_file

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_LANDMARKS = ASSETS / "grace_hopper_landmarks.json"

#: Face-oval landmark loop (MediaPipe topology), clockwise from the forehead.
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
             54, 103, 67, 109]


def default_photo_path() -> Path:
    """``grace_hopper.jpg`` (public domain) from matplotlib's bundled sample data."""
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not p.is_file():
        raise InputError(f"matplotlib's sample photo is missing ({p}); pass --image PHOTO.")
    return p


@dataclass
class SourceFace:
    """A photo and its face landmarks.

    Attributes:
        rgb: ``[H, W, 3]`` uint8.
        landmarks: ``[478, 3]`` float32: x, y in pixels of ``rgb``; z relative depth in the
            same pixel unit (MediaPipe's z scaled by the width; smaller = nearer).
    """

    rgb: np.ndarray
    landmarks: np.ndarray


def load_source_face(image=None, face_landmarker=None) -> SourceFace:
    """Load the photo to animate and its landmarks.

    The default photo uses the committed landmark file (no MediaPipe needed). Any other
    photo is tracked once with MediaPipe FaceLandmarker (``face_landmarker``: model path,
    else resolved by :func:`synctalk.models.resolve_face_landmarker`).
    """
    if image is None:
        photo = default_photo_path()
        meta = json.loads(DEFAULT_LANDMARKS.read_text())
        if sha256_file(photo) == meta["photo_sha256"]:
            return SourceFace(_read_rgb(photo), np.asarray(meta["landmarks"], np.float32))
        image = photo  # a different matplotlib build changed the photo: track it afresh
    photo = require_file(image, "face photo")
    rgb = _read_rgb(photo)
    from data_prep.face_tracking import FaceLandmarker
    from synctalk.models import resolve_face_landmarker

    with FaceLandmarker(resolve_face_landmarker(face_landmarker), video=False) as fl:
        faces = fl.detect(rgb)
    if not faces:
        raise InputError(f"no face found in {photo} — use a frontal, well-lit portrait.")
    # The largest face is the subject.
    areas = [np.ptp(f.landmarks[:, 0]) * np.ptp(f.landmarks[:, 1]) for f in faces]
    return SourceFace(rgb, faces[int(np.argmax(areas))].landmarks)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {path} — use a JPEG or PNG photo.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def crop_head_and_shoulders(face: SourceFace, size: int) -> SourceFace:
    """Square crop around the face (face height ≈ 45% of the side), resized to ``size``².

    Areas outside the photo are filled by edge replication.
    """
    lm = face.landmarks
    x0, y0 = lm[:, 0].min(), lm[:, 1].min()
    x1, y1 = lm[:, 0].max(), lm[:, 1].max()
    side = 2.2 * (y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1) + 0.12 * side
    scale = size / side
    m = np.array([[scale, 0.0, size / 2 - scale * cx],
                  [0.0, scale, size / 2 - scale * cy]], np.float32)
    rgb = cv2.warpAffine(face.rgb, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    pts = lm.copy()
    pts[:, :2] = lm[:, :2] * scale + m[:, 2]
    pts[:, 2] = lm[:, 2] * scale
    return SourceFace(rgb, pts.astype(np.float32))


def person_matte(face: SourceFace, iterations: int = 5) -> np.ndarray:
    """Soft person matte ``[H, W]`` float32 in [0, 1] by GrabCut seeded from the landmarks.

    Seeds: inside the face oval is certain foreground; a head region above it (hair, hat)
    and a body region below are probable foreground; the top corners and the side
    margins are probable background. Deterministic (OpenCV's RNG is reseeded).
    """
    h, w = face.rgb.shape[:2]
    lm = face.landmarks
    oval = lm[FACE_OVAL, :2]
    fx0, fy0 = oval.min(0)
    fx1, fy1 = oval.max(0)
    fw, fh = fx1 - fx0, fy1 - fy0
    cx = 0.5 * (fx0 + fx1)
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    # Head and hair: an ellipse larger than the face.
    cv2.ellipse(mask, (int(cx), int(fy0 + 0.3 * fh)), (int(0.8 * fw), int(1.0 * fh)), 0, 0, 360,
                int(cv2.GC_PR_FGD), -1)
    # Neck and shoulders: a trapezoid from the chin down to the bottom edge.
    body = np.array([[cx - 0.45 * fw, fy1], [cx + 0.45 * fw, fy1],
                     [cx + 1.6 * fw, h], [cx - 1.6 * fw, h]], np.int32)
    cv2.fillConvexPoly(mask, body, int(cv2.GC_PR_FGD))
    cv2.fillConvexPoly(mask, np.round(cv2.convexHull(oval)).astype(np.int32), int(cv2.GC_FGD))
    border = max(2, w // 64)
    mask[:border, :] = cv2.GC_BGD
    mask[: int(fy0), :border] = cv2.GC_BGD
    mask[: int(fy0), -border:] = cv2.GC_BGD
    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(face.rgb, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    # Keep the component holding the face; fill holes; soften the edge.
    n, lab = cv2.connectedComponents(fg)
    if n > 1:
        fg = (lab == lab[int(lm[1, 1]), int(lm[1, 0])]).astype(np.uint8)
    holes = cv2.floodFill(fg.copy() * 255, None, (0, 0), 255)[1] == 0
    fg[holes] = 1
    k = max(3, (w // 128) | 1)
    return cv2.GaussianBlur(fg.astype(np.float32), (k, k), 0)


def background_plate(rgb: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """The photo with the person removed: the matte (dilated) is inpainted. ``[H, W, 3]`` uint8."""
    h, w = matte.shape
    grow = max(3, w // 40)
    hole = cv2.dilate((matte > 0.05).astype(np.uint8), np.ones((grow, grow), np.uint8))
    # Inpaint at reduced size (large holes), then upsample only into the hole.
    small = max(64, w // 4)
    s_rgb = cv2.resize(rgb, (small, small), interpolation=cv2.INTER_AREA)
    s_hole = cv2.resize(hole, (small, small), interpolation=cv2.INTER_NEAREST)
    s_fill = cv2.inpaint(cv2.cvtColor(s_rgb, cv2.COLOR_RGB2BGR), s_hole, 5, cv2.INPAINT_TELEA)
    fill = cv2.cvtColor(cv2.resize(s_fill, (w, h), interpolation=cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB)
    out = rgb.copy()
    out[hole.astype(bool)] = fill[hole.astype(bool)]
    return out

"""Step "segment": background plate, person matte, head/neck/torso labels, face masks,
torso images, training targets and mouth boxes — from the frames and the face landmarks,
with no learned segmentation weights.

Method (pixels of the S×S crop; colours 0–255):

1. **Background plate.** A subsample of frames (≤ ``plate_frames``, bounded by
   ``plate_memory_mb``) is held in memory. Pass 1 excludes, per frame, a generous person
   prior built from the landmarks (the face grown to take in hair, plus a band widening
   from the mouth to below the frame bottom) and takes the per-pixel median of the rest.
   Pass 2 segments those frames by GrabCut, seeded by the difference to the pass-1 plate
   where it was seen and by the prior where not, and takes the median again excluding
   only the (dilated) person masks. Pixels seen in fewer than ``min_seen`` frames are
   inpainted at reduced resolution and flagged in ``background_seen.png``.
2. **Person matte.** At a working resolution (``work_size``): colour distance to the
   plate (max over channels), thresholded per frame from its distribution on known
   background, united with the face-mesh hull and the never-seen part of the plate,
   cleaned (morphology, the components of the face and of the torso, holes filled); then
   brought to full resolution edge-aware by a guided filter guided by the full-size frame.
   With ``selfie_segmenter`` (a user-supplied MediaPipe
   ``selfie_multiclass_256x256.tflite``) the raw foreground and the hair come from that
   model instead, and the same cleanup and refinement follow.
3. **Labels.** The neck line is the jaw contour (jaw angle – chin – jaw angle) extended
   sideways from the jaw angles. Head = the person above it, connected to the face; neck
   = person below it, inside a band under the chin, whose chroma matches the face skin;
   torso = the rest of the person.
4. **Face mask** = the face-oval polygon shrunk by ``face_shrink`` ∩ person.
5. **Torso image** (RGBA): the frame where the label is neck or torso, alpha = the soft
   matte; the body is extended upward behind the chin (each column repeats its colour
   just below the jaw) with alpha 255, so the torso field has a neck when the head moves.
   Pixels with alpha 0 have RGB 0; the background behind the head is the plate's job.
6. **Target** = ``alpha·frame + (1 − alpha)·plate``.
7. **Mouth boxes** from the outer-lip landmarks with a margin of ``mouth_margin`` × the
   mouth width.

Frames whose landmarks are not finite (face lost, ``valid`` false) use the nearest frame
with finite landmarks for the geometry.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from data_prep.subject import frame_name, params_from_dict
from synctalk.errors import InputError, ModelFileError, OutputError
from synctalk.fsutil import atomic_dir, atomic_path
from synctalk.synth.face import FACE_OVAL

log = logging.getLogger(__name__)

#: Background / head / neck / torso values of ``masks/%06d.png``.
BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3

#: Outer lip contour (MediaPipe face-mesh topology).
LIPS_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37,
              39, 40, 185]
#: Jaw contour from jaw angle to chin to jaw angle (a slice of :data:`FACE_OVAL`:
#: 397 … 152 … 172).
JAW = FACE_OVAL[12:25]
#: Outer eye corners (image left, image right) defining the face's x axis.
EYE_OUTER = (33, 263)

#: RGB colours of the labels in previews.
LABEL_COLOURS = np.array([[0, 0, 0], [230, 80, 60], [240, 200, 40], [60, 110, 230]], np.uint8)

#: Threads that segment frames at once. Per frame, nearly all the work is in OpenCV and
#: numpy calls that release the GIL, so frames are processed in parallel; each frame's
#: outputs depend on that frame alone, so the results do not depend on the count.
WORKERS = max(1, min(4, os.cpu_count() or 1))

_T = TypeVar("_T")
_R = TypeVar("_R")


def parallel_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int | None = None,
                 ahead: int = 2) -> Iterator[_R]:
    """``map(fn, items)`` on ``workers`` threads (default :data:`WORKERS`), results in
    order, at most ``workers · ahead`` items in flight (so memory stays bounded). On an
    error or an interrupt the items not yet started are cancelled. One worker runs inline."""
    workers = WORKERS if workers is None else workers
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="segment")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of the step (everything that changes its output).

    Attributes:
        plate_frames: most frames sampled (evenly over the clip) for the background plate.
        plate_memory_mb: bound on the sample stack (5 bytes per pixel per sampled frame).
        work_size: side (px) at which the person matte is computed before the guided
            filter brings it to full resolution (the frame side if smaller).
        min_seen: samples a pixel needs as background to count as seen (at most the
            number of sampled frames).
        threshold_min, threshold_max: bounds of the per-frame colour-distance threshold.
        threshold_scale: threshold = scale × the 99th percentile of the distance on
            known-background pixels, clipped to the bounds.
        edge_radius: guided-filter radius as a fraction of the frame side.
        edge_eps: guided-filter regularisation (guide in [0, 1]).
        face_shrink: the face-oval polygon is scaled by ``1 − face_shrink`` about its centre.
        mouth_margin: mouth-box margin as a fraction of the mouth width.
        jpeg_quality: quality of ``targets/*.jpg``.
        selfie_segmenter: optional path of MediaPipe's ``selfie_multiclass_256x256.tflite``.
    """

    plate_frames: int = 120
    plate_memory_mb: int = 160
    work_size: int = 256
    min_seen: int = 3
    threshold_min: float = 12.0
    threshold_max: float = 48.0
    threshold_scale: float = 2.0
    edge_radius: float = 0.008
    edge_eps: float = 1e-3
    face_shrink: float = 0.04
    mouth_margin: float = 0.2
    jpeg_quality: int = 95
    selfie_segmenter: str | None = None

    @classmethod
    def from_dict(cls, params: dict | None) -> "SegmentParams":
        """Build from a (partial) dict; unknown keys are an :class:`InputError`."""
        return params_from_dict(cls, params, "segment")


#: Defaults, as the dict the step runner records in the manifest.
DEFAULT_PARAMS = {f.name: f.default for f in fields(SegmentParams)}


# ---------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class FaceFrame:
    """Face geometry of one frame from its landmarks; all positions in pixels.

    Attributes:
        centre: ``[2]`` centre of the face oval.
        x_axis: ``[2]`` unit vector from the image-left to the image-right outer eye corner.
        up: ``[2]`` unit vector perpendicular to ``x_axis``, towards the forehead.
        width: extent of the face oval along ``x_axis`` (px).
        height: extent of the face oval along ``up`` (px).
        oval: ``[36, 2]`` face-oval loop (:data:`FACE_OVAL` order).
        jaw: ``[13, 2]`` jaw contour from jaw angle to chin to jaw angle (:data:`JAW` order).
        hull: ``[H, 2]`` convex hull of all landmarks.
    """

    centre: np.ndarray
    x_axis: np.ndarray
    up: np.ndarray
    width: float
    height: float
    oval: np.ndarray
    jaw: np.ndarray
    hull: np.ndarray

    def scaled(self, factor: float) -> "FaceFrame":
        """The same geometry in an image resized by ``factor`` (pixel centres map as
        ``x → (x + ½)·factor − ½``)."""
        move = lambda p: (p + 0.5) * factor - 0.5  # noqa: E731
        return FaceFrame(move(self.centre), self.x_axis, self.up, self.width * factor,
                         self.height * factor, move(self.oval), move(self.jaw), move(self.hull))

    def to_face(self, xy: np.ndarray) -> np.ndarray:
        """Image pixels ``[..., 2]`` → face coordinates ``[..., 2]`` (inverse of
        :meth:`to_image`)."""
        d = np.asarray(xy, np.float64) - self.centre
        return np.stack([d @ self.x_axis / (0.5 * self.width),
                         d @ self.up / (0.5 * self.height)], -1)

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Face coordinates ``[..., 2]`` (u along ``x_axis``, v along ``up``, in units of
        half the face width / height) → image pixels ``[..., 2]``."""
        uv = np.asarray(uv, np.float64)
        return (self.centre + uv[..., :1] * (0.5 * self.width) * self.x_axis
                + uv[..., 1:] * (0.5 * self.height) * self.up)


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """Geometry of one frame from its ``[478, 2 or 3]`` landmarks (pixels, finite)."""
    pts = np.asarray(landmarks, np.float64)[:, :2]
    x_axis = pts[EYE_OUTER[1]] - pts[EYE_OUTER[0]]
    x_axis /= max(np.linalg.norm(x_axis), 1e-6)
    up = np.array([x_axis[1], -x_axis[0]])
    oval = pts[FACE_OVAL]
    u, v = oval @ x_axis, oval @ up
    centre = 0.5 * (u.min() + u.max()) * x_axis + 0.5 * (v.min() + v.max()) * up
    hull = cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64)
    return FaceFrame(centre, x_axis, up, float(np.ptp(u)), float(np.ptp(v)), oval,
                     pts[JAW], hull)


def fill_missing_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace frames whose landmarks are not all finite by the nearest finite frame.

    Args:
        landmarks: ``[N, 478, 3]`` pixels, NaN where the face was not found.

    Returns:
        ``(filled [N, 478, 3], number of frames filled)``.

    Raises:
        InputError: no frame has landmarks.
    """
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    if not ok.any():
        raise InputError("track.npz has no frame with face landmarks — no face was found in "
                         "the video; check the input or re-run the track step.")
    good = np.flatnonzero(ok)
    pos = np.searchsorted(good, np.arange(len(landmarks))).clip(0, len(good) - 1)
    prev = good[np.maximum(pos - 1, 0)]
    nxt = good[pos]
    idx = np.arange(len(landmarks))
    nearest = np.where(np.abs(prev - idx) <= np.abs(nxt - idx), prev, nxt)
    return landmarks[nearest], int((~ok).sum())


def _fill_polygon(points: np.ndarray, size: int, convex: bool = False,
                  shape: tuple[int, int] | None = None) -> np.ndarray:
    """``[size, size]`` (or ``shape``) uint8 mask, 1 inside the polygon ``[P, 2]`` (pixels)."""
    mask = np.zeros(shape or (size, size), np.uint8)
    pts = np.round(np.asarray(points) * 16).astype(np.int32)
    if convex:
        cv2.fillConvexPoly(mask, pts, 1, cv2.LINE_8, 4)
    else:
        cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, 4)
    return mask


def head_region(face: FaceFrame, size: int, scale: float = 1.9, lift: float = 0.5) -> np.ndarray:
    """Face oval grown to take in hair and ears: scaled by ``scale`` about the face centre
    and extended upward by ``lift`` half-heights. ``[size, size]`` uint8 0/1."""
    uv = face.to_face(face.oval) * scale
    pts = face.to_image(np.concatenate([uv, uv + [0.0, lift]])).astype(np.float32)
    return _fill_polygon(cv2.convexHull(pts)[:, 0], size, convex=True)


def body_band(face: FaceFrame, size: int, slope: float = 2.0) -> np.ndarray:
    """Band from the mouth level down past the frame bottom, one face wide at the top and
    widening by ``slope`` px per px downward (neck, shoulders, torso). ``[size, size]`` uint8."""
    top_v, half = -0.4, 1.0
    depth = 2.0 * size / (0.5 * face.height)   # far beyond the frame, in half-heights
    spread = half + slope * depth * face.height / face.width
    uv = np.array([[-half, top_v], [half, top_v],
                   [spread, top_v - depth], [-spread, top_v - depth]])
    return _fill_polygon(face.to_image(uv), size, convex=True)


def person_prior(face: FaceFrame, size: int) -> np.ndarray:
    """Generous region the person may cover (pass-1 plate exclusion). ``[size, size]`` uint8."""
    return head_region(face, size) | body_band(face, size)


def above_jaw(face: FaceFrame, size: int, grow: float = 0.06) -> np.ndarray:
    """Region above the neck line: the jaw contour (jaw angle – chin – jaw angle), pushed
    out by ``grow`` face half-widths sideways (and half that downward) so the cheek's
    silhouette stays with the head, extended from the jaw angles sideways along the eye
    axis beyond the frame and closed over the top (so ears and hair beside the face are
    above it, the neck beside the jaw below). ``[size, size]`` uint8."""
    d = face.jaw - face.centre
    jaw = (face.centre + (d @ face.x_axis)[:, None] * (1 + grow) * face.x_axis
           + (d @ face.up)[:, None] * (1 + 0.5 * grow) * face.up)
    far = 3.0 * size
    ends = []
    for end in (jaw[0], jaw[-1]):
        out = np.sign((end - face.centre) @ face.x_axis) * face.x_axis
        ends.append((end + far * out, end + far * out + far * face.up))
    poly = np.concatenate([[ends[0][1], ends[0][0]], jaw, [ends[1][0], ends[1][1]]])
    return _fill_polygon(poly, size)


#: Neck band in face coordinates: ``|u| ≤ half width``, ``v`` from the mouth (−0.5) down
#: to 1.4 half-heights below the chin (−2.4).
NECK_HALF_WIDTH, NECK_TOP_V, NECK_BOTTOM_V = 0.75, -0.5, -2.4


#: Corners ``[4, 2]`` of the neck band in face coordinates.
NECK_BAND_UV = np.array([[-NECK_HALF_WIDTH, NECK_TOP_V], [NECK_HALF_WIDTH, NECK_TOP_V],
                         [NECK_HALF_WIDTH, NECK_BOTTOM_V], [-NECK_HALF_WIDTH, NECK_BOTTOM_V]])


def in_neck_band(face: FaceFrame, xy: np.ndarray) -> np.ndarray:
    """Whether pixels ``[..., 2]`` (x, y) lie in the neck band. ``[...]`` bool."""
    uv = face.to_face(xy)
    return ((np.abs(uv[..., 0]) <= NECK_HALF_WIDTH) & (uv[..., 1] <= NECK_TOP_V)
            & (uv[..., 1] >= NECK_BOTTOM_V))


def face_polygon_mask(face: FaceFrame, size: int, shrink: float) -> np.ndarray:
    """Face-oval polygon scaled by ``1 − shrink`` about its centre. ``[size, size]`` uint8."""
    return _fill_polygon(face.centre + (face.oval - face.centre) * (1.0 - shrink), size)


def mouth_boxes(landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Mouth boxes ``[N, 4]`` int32 ``x0, y0, x1, y1`` px (exclusive ``x1, y1``) around the
    outer-lip landmarks of ``[N, 478, ≥2]`` with ``margin`` × mouth width on every side,
    clipped to the frame."""
    lips = landmarks[:, LIPS_OUTER, :2].astype(np.float64)
    lo, hi = lips.min(1), lips.max(1)
    pad = margin * (hi[:, :1] - lo[:, :1])
    box = np.concatenate([np.floor(lo - pad), np.ceil(hi + pad) + 1], 1)
    return np.clip(box, 0, size).astype(np.int32)


# ---------------------------------------------------------------------------- images
def read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read frame {path} — re-run the ingest step.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _write_image(path: Path, img: np.ndarray, params: list[int] | None = None) -> None:
    """Write RGB / RGBA / single-channel ``img`` (format from the suffix)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), img, params or []):
        raise OutputError(f"cannot write {path}")


def _write_image_atomic(path: Path, img: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        _write_image(tmp, img)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: float, eps: float) -> np.ndarray:
    """Grey-guide guided filter (He et al. 2010) that also upsamples: the linear
    coefficients are computed at the resolution of ``src`` (the guide is area-resized to
    it) and applied to the full-resolution guide (the "fast guided filter").

    Args:
        guide: ``[H, W]`` float32 in [0, 1].
        src: ``[h, w]`` float32 to filter, ``h ≤ H``, ``w ≤ W``.
        radius: box radius in pixels of ``guide``.
        eps: regularisation (variance units of ``guide``).

    Returns:
        ``[H, W]`` float32: ``src`` smoothed and upsampled, following the edges of ``guide``.
    """
    (h_full, w_full), (h, w) = guide.shape, src.shape
    same = (h, w) == (h_full, w_full)
    g = guide if same else cv2.resize(guide, (w, h), interpolation=cv2.INTER_AREA)
    r = max(1, int(round(radius * w / w_full)))
    k = (2 * r + 1, 2 * r + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)

    m_g, m_p = mean(g), mean(src)
    a = (mean(g * src) - m_g * m_p) / (mean(g * g) - m_g * m_g + eps)
    b = m_p - a * m_g
    a, b = mean(a), mean(b)
    if not same:
        a = cv2.resize(a, (w_full, h_full), interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(b, (w_full, h_full), interpolation=cv2.INTER_LINEAR)
    a *= guide
    a += b
    return a


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions of ``[H, W]`` uint8 0/1 ``mask`` that do not reach the top,
    left or right border (a person may run off the bottom of the frame)."""
    h, w = mask.shape
    pad = np.zeros((h + 1, w + 2), np.uint8)
    pad[1:, 1:-1] = mask
    cv2.floodFill(pad, None, (0, 0), 2)
    return (pad[1:, 1:-1] != 2).astype(np.uint8)


def keep_person_components(fg: np.ndarray, seed: tuple[int, int], min_area: float) -> np.ndarray:
    """Keep the component of ``fg`` (``[H, W]`` uint8 0/1) holding pixel ``seed`` (x, y)
    and those of at least ``min_area`` pixels that touch the bottom border (torso)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    keep = np.zeros(n, bool)
    keep[lab[seed[1], seed[0]]] = True
    bottom = np.unique(lab[-1])
    keep[bottom[stats[bottom, cv2.CC_STAT_AREA] >= min_area]] = True
    keep[0] = False
    return keep[lab].astype(np.uint8)


def _inside_point(face: "FaceFrame", size: int) -> tuple[int, int]:
    """A pixel (x, y) inside the landmark hull: its vertex mean, clipped to the frame."""
    x, y = np.clip(np.round(face.hull.mean(0)), 0, size - 1).astype(int)
    return int(x), int(y)


# ---------------------------------------------------------------------------- person matte
@dataclass(frozen=True)
class Frame:
    """One frame at full and at working resolution.

    Attributes:
        rgb: ``[S, S, 3]`` uint8.
        face: geometry in pixels of ``rgb``.
        small: ``[s, s, 3]`` uint8, ``rgb`` area-resized to the working side ``s``.
        face_small: geometry in pixels of ``small``.
    """

    rgb: np.ndarray
    face: FaceFrame
    small: np.ndarray
    face_small: FaceFrame

    @classmethod
    def make(cls, rgb: np.ndarray, face: FaceFrame, work_size: int) -> "Frame":
        """Wrap ``rgb`` and its geometry; the working copy is ``work_size``² (no larger
        than ``rgb``)."""
        size = rgb.shape[0]
        if work_size >= size:
            return cls(rgb, face, rgb, face)
        small = cv2.resize(rgb, (work_size, work_size), interpolation=cv2.INTER_AREA)
        return cls(rgb, face, small, face.scaled(work_size / size))


#: ``segmenter(frame) -> (raw foreground [s, s] uint8 0/1, hair [s, s] bool or None)`` at
#: the working resolution.
RawSegmenter = Callable[[Frame], tuple[np.ndarray, "np.ndarray | None"]]


def _to_side(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` area-resized to ``side``² (unchanged when already that size)."""
    if img.shape[0] == side:
        return img
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


class DifferenceSegmenter:
    """Raw foreground by colour difference to a background plate, at working resolution.

    Args:
        plate: ``[s, s, 3]`` uint8 RGB plate at the working side ``s``.
        seen: ``[s, s]`` bool, pixels of the plate observed (not inpainted).
        params: thresholds.
    """

    def __init__(self, plate: np.ndarray, seen: np.ndarray, params: SegmentParams) -> None:
        self.plate = plate
        self.seen = seen
        self.params = params

    @classmethod
    def for_plate(cls, plate: "Plate", params: SegmentParams) -> "DifferenceSegmenter":
        """Segmenter against a full-resolution :class:`Plate`."""
        side = min(params.work_size, plate.rgb.shape[0])
        seen = _to_side(plate.seen.astype(np.float32), side) >= 0.5
        return cls(_to_side(plate.rgb, side), seen, params)

    def distance(self, small: np.ndarray) -> np.ndarray:
        """``[s, s]`` uint8 max-channel colour distance of a working-size frame to the plate."""
        r, g, b = cv2.split(cv2.absdiff(small, self.plate))
        return cv2.max(cv2.max(r, g), b)

    def threshold(self, dist: np.ndarray, face: FaceFrame) -> float:
        """Per-frame threshold from the distance on known background (seen, outside the
        person prior of ``face``, in working-size pixels), sampled every 2nd pixel."""
        known = self.seen & (person_prior(face, dist.shape[0]) == 0)
        sample = dist[::2, ::2][known[::2, ::2]]
        p = self.params
        if sample.size < 100:
            return p.threshold_min
        return float(np.clip(p.threshold_scale * np.percentile(sample, 99),
                             p.threshold_min, p.threshold_max))

    def __call__(self, frame: Frame) -> tuple[np.ndarray, None]:
        """Raw foreground ``[s, s]`` uint8 0/1: distant from the plate, or where the plate
        was never seen (the person covers it in nearly every frame); no hair estimate."""
        dist = self.distance(frame.small)
        return ((dist > self.threshold(dist, frame.face_small)) | ~self.seen).astype(np.uint8), None

    def grabcut(self, frame: Frame, iterations: int = 3) -> tuple[np.ndarray, None]:
        """Raw foreground ``[s, s]`` uint8 0/1 by GrabCut at half the working resolution,
        seeded by the difference where the plate was seen and by the person prior where
        it was not (the :data:`RawSegmenter` contract, like :meth:`__call__`).

        Seeds: face hull = foreground; seen and near the plate = background (certain
        outside the person prior, probable inside it); seen and far from the plate, and
        unseen inside the person prior = probable foreground.
        """
        side, face = frame.small.shape[0], frame.face_small
        dist = self.distance(frame.small)
        far = dist > self.threshold(dist, face)
        prior = person_prior(face, side) > 0
        seeds = np.full((side, side), cv2.GC_PR_BGD, np.uint8)
        seeds[self.seen & ~far & ~prior] = cv2.GC_BGD
        seeds[(self.seen & far) | (~self.seen & prior)] = cv2.GC_PR_FGD
        seeds[_fill_polygon(face.hull, side, convex=True) > 0] = cv2.GC_FGD
        half = max(32, side // 2)
        seeds = cv2.resize(seeds, (half, half), interpolation=cv2.INTER_NEAREST)
        cv2.setRNGSeed(0)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(_to_side(frame.small, half), seeds, None, bgd, fgd, iterations,
                    cv2.GC_INIT_WITH_MASK)
        fg = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32)
        fg = cv2.resize(fg, (side, side), interpolation=cv2.INTER_LINEAR) > 0.5
        return fg.astype(np.uint8), None


class SelfieSegmenter:
    """Raw foreground and hair from MediaPipe's multiclass selfie segmenter.

    The model is user-supplied (``selfie_multiclass_256x256.tflite``; classes background,
    hair, body skin, face skin, clothes, others). Use as a context manager.

    Raises:
        ModelFileError: the path is missing or is not a loadable segmenter model.
    """

    def __init__(self, model_path) -> None:
        path = Path(model_path).expanduser()
        self._impl = None
        self._lock = threading.Lock()
        if path.exists() and not path.is_file():
            raise ModelFileError(f"selfie segmenter model {path} is not a file — pass the path "
                                 "of selfie_multiclass_256x256.tflite.")
        if not path.is_file():
            raise ModelFileError(f"selfie segmenter model not found: {path} — pass the path of "
                                 "MediaPipe's selfie_multiclass_256x256.tflite, or leave the "
                                 "option out to segment by background difference.")
        from mediapipe.tasks.python import BaseOptions, vision

        opts = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                            output_confidence_masks=True,
                                            output_category_mask=False)
        try:
            self._impl = vision.ImageSegmenter.create_from_options(opts)
        except (RuntimeError, ValueError) as e:
            raise ModelFileError(f"{path} is not a MediaPipe image-segmenter model ({e}); "
                                 "use selfie_multiclass_256x256.tflite.") from e

    def __enter__(self) -> "SelfieSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None

    def __call__(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """``(foreground [s, s] uint8 0/1, hair [s, s] bool)`` of a frame."""
        import mediapipe as mp

        small = np.ascontiguousarray(frame.small)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=small)
        with self._lock:  # one MediaPipe graph: one frame at a time
            conf = self._impl.segment(image).confidence_masks
        if len(conf) < 2:
            raise ModelFileError("the selfie segmenter returned fewer than 2 classes — use "
                                 "selfie_multiclass_256x256.tflite.")
        side = small.shape[:2]
        background = conf[0].numpy_view().reshape(side)
        hair = conf[1].numpy_view().reshape(side)
        return (background < 0.5).astype(np.uint8), hair > 0.5


def clean_foreground(raw: np.ndarray, face: FaceFrame) -> np.ndarray:
    """Person mask ``[s, s]`` uint8 0/1 from a raw foreground of the same size: specks
    opened away, the face hull added, gaps closed, the components of the face and of the
    torso kept, holes filled (``face`` in pixels of ``raw``)."""
    side = raw.shape[0]
    hull = _fill_polygon(face.hull, side, convex=True)
    r = max(1, side // 256)
    fg = cv2.morphologyEx(raw, cv2.MORPH_OPEN, _disk(r)) | hull
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, _disk(2 * r))
    return fill_holes(keep_person_components(fg, _inside_point(face, side), 0.005 * side * side))


def person_matte(frame: Frame, raw: np.ndarray, params: SegmentParams) -> np.ndarray:
    """Soft full-resolution person matte from a working-resolution raw foreground.

    Returns:
        ``[S, S]`` uint8 alpha, 0–255 (255 on the face hull); the person is
        ``alpha >= 128``.
    """
    size = frame.rgb.shape[0]
    fg = clean_foreground(raw, frame.face_small).astype(np.float32)
    guide = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) * np.float32(1 / 255)
    alpha = guided_filter(guide, fg, params.edge_radius * size, params.edge_eps)
    alpha = cv2.convertScaleAbs(cv2.max(alpha, 0.0), alpha=255.0)  # rounds and saturates
    alpha[_fill_polygon(frame.face.hull, size, convex=True) > 0] = 255
    return alpha


# ---------------------------------------------------------------------------- plate
def masked_median(stack: np.ndarray, excluded: np.ndarray, chunk_bytes: int = 1 << 20
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over frames of the samples not excluded.

    Args:
        stack: ``[K, H, W, 3]`` uint8 frames.
        excluded: ``[K, H, W]`` bool, True where a frame's pixel must not be used.
        chunk_bytes: working memory per block of rows (sorted samples and gather indices).

    Returns:
        ``(median [H, W, 3] uint8 (lower median; 255 where no sample), count [H, W] int)``.
    """
    k, h, w, _ = stack.shape
    count = k - excluded.sum(0, dtype=np.int32)
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, chunk_bytes // (w * 3 * (2 * k + 32)))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        vals = stack[:, r0:r1].astype(np.uint16)
        vals[excluded[:, r0:r1]] = 256                      # excluded sorts last
        vals.sort(axis=0)
        mid = (np.maximum(count[r0:r1], 1) - 1) // 2
        med = np.take_along_axis(vals, mid[None, :, :, None], axis=0)[0]
        out[r0:r1] = np.minimum(med, 255)
    return out, count


def inpaint_unseen(plate: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Fill the unseen pixels of ``[S, S, 3]`` uint8 ``plate`` by Telea inpainting at a
    quarter of the resolution (≥ 64 px), upsampled into the unseen pixels only."""
    if seen.all():
        return plate
    h, w = seen.shape
    small = (max(64, w // 4), max(64, h // 4))
    hole = cv2.resize((~seen).astype(np.float32), small, interpolation=cv2.INTER_AREA) > 0
    low = cv2.inpaint(cv2.resize(plate, small, interpolation=cv2.INTER_AREA),
                      hole.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    up = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    out = plate.copy()
    out[~seen] = up[~seen]
    return out


def plate_sample(n: int, valid: np.ndarray, size: int, params: SegmentParams) -> np.ndarray:
    """Indices of the frames sampled for the plate: evenly spread over the valid frames
    (all frames when none is valid), at most ``plate_frames`` and what fits in
    ``plate_memory_mb`` at 5 bytes per pixel (full-size frames and exclusion masks, plus
    working-size copies)."""
    pool = np.flatnonzero(valid) if valid.any() else np.arange(n)
    fit = int(params.plate_memory_mb * 2 ** 20 // (5 * size * size))
    k = max(1, min(len(pool), params.plate_frames, fit))
    return pool[np.unique(np.round(np.linspace(0, len(pool) - 1, k)).astype(int))]


@dataclass
class Plate:
    """Background plate and what was observed.

    Attributes:
        rgb: ``[S, S, 3]`` uint8, unseen pixels inpainted.
        seen: ``[S, S]`` bool, observed as background in ≥ ``min_seen`` sampled frames.
        frames: indices of the sampled frames.
    """

    rgb: np.ndarray
    seen: np.ndarray
    frames: np.ndarray

    @property
    def coverage(self) -> float:
        """Fraction of pixels seen."""
        return float(self.seen.mean())


def build_plate(frame_paths: list[Path], faces: list[FaceFrame], valid: np.ndarray,
                params: SegmentParams, segmenter: RawSegmenter | None = None) -> Plate:
    """Estimate the background plate (see the module docstring, step 1).

    Args:
        frame_paths: the N frame files.
        faces: geometry of each frame.
        valid: ``[N]`` bool, frames with tracked faces (preferred for sampling).
        params: step parameters.
        segmenter: raw foreground source for the exclusion masks; None for the two-pass
            background difference (pass 1: landmark prior; pass 2: GrabCut seeded by the
            difference to the pass-1 median).

    Raises:
        InputError: no pixel is ever seen as background.
    """
    size = read_rgb(frame_paths[0]).shape[0]
    idx = plate_sample(len(frame_paths), valid, size, params)
    min_seen = min(params.min_seen, len(idx))
    side = min(params.work_size, size)
    stack = np.empty((len(idx), size, size, 3), np.uint8)
    small = np.empty((len(idx), side, side, 3), np.uint8)

    def load(k: int) -> Frame:
        stack[k] = read_rgb(frame_paths[idx[k]])
        frame = Frame.make(stack[k], faces[idx[k]], params.work_size)
        small[k] = frame.small
        return replace(frame, small=small[k])

    frames = list(parallel_map(load, range(len(idx))))
    if segmenter is None:
        prior = np.stack([person_prior(f.face_small, side) > 0 for f in frames])
        median, count = masked_median(small, prior)
        del prior
        segmenter = DifferenceSegmenter(median, count >= min_seen, params).grabcut
    excluded = np.empty((len(idx), size, size), bool)
    grow = _disk(max(2, size // 100))

    def exclude(k: int) -> None:
        frame = frames[k]
        person = clean_foreground(segmenter(frame)[0], frame.face_small).astype(np.float32)
        person = cv2.resize(person, (size, size), interpolation=cv2.INTER_LINEAR) > 0.01
        excluded[k] = cv2.dilate(person.astype(np.uint8), grow) > 0

    for _ in parallel_map(exclude, range(len(idx))):
        pass
    median, count = masked_median(stack, excluded)
    seen = count >= min_seen
    if not seen.any():
        raise InputError("the background is never visible around the person, so no background "
                         "plate can be estimated — use a clip with some visible background.")
    return Plate(inpaint_unseen(median, seen), seen, idx)


# ---------------------------------------------------------------------------- per frame
@dataclass
class FrameSegmentation:
    """All per-frame outputs of the step.

    Attributes:
        alpha: ``[S, S]`` uint8 soft person matte (0–255).
        labels: ``[S, S]`` uint8 (:data:`BACKGROUND`, :data:`HEAD`, :data:`NECK`, :data:`TORSO`).
        face: ``[S, S]`` uint8 0/255 face mask.
        torso: ``[S, S, 4]`` uint8 RGBA torso image.
        target: ``[S, S, 3]`` uint8 RGB training target.
    """

    alpha: np.ndarray
    labels: np.ndarray
    face: np.ndarray
    torso: np.ndarray
    target: np.ndarray


def skin_model(rgb: np.ndarray, face: FaceFrame) -> tuple[np.ndarray, np.ndarray]:
    """Chroma model of the face skin: mean ``[2]`` and inverse covariance ``[2, 2]`` of
    (Cr, Cb) (YCrCb, 0–255) over the inner face (the oval shrunk by 30 %, every 2nd pixel),
    so shading changes between face and neck matter little."""
    inner = face_polygon_mask(face, rgb.shape[0], 0.3)
    x, y, w, h = cv2.boundingRect(inner)
    roi = (slice(y, y + h, 2), slice(x, x + w, 2))
    chroma = cv2.cvtColor(np.ascontiguousarray(rgb[roi]), cv2.COLOR_RGB2YCrCb)[inner[roi] > 0]
    chroma = chroma[:, 1:].astype(np.float64)
    if len(chroma) < 10:
        return np.array([150.0, 110.0]), np.eye(2) / 100.0
    cov = np.cov(chroma.T) + np.eye(2) * 4.0
    return chroma.mean(0), np.linalg.inv(cov)


def neck_mask(rgb: np.ndarray, person: np.ndarray, below: np.ndarray, face: FaceFrame,
              max_d2: float = 9.0) -> np.ndarray:
    """Neck ``[S, S]`` bool: person pixels below the jaw line inside the neck band whose
    chroma is within Mahalanobis distance² ``max_d2`` of the face skin, in components
    touching the jaw line (skin of the neck, not the collar, tie or shirt), filled down
    each column from the jaw to the lowest such pixel."""
    size = person.shape[0]
    out = np.zeros((size, size), bool)
    corners = face.to_image(NECK_BAND_UV)
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int), 0, size)
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 0, size)
    if x1 <= x0 or y1 <= y0:
        return out
    roi = (slice(y0, y1), slice(x0, x1))
    band = _fill_polygon(corners - [x0, y0], 0, convex=True, shape=(y1 - y0, x1 - x0))
    band &= (person[roi] & below[roi]).view(np.uint8)
    if not band.any():
        return out
    mean, inv = skin_model(rgb, face)
    d = cv2.cvtColor(rgb[roi], cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
    d -= mean.astype(np.float32)
    d2 = (inv[0, 0] * d[..., 0] ** 2 + 2 * inv[0, 1] * d[..., 0] * d[..., 1]
          + inv[1, 1] * d[..., 1] ** 2)
    skin = ((d2 < max_d2) & (band > 0)).astype(np.uint8)
    skin = cv2.morphologyEx(skin, cv2.MORPH_CLOSE, _disk(2))
    skin &= band
    jaw_edge = cv2.dilate((~below[roi]).view(np.uint8), _disk(2)) & skin
    n, lab = cv2.connectedComponents(skin, connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(lab[jaw_edge > 0])] = True
    keep[0] = False
    skin = keep[lab]
    # Columns are filled from the jaw down to their lowest neck-skin pixel (shadows and
    # noise inside the neck are still neck).
    h = y1 - y0
    lowest = np.where(skin.any(0), h - 1 - skin[::-1].argmax(0), -1)
    out[roi] = (np.arange(h)[:, None] <= lowest[None, :]) & (band > 0)
    return out


def label_map(rgb: np.ndarray, person: np.ndarray, face: FaceFrame,
              hair: np.ndarray | None = None) -> np.ndarray:
    """Head/neck/torso labels ``[S, S]`` uint8 of a person mask ``[S, S]`` bool.

    Head: the part of the person above the jaw line connected to the face (plus ``hair``
    pixels above the jaw line when a segmenter gave them); neck: :func:`neck_mask`;
    torso: the rest of the person.
    """
    size = person.shape[0]
    up = above_jaw(face, size) > 0
    _, lab = cv2.connectedComponents((person & up).astype(np.uint8), connectivity=8)
    x, y = _inside_point(face, size)
    head = (cv2.compare(lab, int(lab[y, x]), cv2.CMP_EQ) > 0) & (lab[y, x] > 0)
    if hair is not None:
        head |= hair & person & up
    labels = np.where(person, np.uint8(TORSO), np.uint8(BACKGROUND))
    labels[neck_mask(rgb, person, ~up, face)] = NECK
    labels[head] = HEAD
    return labels


def extend_body(rgb: np.ndarray, labels: np.ndarray, face: FaceFrame
                ) -> tuple[np.ndarray, np.ndarray]:
    """Continue the body upward behind the head, column by column (as ER-NeRF's
    preprocessing does): where a column's topmost neck or torso pixel has head above it,
    the head pixels up to ``0.25 × face height`` (the top is neck or inside the neck band)
    or ``0.05 × face height`` (elsewhere) above, and below the mouth (the neck band's top),
    take the mean body colour of the 5 rows from that top, smoothed across neighbouring
    columns.

    Returns:
        ``(colours [S, S, 3] uint8 (the frame, changed where filled), filled [S, S] bool)``.
    """
    size = labels.shape[0]
    body = labels >= NECK
    filled = np.zeros(labels.shape, bool)
    cols = np.flatnonzero(body.any(0))
    top = body[:, cols].argmax(0)
    under_head = (top > 0) & (labels[np.maximum(top - 1, 0), cols] == HEAD)
    cols, top = cols[under_head], top[under_head]
    if cols.size == 0:
        return rgb, filled
    src_rows = np.minimum(top[None, :] + np.arange(5)[:, None], size - 1)          # [5, C]
    weight = body[src_rows, cols[None, :]].astype(np.float32)[..., None]
    colour = (rgb[src_rows, cols[None, :]] * weight).sum(0) / weight.sum(0)       # [C, 3]
    colour = cv2.blur(colour[None].astype(np.float32), (9, 1), borderType=cv2.BORDER_REPLICATE)[0]
    is_neck = (labels[top, cols] == NECK) | in_neck_band(face, np.stack([cols, top], 1))
    length = np.where(is_neck, 0.25, 0.05) * face.height
    steps = np.arange(1, int(np.ceil(length.max())) + 1)[:, None]                 # [L, 1]
    rows = top[None, :] - steps                                                   # [L, C]
    cc = np.broadcast_to(cols[None, :], rows.shape)
    below_mouth = face.to_face(np.stack([cc, rows], -1))[..., 1] <= NECK_TOP_V
    take = ((rows >= 0) & (steps <= length[None, :]) & below_mouth
            & (labels[rows.clip(0), cc] == HEAD))
    r, c = rows[take], cc[take]
    out = rgb.copy()
    out[r, c] = np.round(np.broadcast_to(colour[None], rows.shape + (3,))[take]).astype(np.uint8)
    filled[r, c] = True
    return out, filled


def torso_rgba(rgb: np.ndarray, alpha: np.ndarray, labels: np.ndarray, face: FaceFrame,
               edge_radius: float) -> np.ndarray:
    """``[S, S, 4]`` uint8 torso image: neck + torso of the frame with the soft matte as
    alpha (its fringe outside the person too, except within ``2 × edge_radius`` px of the
    head), the body extended upward behind the head (:func:`extend_body`) with alpha 255,
    RGB 0 where alpha is 0."""
    k = 2 * max(2, int(round(2 * edge_radius))) + 1
    head = (labels == HEAD).astype(np.uint8)
    near_head = cv2.dilate(head, np.ones((k, k), np.uint8)) > 0
    a = alpha.copy()
    a[(head > 0) | ((labels == BACKGROUND) & near_head)] = 0
    colours, filled = extend_body(rgb, labels, face)
    a[filled] = 255
    out = cv2.cvtColor(colours, cv2.COLOR_RGB2RGBA)
    out[..., 3] = a
    return cv2.bitwise_and(out, out, mask=a)


def composite(rgb: np.ndarray, plate: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``a·rgb + (1 − a)·plate`` with ``a = alpha / 255`` (``alpha [S, S]`` uint8),
    ``[S, S, 3]`` uint8: exactly ``rgb`` where alpha is 255 and ``plate`` where it is 0;
    only the soft edge is blended."""
    out = plate.copy()
    cv2.copyTo(rgb, cv2.compare(alpha, 255, cv2.CMP_EQ), out)
    pts = cv2.findNonZero(cv2.inRange(alpha, 1, 254))
    if pts is None:
        return out
    pts = pts.reshape(-1, 2)                  # (x, y); OpenCV 4 adds a middle axis
    edge = (pts[:, 1], pts[:, 0])
    a = alpha[edge][:, None].astype(np.float32) * np.float32(1 / 255)
    out[edge] = np.round(a * rgb[edge] + (1.0 - a) * plate[edge]).astype(np.uint8)
    return out


def segment_frame(rgb: np.ndarray, face: FaceFrame, plate: np.ndarray,
                  segmenter: RawSegmenter, params: SegmentParams) -> FrameSegmentation:
    """Segment one ``[S, S, 3]`` uint8 RGB frame (steps 2–6 of the module docstring).

    Args:
        rgb: the frame.
        face: its geometry (pixels of ``rgb``).
        plate: ``[S, S, 3]`` uint8 background plate.
        segmenter: raw foreground at the working resolution.
        params: step parameters.
    """
    frame = Frame.make(rgb, face, params.work_size)
    raw, hair = segmenter(frame)
    alpha = person_matte(frame, raw, params)
    person = alpha >= 128
    if hair is not None:
        hair = cv2.resize(hair.astype(np.uint8), person.shape[::-1],
                          interpolation=cv2.INTER_NEAREST) > 0
    labels = label_map(rgb, person, face, hair)
    face_mask = (face_polygon_mask(face, rgb.shape[0], params.face_shrink) & person) * np.uint8(255)
    target = composite(rgb, plate, alpha)
    torso = torso_rgba(rgb, alpha, labels, face, params.edge_radius * rgb.shape[0])
    return FrameSegmentation(alpha, labels, face_mask, torso, target)


# ---------------------------------------------------------------------------- the step
def _frame_paths(subject: Path, n: int) -> list[Path]:
    paths = [subject / "frames" / frame_name(i, "jpg") for i in range(n)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {n} frames are missing (first: {missing[0]}) — "
                         "re-run the ingest step.")
    return paths


def _load_track(subject: Path) -> tuple[np.ndarray, np.ndarray]:
    path = subject / "track.npz"
    if not path.is_file():
        raise InputError(f"{path} not found — run the track step first.")
    with np.load(path) as z:
        landmarks = z["landmarks"].astype(np.float32)
        valid = z["valid"].astype(bool) if "valid" in z else np.isfinite(landmarks).all(axis=(1, 2))
    if landmarks.ndim != 3 or landmarks.shape[1:] != (478, 3) or len(valid) != len(landmarks):
        raise InputError(f"{path}: expected landmarks [N, 478, 3] and valid [N], got "
                         f"{landmarks.shape} and {valid.shape}.")
    return landmarks, valid


def _open_segmenter(params: SegmentParams, stack: ExitStack) -> SelfieSegmenter | None:
    if params.selfie_segmenter is None:
        return None
    return stack.enter_context(SelfieSegmenter(params.selfie_segmenter))


def run(subject, params: dict | None = None) -> dict:
    """Run the step on a subject directory (see the module docstring).

    Reads ``frames/``, ``track.npz``; writes ``background.png``, ``background_seen.png``
    (255 = observed, 0 = inpainted), ``masks/``, ``face_masks/``, ``torso/``, ``targets/``
    and ``mouth_boxes.npy``, each atomically (per-frame directories are renamed into place
    when complete).

    Returns:
        ``{"frames", "plate_frames", "plate_coverage", "person_area", "landmarks_filled",
        "seconds_per_frame", "segmenter"}`` — person area is the mean fraction of the
        frame covered by the person.
    """
    t0 = time.perf_counter()
    subject = Path(subject)
    p = SegmentParams.from_dict(params)
    landmarks, valid = _load_track(subject)
    landmarks, n_filled = fill_missing_landmarks(landmarks)
    n = len(landmarks)
    paths = _frame_paths(subject, n)
    faces = [face_frame(lm) for lm in landmarks]
    height, size = read_rgb(paths[0]).shape[:2]
    if height != size:
        raise InputError(f"frames must be square crops, {paths[0]} is {size}×{height} — "
                         "re-run the ingest step.")
    with ExitStack() as ctx:
        selfie = _open_segmenter(p, ctx)
        plate = build_plate(paths, faces, valid, p, selfie)
        segmenter = selfie or DifferenceSegmenter.for_plate(plate, p)
        t_plate = time.perf_counter() - t0
        log.info("segment: plate from %d frames, %.1f%% seen, %.1f s", len(plate.frames),
                 100 * plate.coverage, t_plate)
        _write_image_atomic(subject / "background.png", plate.rgb)
        _write_image_atomic(subject / "background_seen.png", plate.seen.astype(np.uint8) * 255)
        with atomic_path(subject / "mouth_boxes.npy") as tmp:
            np.save(tmp, mouth_boxes(landmarks, size, p.mouth_margin))
        area = _write_frames(subject, paths, faces, plate, segmenter, p)
    seconds = time.perf_counter() - t0
    return {"frames": n, "plate_frames": int(len(plate.frames)),
            "plate_coverage": round(plate.coverage, 4), "person_area": round(area, 4),
            "landmarks_filled": n_filled, "seconds_per_frame": round(seconds / n, 4),
            "segmenter": "selfie" if p.selfie_segmenter else "difference"}


def _write_frames(subject: Path, paths: list[Path], faces: list[FaceFrame], plate: Plate,
                  segmenter: RawSegmenter, p: SegmentParams) -> float:
    """Read each frame once, segment it and write the per-frame directories (each renamed
    into place when complete). Returns the mean fraction of the frame the person covers."""
    # Fast zlib settings: masks compress well unfiltered, RGBA torso images with "up" + RLE.
    png = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    png_rgba = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
                cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    jpg = [cv2.IMWRITE_JPEG_QUALITY, int(p.jpeg_quality)]
    area = 0.0
    with ExitStack() as dirs:
        out = {name: dirs.enter_context(atomic_dir(subject / name))
               for name in ("masks", "face_masks", "torso", "targets")}

        def one(i: int) -> float:
            seg = segment_frame(read_rgb(paths[i]), faces[i], plate.rgb, segmenter, p)
            _write_image(out["masks"] / frame_name(i, "png"), seg.labels, png)
            _write_image(out["face_masks"] / frame_name(i, "png"), seg.face, png)
            _write_image(out["torso"] / frame_name(i, "png"), seg.torso, png_rgba)
            _write_image(out["targets"] / frame_name(i, "jpg"), seg.target, jpg)
            return float((seg.labels > 0).mean())

        for a in tqdm(parallel_map(one, range(len(paths))), total=len(paths), desc="segment",
                      unit="frame", leave=False, disable=None):
            area += a
    return area / len(paths)


# ---------------------------------------------------------------------------- preview
def _checkerboard(size: int, cell: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] // cell
    return np.where(((yy + xx) % 2 == 0)[..., None], 200, 150).astype(np.float32)


def _tile(subject: Path, folder: str, i: int, ext: str, tile: int, colour: bool) -> np.ndarray:
    """One per-frame image resized to ``tile``² (RGB/RGBA when ``colour``, else as stored)."""
    path = subject / folder / frame_name(i, ext)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path} is missing — run the segment step first.")
    if not colour:
        return cv2.resize(img, (tile, tile), interpolation=cv2.INTER_NEAREST)
    img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)


def contact_sheet(subject, frame_indices, tile: int = 128) -> np.ndarray:
    """Preview of the step's outputs: one row per frame, columns frame, labels over the
    frame (head red, neck yellow, torso blue), face mask, torso RGBA over a checkerboard,
    target.

    Args:
        subject: subject directory with the step's outputs.
        frame_indices: frames to show.
        tile: side of each tile in pixels.

    Returns:
        ``[len(frame_indices) · tile, 5 · tile, 3]`` uint8 RGB.
    """
    subject = Path(subject)
    board = _checkerboard(tile)
    rows = []
    for i in frame_indices:
        frame = _tile(subject, "frames", i, "jpg", tile, True).astype(np.float32)
        labels = LABEL_COLOURS[np.minimum(_tile(subject, "masks", i, "png", tile, False), TORSO)]
        over = np.where(labels.any(2, keepdims=True), 0.45 * frame + 0.55 * labels, 0.3 * frame)
        face = cv2.cvtColor(_tile(subject, "face_masks", i, "png", tile, False), cv2.COLOR_GRAY2RGB)
        rgba = _tile(subject, "torso", i, "png", tile, True).astype(np.float32)
        a = rgba[..., 3:] / 255.0
        torso = a * rgba[..., :3] + (1 - a) * board
        target = _tile(subject, "targets", i, "jpg", tile, True)
        rows.append(np.hstack([frame.astype(np.uint8), over.astype(np.uint8), face,
                               torso.astype(np.uint8), target]))
    return np.vstack(rows)

"""A prepared subject as training data, and the per-step ray sampler.

:class:`SubjectData` loads a subject directory (``data_prep.subject`` layout) at the training
size: targets, the torso-over-background images the head is composited onto, label masks,
face-region boxes, blendshapes, cameras in the normalised head box
(:mod:`synctalk.nerf.geometry`) and the train/val splits. Every missing prep step is an
:class:`InputError` naming the step and the command that makes it.

Images are kept as uint8 tensors (``[N, H, W, 3]``; ~200 kB per frame at 256², 0.8 MB at
512²). Per-frame boxes are int64 ``[N, 4]`` ``x0, y0, x1, y1`` px with ``x1, y1`` exclusive.

:class:`RaySampler` draws the pixels of one training step (see its docstring).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synctalk.errors import InputError
from synctalk.nerf.geometry import AABB, HeadBox, aabb_corners, box_cameras, fit_head_box

log = logging.getLogger(__name__)

#: Prep steps training needs, with the files each must have left.
REQUIRED_STEPS: dict[str, tuple[str, ...]] = {
    "ingest": ("frames", "audio.wav"),
    "track": ("track.npz",),
    "segment": ("targets", "masks", "face_masks", "torso", "background.png", "mouth_boxes.npy"),
    "stabilize": ("poses.npz",),
    "blendshapes": ("blendshapes.npz",),
    "splits": ("splits.json",),
}
#: Label values of ``masks/``.
BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3
#: Bit set in :attr:`SubjectData.labels` where the face mask is on.
FACE_BIT = 4
#: MediaPipe face-oval landmarks.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
NOSE_TIP, CHIN = 1, 152
#: Brows, eye corners and lids: the region the blendshapes (brows + blinks) may act on.
EYE_REGION = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 33, 133, 362, 263, 145, 159, 374, 386)


def prep_hint(subject: Path) -> str:
    return (f"run `synctalk prep VIDEO --out {subject}` (it resumes at the first unfinished "
            "step)")


def check_subject(subject) -> dict:
    """Validate a subject directory for training; returns its manifest data.

    Raises:
        InputError: not a directory, no manifest, or a prep step not finished / its output
            missing — the message names the step and the prep command.
    """
    from data_prep.subject import Manifest

    subject = Path(subject)
    if not subject.is_dir():
        raise InputError(f"subject directory not found: {subject} — {prep_hint(subject)}.")
    manifest = Manifest.load(subject)
    if manifest is None:
        raise InputError(f"{subject} is not a subject directory (no manifest.json) — "
                         f"{prep_hint(subject)}.")
    for step, files in REQUIRED_STEPS.items():
        rec = manifest.step(step) or {}
        if rec.get("status") != "done":
            raise InputError(f"{subject}: prep step '{step}' has not finished — {prep_hint(subject)}.")
        for name in files:
            if not (subject / name).exists():
                raise InputError(f"{subject}: {name} (output of prep step '{step}') is missing — "
                                 f"{prep_hint(subject)}, with --force if the step is recorded "
                                 "as done.")
    return manifest.data


def subject_identity(subject) -> dict:
    """What a model remembers of its subject: path, source sha256, size, fps, frame count."""
    data = check_subject(subject)
    info = (data["steps"]["ingest"].get("info") or {})
    n = len(list((Path(subject) / "frames").glob("*.jpg")))
    return {"path": str(Path(subject).resolve()), "source_sha256": data["source"].get("sha256"),
            "size": int(info.get("size") or data["steps"]["ingest"]["params"].get("size")),
            "fps": float(info["fps"]), "n_frames": n}


def _read(path: Path, flags: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), flags)
    if img is None:
        raise InputError(f"cannot read {path} — the subject is damaged; re-run prep with --force.")
    return img


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    import cv2

    if img.shape[0] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def read_frame_images(subject: Path, i: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``i`` at ``size``: ``(target [H,W,3] uint8 RGB, torso_bg [H,W,3] uint8 RGB — the torso
    image over the background plate, labels [H,W] uint8 with FACE_BIT)``."""
    import cv2

    from data_prep.subject import frame_name

    target = _read(subject / "targets" / frame_name(i, "jpg"), cv2.IMREAD_COLOR)[..., ::-1]
    return (_resize(np.ascontiguousarray(target), size), read_torso_bg(subject, i, size),
            read_labels(subject, i, size))


_BG_CACHE: dict[tuple[str, int], np.ndarray] = {}


def read_background(subject: Path, size: int) -> np.ndarray:
    """``background.png`` at ``size`` as ``[H, W, 3]`` uint8 RGB."""
    import cv2

    key = (str(subject), size)
    if key not in _BG_CACHE:
        bg = _read(subject / "background.png", cv2.IMREAD_COLOR)[..., ::-1]
        _BG_CACHE[key] = _resize(np.ascontiguousarray(bg), size)
    return _BG_CACHE[key]


def read_torso_bg(subject: Path, i: int, size: int) -> np.ndarray:
    """Frame ``i``'s torso RGBA composited over the background plate: ``[H, W, 3]`` uint8 RGB."""
    import cv2

    from data_prep.subject import frame_name

    rgba = _read(subject / "torso" / frame_name(i, "png"), cv2.IMREAD_UNCHANGED)
    rgba = _resize(rgba, size)
    a = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., 2::-1].astype(np.uint16)
    bg = read_background(subject, size)
    return ((a * rgb + (255 - a) * bg + 127) // 255).astype(np.uint8)


def read_labels(subject: Path, i: int, size: int) -> np.ndarray:
    """``masks/`` labels (0..3) with :data:`FACE_BIT` set on the face mask, ``[H, W]`` uint8."""
    import cv2

    from data_prep.subject import frame_name

    lab = _resize(_read(subject / "masks" / frame_name(i, "png"), cv2.IMREAD_GRAYSCALE), size, True)
    face = _resize(_read(subject / "face_masks" / frame_name(i, "png"), cv2.IMREAD_GRAYSCALE), size, True)
    return (lab & 3) | np.where(face > 127, FACE_BIT, 0).astype(np.uint8)


def _expand(box: np.ndarray, fx: float, fy: float, size: int, y1_extra: float = 0.0) -> np.ndarray:
    """Grow ``[N, 4]`` float boxes by fractions of their size; clip; int64 with exclusive ends."""
    w = box[:, 2] - box[:, 0]
    h = box[:, 3] - box[:, 1]
    out = np.stack([box[:, 0] - fx * w, box[:, 1] - fy * h, box[:, 2] + fx * w,
                    box[:, 3] + (fy + y1_extra) * h], 1)
    out = np.round(out).astype(np.int64)
    out[:, [0, 1]] = np.clip(out[:, [0, 1]], 0, size - 1)
    out[:, [2, 3]] = np.clip(out[:, [2, 3]], out[:, [0, 1]] + 1, size)
    return out


def landmark_boxes(landmarks: np.ndarray, scale: float, size: int) -> dict[str, np.ndarray]:
    """Per-frame region boxes from MediaPipe landmarks ``[N, 478, 3]`` (px at the subject size).

    Returns ``{"lower": ..., "eyes": ..., "face": ...}`` ``[N, 4]`` int64 at the training size:
    *lower* — the lower face (nose tip to below the chin, cheek to cheek), where the audio
    may act; *eyes* — brows, eyes and lids, where the blendshapes may act; *face* — the face
    oval.
    """
    lm = landmarks[..., :2] * scale
    oval = lm[:, FACE_OVAL]
    face = np.concatenate([oval.min(1), oval.max(1)], 1)
    nose_y = lm[:, NOSE_TIP, 1]
    below = oval[..., 1] >= nose_y[:, None]
    big = np.where(below[..., None], oval, np.nan)
    lower = np.stack([np.nanmin(big[..., 0], 1), nose_y, np.nanmax(big[..., 0], 1),
                      lm[:, CHIN, 1]], 1)
    eyes = lm[:, EYE_REGION]
    eyes = np.concatenate([eyes.min(1), eyes.max(1)], 1)
    return {"lower": _expand(lower, 0.1, 0.05, size, y1_extra=0.25),
            "eyes": _expand(eyes, 0.1, 0.35, size),
            "face": _expand(face, 0.05, 0.05, size)}


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` bool masks → ``[N, 4]`` float ``x0, y0, x1, y1`` (exclusive ends) of each
    mask's bounding box; NaN rows for empty masks."""
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    out = np.stack([cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1),
                    h - rows[:, ::-1].argmax(1)], 1).astype(np.float64)
    out[~rows.any(1)] = np.nan
    return out


@dataclass
class SubjectData:
    """A subject at the training size.

    Attributes:
        root: subject directory. identity: :func:`subject_identity`.
        size: training side (px); subject_size: the subject's side; fps.
        n_frames: N.
        K: ``[3, 3]`` float32 intrinsics at ``size``.
        c2w: ``[N, 4, 4]`` float64 world (mm) cameras.
        box: the :class:`HeadBox`; cam_o ``[N, 3]`` / cam_rot ``[N, 3, 3]`` float32 cameras in
            box units (:func:`~synctalk.nerf.geometry.box_cameras`).
        blendshapes: ``[N, k]`` float32 scores of the ``bs_names`` prep chose for training.
        splits: ``{"train": [...], "val": [...]}``; train_idx / val_idx int64 tensors.
        boxes: ``{"head", "face", "lower", "eyes", "mouth", "aabb"}`` → ``[N, 4]`` int64 boxes.
        images / torso_bg: ``[N, H, W, 3]`` uint8 RGB targets and torso-over-background
            images; labels ``[N, H, W]`` uint8 (0 bg, 1 head, 2 neck, 3 torso, + FACE_BIT);
            None unless loaded with ``images=True``.
        background: ``[H, W, 3]`` uint8 RGB plate.
        audio: ``[N, D]`` float32 audio features (set by the trainer).
    """

    root: Path
    identity: dict
    size: int
    subject_size: int
    fps: float
    n_frames: int
    K: torch.Tensor
    c2w: np.ndarray
    box: HeadBox
    cam_o: torch.Tensor
    cam_rot: torch.Tensor
    blendshapes: torch.Tensor
    bs_names: list[str]
    splits: dict
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    boxes: dict[str, torch.Tensor]
    background: np.ndarray
    images: torch.Tensor | None = None
    torso_bg: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    audio: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def load(cls, subject, size: int | None = None, *, images: bool = True,
             box: HeadBox | None = None, progress: bool = False) -> "SubjectData":
        """Load ``subject`` at ``size`` px (default: its own size; must not exceed it).

        Args:
            images: load every frame's target, torso image and labels (training); without,
                only the per-frame arrays (inference reads images on demand).
            box: reuse this head box (a trained model's); default: fit one.
        """
        subject = Path(subject)
        identity = subject_identity(subject)
        s_size = identity["size"]
        size = s_size if size is None else int(size)
        if size > s_size:
            raise InputError(f"--size {size} is larger than the subject's {s_size} px frames; use "
                             f"--size ≤ {s_size} or prep the video again with --size {size}.")
        if size < 32:
            raise InputError(f"--size {size} is too small (≥ 32 px).")
        scale = size / s_size
        poses = np.load(subject / "poses.npz")
        c2w = poses["c2w"].astype(np.float64)
        K = poses["intrinsics"].astype(np.float64).copy()
        K[:2] *= scale  # continuous pixel coordinates (pixel u spans [u, u + 1)) scale exactly
        n = identity["n_frames"]
        if len(c2w) != n:
            raise InputError(f"{subject}: poses.npz has {len(c2w)} frames but frames/ has {n} — "
                             "re-run prep with --force.")
        with np.load(subject / "track.npz") as tr:
            landmarks = tr["landmarks"].astype(np.float64)
        bs = np.load(subject / "blendshapes.npz")
        bs_names = [str(x) for x in bs["train_names"]]
        scores = bs["scores"][:, bs["train_index"]].astype(np.float32)
        splits = json.loads((subject / "splits.json").read_text())
        if not splits.get("train"):
            raise InputError(f"{subject}/splits.json has no training frames — re-run prep.")
        mouth = np.load(subject / "mouth_boxes.npy").astype(np.float64) * scale

        label_list = []
        imgs = torso = labs = None
        if images:
            imgs = np.empty((n, size, size, 3), np.uint8)
            torso = np.empty((n, size, size, 3), np.uint8)
            labs = np.empty((n, size, size), np.uint8)
            from concurrent.futures import ThreadPoolExecutor

            from tqdm import tqdm

            read_background(subject, size)  # cache before the threads start

            def load_one(i: int) -> None:
                imgs[i], torso[i], labs[i] = read_frame_images(subject, i, size)

            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                for _ in tqdm(pool.map(load_one, range(n)), total=n, desc="load subject",
                              unit="frame", leave=False, disable=not progress):
                    pass
            label_list = [(i, labs[i]) for i in range(n)]
        else:
            step = max(1, n // 48)
            label_list = [(i, read_labels(subject, i, size)) for i in range(0, n, step)]
        Kt = torch.from_numpy(K).float()
        if box is None:
            sub = label_list[:: max(1, len(label_list) // 48)]
            box = fit_head_box(c2w, K, [(i, (lab & 3) == HEAD) for i, lab in sub], poses["template"])
        cam_o, cam_rot = box_cameras(c2w, box)
        lmb = landmark_boxes(landmarks, scale, size)
        boxes = {"lower": lmb["lower"], "eyes": lmb["eyes"],
                 "mouth": _expand(mouth, 0.0, 0.0, size), "aabb": aabb_boxes(cam_o, cam_rot, Kt, size)}
        if labs is not None:
            head = mask_boxes((labs & 3) == HEAD)
            face = mask_boxes((labs & FACE_BIT) > 0)
            # frames with an empty mask fall back to the landmark face box
            face = np.where(np.isnan(face), lmb["face"], face)
            head = np.where(np.isnan(head), face, head)
            head = np.concatenate([np.minimum(head[:, :2], face[:, :2]),
                                   np.maximum(head[:, 2:], face[:, 2:])], 1)
            boxes["head"] = _expand(head, 0.06, 0.06, size)
            boxes["face"] = _expand(face, 0.03, 0.03, size)
            boxes["body"] = body_boxes(labs)
        else:
            boxes["face"] = lmb["face"]
            boxes["head"] = _expand(lmb["face"].astype(np.float64), 0.25, 0.3, size)
        return cls(
            root=subject, identity=identity, size=size, subject_size=s_size,
            fps=identity["fps"], n_frames=n, K=Kt, c2w=c2w, box=box, cam_o=cam_o, cam_rot=cam_rot,
            blendshapes=torch.from_numpy(scores), bs_names=bs_names, splits=splits,
            train_idx=torch.tensor(splits["train"], dtype=torch.long),
            val_idx=torch.tensor(splits.get("val", []), dtype=torch.long),
            boxes={k: torch.from_numpy(v) for k, v in boxes.items()},
            background=read_background(subject, size),
            images=None if imgs is None else torch.from_numpy(imgs),
            torso_bg=None if torso is None else torch.from_numpy(torso),
            labels=None if labs is None else torch.from_numpy(labs))

    def nearest_train_frame(self, i: int) -> int:
        """The training frame closest in time to frame ``i`` (itself when it is one)."""
        t = self.train_idx
        return int(t[torch.argmin((t - int(i)).abs())])


def aabb_boxes(cam_o: torch.Tensor, cam_rot: torch.Tensor, K: torch.Tensor, size: int) -> np.ndarray:
    """``[N, 4]`` int64 pixel boxes enclosing each camera's view of the head AABB (rays outside
    cannot hit it)."""
    from synctalk.nerf.geometry import project_points

    uvz = project_points(torch.from_numpy(aabb_corners()).float(), cam_o, cam_rot, K).numpy()
    if (uvz[..., 2] <= 0).any():  # a camera inside/behind the box: the whole image
        return np.tile(np.array([0, 0, size, size], np.int64), (len(cam_o), 1))
    lo = np.floor(uvz[..., :2].min(1)) - 1
    hi = np.ceil(uvz[..., :2].max(1)) + 1
    out = np.concatenate([lo, hi], 1).astype(np.int64)
    out[:, :2] = np.clip(out[:, :2], 0, size - 1)
    out[:, 2:] = np.clip(out[:, 2:], out[:, :2] + 1, size)
    return out


@dataclass
class RayBatch:
    """The pixels of one step.

    Attributes:
        frame: ``[R]`` int64 subject frame of each ray. xy: ``[R, 2]`` int64 pixel (x, y).
        patches: ``(n, h, w)`` when the first ``n·h·w`` rays are ``n`` row-major patches.
    """

    frame: torch.Tensor
    xy: torch.Tensor
    patches: tuple[int, int, int] | None = None


def _clip_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Round float ``[N, 4]`` boxes to int64 inside the image, each at least 1 px."""
    out = boxes.round().long()
    out[:, :2] = out[:, :2].clamp(0, size - 1)
    out[:, 2:] = torch.maximum(out[:, 2:].clamp(max=size), out[:, :2] + 1)
    return out


def _uniform_in(boxes: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` uniform integer pixels inside each of ``boxes [R?, 4]`` (one box per sample)."""
    u = torch.rand(n, 2, generator=gen)
    lo = boxes[:, :2].float()
    span = (boxes[:, 2:] - boxes[:, :2]).float()
    return (lo + u * span).floor().long().minimum(boxes[:, 2:] - 1)


class RaySampler:
    """Draws the pixels of one step from a :class:`SubjectData`.

    Head stage (:meth:`head`): ``frames_per_step`` random training frames, each with an equal
    share of the rays: ``mouth_fraction`` uniform in the mouth box grown by half its size,
    ``face_fraction`` uniform in the face box, ``head_fraction`` uniform in the head box, the
    rest uniform in the box the head AABB projects to (rays outside it cannot hit the head,
    so they teach nothing) — which holds plenty of background, where the head must stay
    transparent.

    Lip stage (:meth:`lip`): one frame; a ``p × p`` patch centred on the mouth box (jittered by
    up to p/8 px) plus ``lip_random_patches`` patches of the same size anywhere in the head
    box, in row-major patch order (for SSIM).

    Register stage (:meth:`register`): every val frame, the head stage's boxes without the
    mouth box.

    Torso stage (:meth:`torso`): uniform over the whole frame, half of it inside the box
    around the neck and torso labels.

    All randomness comes from the ``torch.Generator`` passed in (the trainer's, saved in
    checkpoints).
    """

    def __init__(self, data: SubjectData, *, rays: int, frames_per_step: int = 1,
                 face_fraction: float = 0.4, head_fraction: float = 0.3,
                 mouth_fraction: float = 0.0, lip_patch: int = 64,
                 lip_random_patches: int = 1) -> None:
        self.data = data
        self.rays = rays
        self.fps_ = frames_per_step
        self.face_fraction = face_fraction
        self.head_fraction = head_fraction
        self.mouth_fraction = mouth_fraction
        m = data.boxes["mouth"].float()
        half = 0.5 * (m[:, 2:] - m[:, :2])
        self.mouth_area = _clip_boxes(torch.cat([m[:, :2] - half, m[:, 2:] + half], 1), data.size)
        self.patch = min(lip_patch, data.size)
        self.lip_random_patches = lip_random_patches

    def _frames(self, n: int, gen: torch.Generator) -> torch.Tensor:
        t = self.data.train_idx
        return t[torch.randint(len(t), (n,), generator=gen)]

    def head(self, gen: torch.Generator) -> RayBatch:
        return self._in_boxes(self._frames(self.fps_, gen), self.rays // self.fps_,
                              (self.mouth_fraction, self.face_fraction, self.head_fraction), gen)

    def register(self, gen: torch.Generator, rays: int) -> RayBatch:
        """Rays of every val frame (at least one each, ``rays`` in all when there are
        enough): the head stage's boxes without the mouth box, whose share goes to the face
        box — the pose is registered on the rigid head, not on the audio-driven mouth."""
        frames = self.data.val_idx
        if len(frames) == 0:
            raise InputError("the subject has no val frames to register; set register_iters: 0.")
        return self._in_boxes(frames, max(1, rays // len(frames)),
                              (0.0, self.face_fraction + self.mouth_fraction, self.head_fraction), gen)

    def _in_boxes(self, frames: torch.Tensor, per: int, fractions: tuple[float, float, float],
                  gen: torch.Generator) -> RayBatch:
        """``per`` rays in each of ``frames [F]``: shares ``fractions`` (mouth area, face box,
        head box) uniform in those boxes, the rest in the head AABB's box."""
        counts = [int(round(per * f)) for f in fractions]
        counts.append(per - sum(counts))
        b = self.data.boxes
        fr = frames.repeat_interleave(per)
        kinds = torch.cat([torch.full((n,), k, dtype=torch.long)
                           for k, n in enumerate(counts)]).repeat(len(frames))
        all_boxes = torch.stack([self.mouth_area[fr], b["face"][fr], b["head"][fr],
                                 b["aabb"][fr]])  # [4, R, 4]
        chosen = all_boxes[kinds, torch.arange(len(fr))]
        return RayBatch(fr, _uniform_in(chosen, len(fr), gen))

    def lip(self, gen: torch.Generator) -> RayBatch:
        f = self._frames(1, gen)
        p = self.patch
        size = self.data.size
        m = self.data.boxes["mouth"][f[0]].float()
        centre = 0.5 * (m[:2] + m[2:])
        jitter = (torch.rand(2, generator=gen) * 2 - 1) * (p / 8)
        corners = [centre + jitter - p / 2]
        h = self.data.boxes["head"][f[0]].float()
        for _ in range(self.lip_random_patches):
            u = torch.rand(2, generator=gen)
            corners.append(h[:2] + u * (h[2:] - h[:2]) - p / 2)
        ys, xs = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
        xy = torch.cat([grid + c.round().long().clamp(0, size - p) for c in corners])
        return RayBatch(f.repeat(len(xy)), xy, patches=(len(corners), p, p))

    def torso(self, gen: torch.Generator, rays: int) -> RayBatch:
        f = self._frames(1, gen)
        size = self.data.size
        n_body = rays // 2
        whole = torch.tensor([[0, 0, size, size]]).expand(rays - n_body, 4)
        body = self.data.boxes.get("body")
        bb = body[f[0]] if body is not None else torch.tensor([0, 0, size, size])
        xy = torch.cat([_uniform_in(bb.expand(n_body, 4), n_body, gen),
                        _uniform_in(whole, rays - n_body, gen)])
        return RayBatch(f.repeat(rays), xy)


def body_boxes(labels: np.ndarray) -> np.ndarray:
    """``[N, 4]`` int64 boxes around the neck and torso labels of ``[N, H, W]`` label maps
    (the whole frame when there are none)."""
    size = labels.shape[-1]
    b = mask_boxes((labels & 3) >= NECK)
    b[np.isnan(b).any(1)] = [0, 0, size, size]
    return b.astype(np.int64)


def gather(images: torch.Tensor, batch: RayBatch) -> torch.Tensor:
    """Pixels of ``images [N, H, W, C]`` (uint8 or float) at the batch's rays → ``[R, C]``
    (float in [0, 1] for uint8)."""
    px = images[batch.frame, batch.xy[:, 1], batch.xy[:, 0]]
    return px.float() / 255.0 if px.dtype == torch.uint8 else px


def in_boxes(boxes: torch.Tensor, batch: RayBatch) -> torch.Tensor:
    """``[R]`` bool: the ray's pixel lies inside its frame's box from ``boxes [N, 4]``."""
    b = boxes[batch.frame]
    x, y = batch.xy[:, 0], batch.xy[:, 1]
    return (x >= b[:, 0]) & (x < b[:, 2]) & (y >= b[:, 1]) & (y < b[:, 3])


__all__ = ["SubjectData", "RaySampler", "RayBatch", "check_subject", "subject_identity",
           "read_frame_images", "read_torso_bg", "read_labels", "read_background", "gather",
           "in_boxes", "body_boxes", "landmark_boxes", "AABB", "REQUIRED_STEPS", "FACE_BIT",
           "HEAD", "NECK", "TORSO", "BACKGROUND"]

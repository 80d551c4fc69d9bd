"""Rendering a trained model: :class:`TalkingHead`, the API of ``synctalk render`` / ``eval``.

.. code-block:: python

    head = TalkingHead.load("models/me", device="cpu")
    feats = head.encode_audio(audio, sr)            # [T, 512], T = ⌈duration · fps⌉
    out = head.render_frame(feats, t, source_frame)  # rgb uint8 [H, W, 3], alpha, timings

A frame is drawn from the audio features around ``t`` (temporal attention over
``t − 4 … t + 3``, clamped to the clip) and a *source frame* of the subject that supplies the
head pose, the blendshapes (brows/blinks; ``blink`` overrides the two blink scores), the
appearance code (the nearest training frame's for val frames), and what lies behind the
head: the torso field over the background plate when the model has a trained torso, else
the subject's torso image of that frame over the plate. A subject frame's camera is prep's
pose with the model's learned correction for that frame (:func:`frame_camera`).

Only rays that hit the head box are marched (``infer_samples`` per ray, samples in occupied
cells only, early termination at transmittance ``early_stop``); every other pixel takes the
torso/background colour. The rays are rendered with the alive-ray loop
(:func:`~synctalk.nerf.renderer.render_rays_alive`: each round every unfinished ray gets its
next few samples, finished rays are dropped) or, with ``loop="packed"``, by marching every
sample first (:func:`~synctalk.nerf.renderer.render_rays`); the images agree to within
``early_stop``.
"""
from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from synctalk.device import torch_device
from synctalk.errors import InputError, ModelFileError
from synctalk.nerf.data import SubjectData, read_torso_bg
from synctalk.nerf.geometry import HeadBox, box_cameras, pixel_rays
from synctalk.nerf.model import (AVE_NAME, CKPT_DIR, DEFAULT_CPU_THREADS, WEIGHTS_NAME,
                                 TalkingHeadModel, build_model, load_state, read_model_config,
                                 read_torch, torch_threads)
from synctalk.nerf.renderer import render_rays, render_rays_alive

#: Inference loops of :func:`render_head_image` (module docstring); the first is the default.
INFERENCE_LOOPS = ("alive", "packed")
#: Blendshape names the ``blink`` override replaces.
BLINK_NAMES = ("eyeBlinkLeft", "eyeBlinkRight")


def frame_camera(model: TalkingHeadModel, data: SubjectData, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-space camera ``(cam_o [3], cam_rot [3, 3])`` (CPU float32) of subject frame ``f``:
    prep's pose with the model's correction for the frame."""
    o, rot = model.poses.subject_cameras(data, torch.tensor([f]), grad=False)
    return o[0], rot[0]


def frame_rect(cam_o: torch.Tensor, cam_rot: torch.Tensor, K: torch.Tensor, size: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` pixel box (exclusive ends) of one camera's view of the head AABB."""
    from synctalk.nerf.data import aabb_boxes

    b = aabb_boxes(cam_o[None], cam_rot[None], K, size)[0]
    return int(b[0]), int(b[1]), int(b[2]), int(b[3])


@torch.no_grad()
def render_head_image(model: TalkingHeadModel, data: SubjectData, feats: torch.Tensor, t: int,
                      source_frame: int, *, bg: torch.Tensor, blink: float | None = None,
                      c2w: np.ndarray | None = None, samples: int = 64,
                      early_stop: float | None = 1e-4, ema: float = 0.0, chunk: int = 1 << 16,
                      backend: str = "auto", timings: dict | None = None, loop: str = "alive"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one frame of the head over ``bg``.

    Args:
        model: the model; data: its subject (poses, blendshapes, boxes).
        feats: ``[T, D]`` *normalised* audio features (:meth:`TalkingHeadModel.normalize_audio`).
        t: index into ``feats``; source_frame: subject frame (pose, blendshapes, codes).
        bg: ``[H, W, 3]`` float colour behind the head (torso over background), in [0, 1].
        blink: replaces the blink scores (0 open … 1 closed).
        c2w: ``[4, 4]`` world (mm) camera-to-world overriding the source frame's pose.
        samples, early_stop, ema: see :class:`~synctalk.nerf.config.TrainConfig`.
        timings: dict the ``march``/``field``/``composite`` seconds are added to.
        loop: ``"alive"`` or ``"packed"`` (:data:`INFERENCE_LOOPS`, module docstring).

    Returns:
        ``(rgb [H, W, 3] float in [0, 1], alpha [H, W] float)`` on the model's device.
    """
    if loop not in INFERENCE_LOOPS:
        raise InputError(f"unknown inference loop {loop!r}; choose one of {', '.join(INFERENCE_LOOPS)}")
    render = render_rays_alive if loop == "alive" else render_rays
    if loop == "alive" and early_stop is None:
        early_stop = 0.0  # composite every sample
    device = bg.device
    size = data.size
    f = int(source_frame)
    if not 0 <= f < data.n_frames:
        raise InputError(f"source frame {f} is outside the subject's 0..{data.n_frames - 1}")
    if not 0 <= int(t) < len(feats):
        raise InputError(f"audio frame {t} is outside the features' 0..{len(feats) - 1}")
    if c2w is not None:
        o, rot = box_cameras(np.asarray(c2w, np.float64)[None], data.box)
        cam_o, cam_rot = o[0], rot[0]
    else:
        cam_o, cam_rot = frame_camera(model, data, f)
    K = data.K
    bs = data.blendshapes[f].clone()
    if blink is not None:
        for name in BLINK_NAMES:
            if name in data.bs_names:
                bs[data.bs_names.index(name)] = float(blink)
    code_frame = data.nearest_train_frame(f)
    head = model.head
    cond = head.frame_conditioning(feats, torch.tensor([int(t)], device=device), bs[None].to(device),
                                   torch.tensor([code_frame], device=device), ema=ema)
    x0, y0, x1, y1 = frame_rect(cam_o, cam_rot, K, size)
    ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    rays_o, rays_d = pixel_rays(cam_o[None], cam_rot[None], K, xy)
    rays_o, rays_d, xy = rays_o.to(device), rays_d.to(device), xy.to(device)
    rgb = bg.clone()
    alpha = torch.zeros(size, size, device=device)
    for i in range(0, len(xy), chunk):
        sl = slice(i, i + chunk)
        px = xy[sl]
        out = render(head, model.occ, rays_o[sl], rays_d[sl], cond, bg[px[:, 1], px[:, 0]],
                     n_samples=samples, early_stop=early_stop, backend=backend, timings=timings)
        rgb[px[:, 1], px[:, 0]] = out["rgb"].to(rgb.dtype)
        alpha[px[:, 1], px[:, 0]] = out["opacity"].to(alpha.dtype)
    return rgb, alpha


@torch.no_grad()
def torso_layer(model: TalkingHeadModel, data: SubjectData, source_frame: int,
                background: torch.Tensor, c2w: np.ndarray | None = None) -> torch.Tensor:
    """The trained torso field over ``background [H, W, 3]`` for one frame → ``[H, W, 3]``."""
    size = data.size
    device = background.device
    if c2w is not None:
        o, rot = box_cameras(np.asarray(c2w, np.float64)[None], data.box)
    else:
        o, rot = (v[None] for v in frame_camera(model, data, int(source_frame)))
    anchors = model.torso.anchor_positions(o.to(device), rot.to(device), data.K.to(device), size)
    ys, xs = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device),
                            indexing="ij")
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    frames = torch.full((len(xy),), int(source_frame), device=device, dtype=torch.long)
    rgb, a = model.torso(xy, anchors.expand(len(xy), -1), frames, size)
    layer = a[:, None] * rgb + (1 - a[:, None]) * background.reshape(-1, 3)
    return layer.view(size, size, 3)


class TalkingHead:
    """A trained model ready to render (module docstring). Build with :meth:`load`.

    Attributes:
        size: rendered image side (px); fps: video frame rate; subject: subject directory;
        n_frames: frames of the training video; splits: ``{"train": [...], "val": [...]}``;
        encoder_id: id of the audio encoder the model was trained with; ave_path: its file
        (``MODEL/ave.pt``); model_dir; device; config (the training settings, a dict).
    """

    def __init__(self, model_dir: Path, meta: dict, model: TalkingHeadModel, data: SubjectData,
                 device: torch.device, backend: str, threads: int | None = None) -> None:
        self.model_dir = model_dir
        self.meta = meta
        self.model = model
        self.data = data
        self.device = device
        self.backend = backend
        self.threads = threads
        self.config = dict(meta["config"])
        self.size: int = int(meta["size"])
        self.fps: float = float(meta["fps"])
        self.subject: Path = Path(meta["subject"]["path"])
        self.n_frames: int = int(meta["subject"]["n_frames"])
        self.splits: dict = {k: list(v) for k, v in data.splits.items()}
        self.encoder_id: str = str(meta["encoder_id"])
        self.ave_path: Path = model_dir / AVE_NAME
        self.samples = int(self.config.get("infer_samples", 64))
        self.early_stop = float(self.config.get("early_stop", 1e-4))
        self.audio_ema = 0.0
        self.loop = INFERENCE_LOOPS[0]
        self._ave = None
        self._background = torch.from_numpy(data.background.astype(np.float32) / 255.0).to(device)
        self._torso_cache = lru_cache(maxsize=64)(self._read_torso)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_dir, device: str = "cpu", backend: str = "auto",
             threads: int | None = None) -> "TalkingHead":
        """Load a model directory written by ``synctalk train``.

        ``threads``: torch CPU threads while rendering a frame (None: one on the CPU —
        faster than two on the project's 2-core machine; the caller's setting on CUDA).

        Raises:
            ModelFileError: missing/corrupt model directory or weights.
            InputError: the subject directory it was trained on is gone or has changed.
        """
        from synctalk.nerf.data import subject_identity
        from synctalk.ops.backend import available, chosen

        model_dir = Path(model_dir)
        meta = read_model_config(model_dir)
        weights = model_dir / WEIGHTS_NAME
        if weights.is_file():
            state = read_torch(weights, "model file")["model"]
        else:
            ckpts = sorted((model_dir / CKPT_DIR).glob("step_*.pt"))
            if not ckpts:
                raise ModelFileError(f"{model_dir} holds no {WEIGHTS_NAME} and no checkpoint — the "
                                     "training never saved; train again (or --resume).")
            state = read_torch(ckpts[-1], "checkpoint")["model"]
        subject = Path(meta["subject"]["path"])
        try:
            ident = subject_identity(subject)
        except InputError as e:
            raise InputError(f"the model's subject directory {subject} is not usable ({e}); "
                             "restore it at that path.") from e
        if ident["source_sha256"] != meta["subject"]["source_sha256"] or \
                ident["n_frames"] != meta["subject"]["n_frames"]:
            raise InputError(f"{subject} now holds a different subject than the model {model_dir} "
                             "was trained on (source video hash or frame count changed).")
        if backend != "auto" and backend not in available("grid_encode"):
            raise InputError(f"backend {backend!r} is not available; available: "
                             f"{', '.join(['auto'] + available('grid_encode'))}")
        chosen(backend)  # load (or build) the ops' backend now, so no render time includes it
        dev = torch_device(device)
        model = build_model(meta)
        load_state(model, state, str(weights if weights.is_file() else "the checkpoint"))
        model.set_backend(backend)
        model.to(dev).eval()
        data = SubjectData.load(subject, int(meta["size"]), images=False,
                                box=HeadBox.from_dict(meta["box"]))
        if threads is None and dev.type == "cpu":
            threads = DEFAULT_CPU_THREADS
        return cls(model_dir, meta, model, data, dev, backend, threads)

    # ------------------------------------------------------------------ audio
    def _encoder(self):
        if self._ave is None:
            from synctalk.audio.ave import load_ave

            if not self.ave_path.is_file():
                raise ModelFileError(f"{self.ave_path} is missing: the model's audio encoder is "
                                     "needed for new audio — restore it from the subject "
                                     "(ave.pt) or train again.")
            self._ave = load_ave(self.ave_path)
        return self._ave

    def encode_audio(self, audio: np.ndarray, sr: int) -> torch.Tensor:
        """Features of new speech with the model's own encoder.

        Args:
            audio: ``[n]`` or ``[n, channels]`` samples at ``sr`` Hz (any rate; mixed to mono,
                resampled to 16 kHz).

        Returns:
            ``[T, D]`` float32 CPU features, ``T = ⌈duration · fps⌉`` (≥ 1).

        Raises:
            InputError: audio shorter than the encoder's 200 ms window, or not finite.
        """
        import math

        from synctalk.audio.dataset import InputSpec
        from synctalk.audio.features import ave_features

        ave, meta = self._encoder()
        a = np.asarray(audio)
        if a.size == 0:
            raise InputError("the audio is empty.")
        n = int(a.shape[0])
        T = max(1, int(math.ceil(n / float(sr) * self.fps - 1e-9)))
        return ave_features(a, self.fps, T, ave, sr=sr, mel_norm=InputSpec.from_meta(meta).mel)

    def subject_audio_features(self) -> torch.Tensor:
        """``[N, D]`` features of the subject's own audio (cached in the subject directory)."""
        from synctalk.audio.features import subject_features

        ave, meta = self._encoder()
        _, arr, _ = subject_features(self.subject, ave=ave, ave_meta=meta)
        return torch.from_numpy(np.asarray(arr, np.float32))

    # ------------------------------------------------------------------ rendering
    def _read_torso(self, f: int) -> torch.Tensor:
        img = read_torso_bg(self.subject, f, self.size)
        return torch.from_numpy(img.astype(np.float32) / 255.0).to(self.device)

    def behind_head(self, source_frame: int, c2w: np.ndarray | None = None) -> torch.Tensor:
        """``[H, W, 3]`` float: what the head is composited over (module docstring)."""
        if bool(self.model.torso_trained):
            return torso_layer(self.model, self.data, source_frame, self._background, c2w)
        return self._torso_cache(int(source_frame))

    @torch.no_grad()
    def render_frame(self, audio_feats: torch.Tensor, t: int, source_frame: int, *,
                     blink: float | None = None, c2w: np.ndarray | None = None) -> dict:
        """Render one frame.

        Args:
            audio_feats: ``[T, D]`` raw features (:meth:`encode_audio` /
                :meth:`subject_audio_features`).
            t: audio frame (0 ≤ t < T). source_frame: subject frame (0 ≤ f < n_frames).
            blink: optional eye closure in [0, 1] replacing the blink scores.
            c2w: optional ``[4, 4]`` camera-to-world (subject world, mm) replacing the source
                frame's head pose.

        Returns:
            ``{"rgb": uint8 [H, W, 3], "alpha": float32 [H, W] head alpha,
            "timings": {"march", "field", "composite", "torso"} seconds}``.
        """
        if audio_feats.ndim != 2 or audio_feats.shape[1] != int(self.meta["audio_in"]):
            raise InputError(f"audio features must be [T, {self.meta['audio_in']}], got "
                             f"{list(audio_feats.shape)}")
        if not 0 <= int(source_frame) < self.n_frames:
            raise InputError(f"source frame {source_frame} is outside the subject's frames "
                             f"0..{self.n_frames - 1}")
        if not 0 <= int(t) < len(audio_feats):
            raise InputError(f"audio frame {t} is outside the features' 0..{len(audio_feats) - 1}")
        timings = {"march": 0.0, "field": 0.0, "composite": 0.0, "torso": 0.0}
        with torch_threads(self.threads):
            t0 = time.perf_counter()
            bg = self.behind_head(int(source_frame), c2w)
            timings["torso"] = time.perf_counter() - t0
            feats = self.model.normalize_audio(audio_feats)
            rgb, alpha = render_head_image(
                self.model, self.data, feats, int(t), int(source_frame), bg=bg, blink=blink,
                c2w=c2w, samples=self.samples, early_stop=self.early_stop, ema=self.audio_ema,
                backend=self.backend, timings=timings, loop=self.loop)
        img = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        return {"rgb": img, "alpha": alpha.float().cpu().numpy(), "timings": timings}

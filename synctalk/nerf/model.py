"""The trained model as one module, and the model directory on disk.

:class:`TalkingHeadModel` bundles the head field, its occupancy grid, the torso field and the
audio-feature normalisation (``audio_mean``/``audio_std`` ``[D]`` buffers: features are
standardised per dimension with the training frames' statistics before the audio net).

Model directory (written by ``synctalk train``; everything atomically):

==========================  ======================================================================
``config.json``             ``format`` (:data:`MODEL_FORMAT`), the resolved training ``config``,
                            ``subject`` identity (path, source sha256, size, fps, n_frames),
                            ``size`` (training px), ``fps``, ``encoder_id``, ``audio_in``,
                            ``bs_names``, ``box`` (the world → box transform,
                            :class:`~synctalk.nerf.geometry.HeadBox`), ``stages``
``ave.pt``                  copy of the audio encoder the features came from
``model.pt``                final weights (``{"format", "model": state_dict, "stages_done",
                            "torso_trained", "step"}``)
``checkpoints/step_*.pt``   resumable state (:mod:`synctalk.nerf.trainer`)
``log.jsonl``               one JSON object per log interval / validation
``val/``                    validation PNGs (ground truth | render | |error|×4)
``summary.json``            final numbers: steps, seconds, val PSNR (full frame, face mask)
==========================  ======================================================================
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from synctalk.errors import ModelFileError
from synctalk.nerf.config import TrainConfig
from synctalk.nerf.field import HeadField
from synctalk.nerf.occupancy import OccupancyGrid
from synctalk.nerf.poses import PoseRefinement
from synctalk.nerf.torso import TorsoField

MODEL_FORMAT = "synctalk-model/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.pt"
AVE_NAME = "ave.pt"
CKPT_DIR = "checkpoints"


#: Torch CPU threads used for training and rendering unless asked otherwise. The per-step
#: tensors are small: on the 2-core project machine one thread measured 4× faster than two
#: (0.09 vs 0.37 s per demo training step, 0.29 vs 0.84 s per 256² frame, load ≈ 4).
DEFAULT_CPU_THREADS = 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (no change for None), then restore."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TalkingHeadModel(nn.Module):
    """Head field + occupancy grid + torso field + per-frame pose corrections
    (:class:`~synctalk.nerf.poses.PoseRefinement`) + audio normalisation.

    Audio features ``f [T, D]`` enter the head field as ``((f − mean) / std) @ basis``:
    per-dimension standardisation with the training frames' statistics, then (``audio_pca``
    > 0) the projection on their top principal components, each scaled to unit variance
    over the training frames (``basis [D, audio_pca]``; the identity when off).

    Args:
        cfg: the training config. n_frames, n_bs, audio_in: subject frames, blendshape
        inputs, audio feature size. seed: initial weights (grids, anchors and MLPs) come
        from generators seeded with it; the global RNG is left untouched.
    """

    def __init__(self, cfg: TrainConfig, n_frames: int, n_bs: int, audio_in: int,
                 seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        k = cfg.audio_pca if 0 < cfg.audio_pca < audio_in else audio_in
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = HeadField(cfg, n_frames, n_bs, k, generator=gen)
            self.torso = TorsoField(cfg, n_frames, generator=gen)
        self.occ = OccupancyGrid(cfg.occ_resolution)
        self.poses = PoseRefinement(n_frames)
        self.register_buffer("audio_mean", torch.zeros(audio_in))
        self.register_buffer("audio_std", torch.ones(audio_in))
        self.register_buffer("audio_basis", torch.eye(audio_in)[:, :k].contiguous())
        self.register_buffer("torso_trained", torch.zeros((), dtype=torch.bool))

    def set_backend(self, backend: str) -> None:
        self.head.backend = backend
        self.torso.backend = backend

    def normalize_audio(self, feats: torch.Tensor) -> torch.Tensor:
        """``[T, D]`` raw encoder features → ``[T, k]`` head-field inputs (class docstring;
        float32, on the model's device)."""
        f = feats.to(self.audio_mean.device, torch.float32)
        return ((f - self.audio_mean) / self.audio_std) @ self.audio_basis

    def set_audio_stats(self, feats: torch.Tensor) -> None:
        """Fit the normalisation to ``feats [N, D]`` (training frames): per-dimension mean and
        std (floored at a tenth of the median std, so near-constant dimensions are not blown
        up) and, with PCA, the top principal directions scaled to unit variance."""
        feats = feats.double()
        mean = feats.mean(0)
        std = feats.std(0)
        std = std.clamp(min=float(0.1 * std.median().clamp(min=1e-6)))
        self.audio_mean.copy_(mean)
        self.audio_std.copy_(std)
        k = self.audio_basis.shape[1]
        if k < feats.shape[1]:
            z = (feats - mean) / std
            _, s, vt = torch.linalg.svd(z, full_matrices=False)
            scale = (s[:k] / max(1.0, (len(z) - 1) ** 0.5)).clamp(min=1e-6)
            self.audio_basis.copy_((vt[:k].T / scale).float())


def read_model_config(model_dir) -> dict:
    """``config.json`` of a model directory, checked.

    Raises:
        ModelFileError: missing directory/file, unreadable JSON or another format.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(f"model directory not found: {model_dir} — train one with "
                             "`synctalk train SUBJECT --out MODEL`.")
    path = model_dir / CONFIG_NAME
    if not path.is_file():
        raise ModelFileError(f"{model_dir} is not a model directory (no {CONFIG_NAME}) — train one "
                             "with `synctalk train SUBJECT --out MODEL`.")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not readable JSON ({e}); the model directory is damaged — "
                             "train again or restore it.") from e
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} has format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {MODEL_FORMAT!r}.")
    return meta


def build_model(meta: dict) -> TalkingHeadModel:
    """An untrained :class:`TalkingHeadModel` shaped like the one ``meta`` (config.json)
    describes."""
    cfg = TrainConfig.from_dict(meta["config"], what="config.json")
    return TalkingHeadModel(cfg, int(meta["subject"]["n_frames"]), len(meta["bs_names"]),
                            int(meta["audio_in"]), seed=cfg.seed)


def load_state(model: TalkingHeadModel, state: dict, where: str) -> None:
    """Load a state dict strictly; a mismatch is a :class:`ModelFileError`. A model saved
    before pose corrections existed (no ``poses.delta``) loads with none (prep's poses)."""
    if "poses.delta" not in state:
        state = {**state, "poses.delta": torch.zeros_like(model.poses.delta)}
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(f"{where} does not fit the model described by config.json ({first}); "
                             "the model directory is damaged or mixed up.") from e


def read_torch(path: Path, what: str) -> dict:
    """``torch.load`` (weights only) with a clear error for damaged files."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise ModelFileError(f"cannot read {what} {path} ({type(e).__name__}: {e}); the file is "
                             "damaged — restore it or train again.") from e
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a {MODEL_FORMAT} {what}.")
    return data

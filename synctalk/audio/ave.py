"""The audio-visual encoder (AVE): a SyncNet / Wav2Lip lip-sync expert.

Two convolutional branches map 200 ms of speech and the matching five mouth crops into a
shared 512-d space where in-sync pairs have high cosine similarity. The audio branch's
embedding is the per-frame audio feature that conditions the talking-head NeRF.

Layouts (state-dict keys are those of the published checkpoints):

* audio branch, ``[B, 1, 80, 16]`` mel window → ``[B, 512, 1, 1]``, an ``nn.Sequential`` of
  :class:`Conv2dBlock` s. SyncTalk's ``audio_visual_encoder.pth`` has 13 blocks (one
  256-channel residual block, :data:`SYNCTALK`); Wav2Lip's ``lipsync_expert.pth`` has 14 (two,
  :data:`WAV2LIP`). Everything else is shared.
* face branch, ``[B, 15, 48, 96]`` → ``[B, 512, 1, 1]``: Wav2Lip ``SyncNet_color``'s
  ``face_encoder`` (17 blocks).

Reduced width: ``width`` (0 < width ≤ 1) multiplies every hidden channel count of both
branches (rounded, at least 1); the last block of each branch still outputs 512 channels, so
embeddings stay 512-d. ``width=1`` is the published layout. A slim AVE (e.g. ``width=0.25``,
≈1/16 of the compute) is what trains in minutes on a CPU (see ``synctalk.audio.train``).

File format (:func:`save_ave` / :func:`load_ave`): ``torch.save`` of
``{"format": "synctalk-ave/1", "arch": {"audio_layout": str, "has_face": bool, "width": float},
"state_dict": {...}, "meta": {...}}``, readable with ``torch.load(weights_only=True)``; files
without ``width`` are full width. Without a face branch only the ``audio.*`` entries are
stored (≈11 MB instead of ≈64 MB at full width) and the face branch is re-created from its
seeded initialisation on load.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.errors import ModelFileError, require_file
from synctalk.fsutil import atomic_path

FORMAT = "synctalk-ave/1"
#: Audio-branch layouts: name → number of 256-channel residual blocks.
SYNCTALK = "synctalk"
WAV2LIP = "wav2lip"
AUDIO_LAYOUTS = {SYNCTALK: 1, WAV2LIP: 2}
EMBED_DIM = 512
#: Mel window the audio branch takes: (mel bands, mel frames).
MEL_WINDOW = (80, 16)
#: Mouth crop size the face branch takes (H, W): lower half of a 96×96 face crop.
FACE_CROP = (48, 96)
#: Consecutive video frames stacked in one face input (3 channels each).
FACE_FRAMES = 5


class Conv2dBlock(nn.Module):
    """Conv2d → BatchNorm2d (→ + input if residual) → ReLU.

    State-dict keys: ``conv_block.0.{weight,bias}`` (conv) and
    ``conv_block.1.{weight,bias,running_mean,running_var,num_batches_tracked}`` (batch norm).
    A residual block needs ``cin == cout`` and a shape-preserving stride/padding.
    """

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], s: int | tuple[int, int],
                 p: int | tuple[int, int], residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, cin, H, W]`` → ``[B, cout, H', W']``."""
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return F.relu(out)


def _res(c: int, n: int) -> list[Conv2dBlock]:
    return [Conv2dBlock(c, c, 3, 1, 1, residual=True) for _ in range(n)]


def _check_width(width: float) -> float:
    if not (isinstance(width, (int, float)) and not isinstance(width, bool) and 0 < width <= 1):
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")
    return float(width)


def _scaled(width: float):
    """Channel-count scaler: ``c → max(1, round(c · width))``."""
    return lambda c: max(1, round(c * width))


class AudioEncoder(nn.Sequential):
    """Mel window ``[B, 1, 80, 16]`` → ``[B, 512, 1, 1]`` (non-negative: ends in a ReLU).

    Spatial sizes: 80×16 → 27×16 (stride (3,1)) → 9×6 (stride 3) → 3×3 (stride (3,2)) → 1×1.

    Args:
        layout: :data:`SYNCTALK` (13 blocks, ≈2.8 M parameters) or :data:`WAV2LIP` (14 blocks).
        width: hidden-channel multiplier in (0, 1]; the output stays 512 channels.
    """

    def __init__(self, layout: str = SYNCTALK, width: float = 1.0) -> None:
        if layout not in AUDIO_LAYOUTS:
            raise ValueError(f"unknown audio layout {layout!r}; expected one of {list(AUDIO_LAYOUTS)}")
        w = _scaled(_check_width(width))
        super().__init__(
            Conv2dBlock(1, w(32), 3, 1, 1), *_res(w(32), 2),
            Conv2dBlock(w(32), w(64), 3, (3, 1), 1), *_res(w(64), 2),
            Conv2dBlock(w(64), w(128), 3, 3, 1), *_res(w(128), 2),
            Conv2dBlock(w(128), w(256), 3, (3, 2), 1), *_res(w(256), AUDIO_LAYOUTS[layout]),
            Conv2dBlock(w(256), w(512), 3, 1, 0),
            Conv2dBlock(w(512), EMBED_DIM, 1, 1, 0),
        )
        self.layout = layout


class FaceEncoder(nn.Sequential):
    """Five stacked mouth crops ``[B, 15, 48, 96]`` → ``[B, 512, 1, 1]`` (non-negative).

    Spatial sizes: 48×96 → 46×47 (k5, stride (1,2)) → 23×24 → 12×12 → 6×6 → 3×3 → 1×1.
    Other input sizes run but do not reduce to 1×1.

    Args:
        width: hidden-channel multiplier in (0, 1]; the output stays 512 channels.
    """

    def __init__(self, width: float = 1.0) -> None:
        w = _scaled(_check_width(width))
        super().__init__(
            Conv2dBlock(3 * FACE_FRAMES, w(32), 7, 1, 3),
            Conv2dBlock(w(32), w(64), 5, (1, 2), 1), *_res(w(64), 2),
            Conv2dBlock(w(64), w(128), 3, 2, 1), *_res(w(128), 3),
            Conv2dBlock(w(128), w(256), 3, 2, 1), *_res(w(256), 2),
            Conv2dBlock(w(256), w(512), 3, 2, 1), *_res(w(512), 2),
            Conv2dBlock(w(512), w(512), 3, 2, 1),
            Conv2dBlock(w(512), w(512), 3, 1, 0),
            Conv2dBlock(w(512), EMBED_DIM, 1, 1, 0),
        )


def _flat_embedding(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.shape[1:] != (EMBED_DIM, 1, 1):
        raise ValueError(f"{what} branch produced {tuple(x.shape)}, expected [B, {EMBED_DIM}, 1, 1]; "
                         "check the input size")
    return F.normalize(x.flatten(1), p=2, dim=1)


class AVE(nn.Module):
    """Audio-visual lip-sync encoder: ``.audio`` (:class:`AudioEncoder`) + ``.face``
    (:class:`FaceEncoder`).

    Construction is deterministic: weights are drawn from a private generator seeded with
    ``seed``, leaving the global torch RNG untouched.

    Args:
        audio_layout: :data:`SYNCTALK` or :data:`WAV2LIP` (see :class:`AudioEncoder`).
        seed: seed of the initial weights.
        width: hidden-channel multiplier of both branches, in (0, 1] (1: published layout).
    """

    def __init__(self, audio_layout: str = SYNCTALK, seed: int = 0, width: float = 1.0) -> None:
        super().__init__()
        self.width = _check_width(width)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.audio = AudioEncoder(audio_layout, width)
            self.face = FaceEncoder(width)

    @property
    def audio_layout(self) -> str:
        return self.audio.layout

    def embed_audio(self, mel_windows: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 80, 16]`` normalised mel windows → ``[B, 512]`` unit-length embeddings."""
        return _flat_embedding(self.audio(mel_windows), "audio")

    def embed_face(self, crops: torch.Tensor) -> torch.Tensor:
        """Mouth crops → ``[B, 512]`` unit-length embeddings.

        Args:
            crops: ``[B, 15, 48, 96]``, values in [0, 1]: 5 consecutive frames (the frame of
                interest in the middle) stacked frame-major, 3 colour channels each, every
                crop the lower half of a square 96×96 face crop. Wav2Lip's expert was trained
                on OpenCV (BGR) channel order.
        """
        return _flat_embedding(self.face(crops), "face")

    @staticmethod
    def sync_prob(a: torch.Tensor, v: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
        """Probability that audio and face embeddings are in sync, as Wav2Lip's expert scores it.

        The cosine similarity of ``a`` and ``v`` (``[B, 512]`` each); ReLU outputs make it
        ≥ 0. Clamped to ``[eps, 1 − eps]`` so a binary cross-entropy on it stays finite.

        Returns:
            ``[B]``.
        """
        return F.cosine_similarity(a, v, dim=1).clamp(eps, 1.0 - eps)

    def identity(self) -> str:
        """Hex sha256 identifying the audio features this model computes.

        Hashes the layout and, in key order, every audio-branch state entry's name, dtype,
        shape and bytes (CPU, contiguous). The face branch is excluded: it does not affect
        audio features, and it is randomly initialised after importing an audio-only
        checkpoint. Use it as the encoder id of feature caches.
        """
        h = hashlib.sha256(f"{FORMAT}:{self.audio_layout}".encode())
        for key, value in self.audio.state_dict().items():
            t = value.detach().cpu().contiguous()
            h.update(f"\n{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def state_dict_problems(module: nn.Module, state: Mapping[str, Any], limit: int = 3) -> list[str]:
    """Compare ``state`` with ``module.state_dict()``: keys and tensor shapes.

    Returns:
        Human-readable problems (missing keys, unexpected keys, non-tensor values, shape
        mismatches), each naming at most ``limit`` keys; empty when ``state`` loads exactly.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    not_tensor = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    shapes = [f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
              for k in expected if isinstance(state.get(k), torch.Tensor)
              and state[k].shape != expected[k].shape]

    def listing(label: str, items: list[str]) -> str:
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return f"{len(items)} {label}: {', '.join(items[:limit])}{more}"

    groups = [("missing keys", missing), ("unexpected keys", extra),
              ("values that are not tensors", not_tensor), ("shape mismatches", shapes)]
    return [listing(label, items) for label, items in groups if items]


def save_ave(path, model: AVE, meta: Mapping[str, Any], *, with_face: bool = True) -> None:
    """Write ``model`` and JSON-like ``meta`` to ``path`` atomically (format :data:`FORMAT`).

    Args:
        with_face: store the face branch; pass False when it is untrained (e.g. after importing
            an audio-only checkpoint into a freshly constructed, ``seed=0`` AVE).

    Raises:
        ValueError: ``meta`` is not JSON-serialisable (it must load with ``weights_only``).
        OutputError: the destination cannot be written.
    """
    try:
        meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"AVE meta must be JSON-serialisable: {e}") from e
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if with_face or k.startswith("audio.")}
    arch = {"audio_layout": model.audio_layout, "has_face": with_face, "width": model.width}
    payload = {"format": FORMAT, "arch": arch, "state_dict": state, "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_ave(path) -> tuple[AVE, dict[str, Any]]:
    """Read a file written by :func:`save_ave`.

    Returns:
        ``(model, meta)``; the model is on the CPU in eval mode, rebuilt at the file's
        ``width``. A file saved without its face branch gets the ``seed=0`` initial face weights.

    Raises:
        InputError: ``path`` is missing. ModelFileError: not an AVE file, or its weights do
        not fit the architecture.
    """
    path = require_file(path, "AVE model file")
    hint = "create one with `synctalk ave import CHECKPOINT --out FILE`."
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-torch or damaged files
        raise ModelFileError(f"cannot read {path} as an AVE file: it is not a torch.save file, is "
                             f"damaged, or holds objects other than tensors and plain containers "
                             f"({type(e).__name__}) — {hint}") from e
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
        raise ModelFileError(f"{path} is not a {FORMAT} file (format: {found!r}) — {hint}")
    arch = payload.get("arch") if isinstance(payload.get("arch"), Mapping) else {}
    layout, has_face, width = arch.get("audio_layout"), arch.get("has_face"), arch.get("width", 1.0)
    try:
        model = AVE(layout, width=width) if isinstance(has_face, bool) else None
    except ValueError:
        model = None
    if model is None:
        raise ModelFileError(f"{path} has an unknown architecture {dict(arch)!r} (audio layouts: "
                             f"{', '.join(AUDIO_LAYOUTS)}; has_face: true/false; width in (0, 1]) "
                             f"— {hint}")
    # Without a face branch the file holds audio.* only: check and load just that part.
    target = model if has_face else nn.ModuleDict({"audio": model.audio})
    state = payload.get("state_dict")
    problems = state_dict_problems(target, state) if isinstance(state, Mapping) else ["no state_dict"]
    if problems:
        raise ModelFileError(f"{path} does not match the AVE architecture: {'; '.join(problems)} — {hint}")
    target.load_state_dict(state)
    meta = payload.get("meta")
    return model.eval(), dict(meta) if isinstance(meta, Mapping) else {}

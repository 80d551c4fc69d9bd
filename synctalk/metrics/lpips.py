"""LPIPS (learned perceptual image patch similarity, v0.1) with an AlexNet trunk, loaded from
weight files the user supplies — synctalk ships no pretrained weights.

Distance of two images ``x, y`` (``[B, 3, H, W]`` in [0, 1]):

1. map to [−1, 1] and standardise per channel with the fixed shift/scale of :data:`SHIFT`,
   :data:`SCALE`;
2. run AlexNet's convolutional trunk and keep the five ReLU outputs (64, 192, 384, 256, 256
   channels, :data:`CHANNELS`);
3. per layer: unit-normalise each position's feature vector over the channels, square the
   difference of the two images', weight the channels with the layer's non-negative linear
   weights (a 1×1 convolution), average over the positions;
4. sum over the layers → ``[B]``.

Weight files (``torch.save``\\ d state dicts, read with ``weights_only``):

* **backbone** — AlexNet's trunk with torchvision's key names: ``features.{0,3,6,8,10}.weight``
  and ``.bias`` (other keys, e.g. the classifier's, are ignored);
* **linear** — the per-layer weights with the LPIPS reference implementation's key names:
  ``lin{0..4}.model.1.weight``, shapes ``[1, C, 1, 1]``.

Inputs should be at least ~32 px a side (the trunk downsamples by 16 and its first layer has
an 11-px kernel with stride 4).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.errors import ModelFileError

#: Input standardisation of the LPIPS reference (applied to images in [−1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: Channels of the five AlexNet ReLU outputs LPIPS compares.
CHANNELS = (64, 192, 384, 256, 256)
#: torchvision ``features`` indices of the five convolutions, with (kernel, stride, padding).
_CONVS = ((0, 11, 4, 2), (3, 5, 1, 2), (6, 3, 1, 1), (8, 3, 1, 1), (10, 3, 1, 1))


class LPIPS(nn.Module):
    """LPIPS distance (module docstring); parameters are frozen (``requires_grad`` off) but
    gradients flow to the inputs, so it can be a training loss."""

    def __init__(self) -> None:
        super().__init__()
        in_ch = (3,) + CHANNELS[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, (_, k, s, p) in
                                   zip(in_ch, CHANNELS, _CONVS))
        self.lins = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, backbone, linear) -> LPIPS:
        """Load the AlexNet trunk and the linear weights (module docstring) from files."""
        net = cls()
        trunk = _read_state(backbone, "LPIPS backbone (AlexNet)")
        lin = _read_state(linear, "LPIPS linear weights")
        state = {}
        for layer, (idx, *_rest) in enumerate(_CONVS):
            for part in ("weight", "bias"):
                state[f"convs.{layer}.{part}"] = _take(trunk, f"features.{idx}.{part}", backbone)
            state[f"lins.{layer}"] = _take(lin, f"lin{layer}.model.1.weight", linear)
        try:
            net.load_state_dict({**state, "shift": net.shift, "scale": net.scale}, strict=True)
        except RuntimeError as e:
            raise ModelFileError(f"LPIPS weight files {backbone} / {linear} do not fit AlexNet-LPIPS "
                                 f"({str(e).splitlines()[0]}).") from e
        if any(bool((w < 0).any()) for w in net.lins):
            raise ModelFileError(f"{linear}: LPIPS linear weights must be non-negative.")
        return net

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs for ``x [B, 3, H, W]`` in [0, 1]."""
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for layer, conv in enumerate(self.convs):
            if layer in (1, 2):  # pooling after the first two ReLUs
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B]`` LPIPS distances of ``x, y [B, 3, H, W]`` in [0, 1]."""
        total = x.new_zeros(x.shape[0])
        for fx, fy, w in zip(self.features(x), self.features(y), self.lins):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((nx - ny).pow(2) * w).sum(1).mean((1, 2))
        return total


def _read_state(path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{what} file not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise ModelFileError(f"cannot read {what} {p} ({type(e).__name__}: {e}).") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"{p} is not a state dict ({what}).")
    return state


def _take(state: dict, key: str, path) -> torch.Tensor:
    if key not in state:
        raise ModelFileError(f"{path} has no {key!r}: not the expected AlexNet-LPIPS weight file.")
    return state[key].float()


__all__ = ["CHANNELS", "LPIPS", "SCALE", "SHIFT"]

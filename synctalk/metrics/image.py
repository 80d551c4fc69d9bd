"""Image quality: PSNR and SSIM, over the full frame or a mask.

Inputs are RGB images ``[H, W, 3]`` (or ``[H, W]``) as numpy arrays or torch tensors: uint8
(values 0..255) or float (values in [0, 1]). Both images of a pair are converted to float64
in [0, 1].

* :func:`psnr` — ``10·log10(1 / MSE)`` dB with the MSE over all channels of the pixels in
  ``mask`` (all pixels by default); identical images give ``inf``.
* :func:`ssim` — mean structural similarity (Wang et al. 2004: 11×11 Gaussian window,
  σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1) of the per-channel SSIM map, averaged over
  the pixels in ``mask``. The map is computed on the full image ("same" padding by
  reflection) so masked values see their true neighbourhood.
* :func:`ssim_loss_map` — the differentiable torch version on ``[B, C, H, W]`` batches
  (used by the lip fine-tune).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

C1 = 0.01 ** 2
C2 = 0.03 ** 2


def _as_float(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return a.astype(np.float64)


def _check_pair(a: np.ndarray, b: np.ndarray, mask) -> np.ndarray | None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if mask is None:
        return None
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    if m.shape != a.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the image's {a.shape[:2]}")
    return m


def psnr(pred, truth, mask=None) -> float:
    """PSNR in dB of ``pred`` against ``truth`` (over ``mask [H, W]`` pixels when given).

    Returns ``nan`` for an empty mask, ``inf`` for identical pixels.
    """
    a, b = _as_float(pred), _as_float(truth)
    m = _check_pair(a, b, mask)
    d = (a - b) ** 2
    if m is not None:
        if not m.any():
            return float("nan")
        d = d[m]
    mse = float(d.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of ``[B, C, H, W]`` images in [0, 1] → ``[B, C, H, W]`` (differentiable).

    Local statistics use a separable Gaussian window with reflection padding (images
    smaller than the window use a window of their size).
    """
    h, w = x.shape[-2:]
    window = min(window, h, w)
    if window % 2 == 0:
        window -= 1
    g = _gaussian_window(window, sigma, x.dtype).to(x.device)
    c = x.shape[1]
    gx = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    gy = g.view(1, 1, -1, 1).expand(c, 1, window, 1)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect") if pad else t
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + C1) * (2 * sxy + C2)
    den = (mx * mx + my * my + C1) * (sxx + syy + C2)
    return num / den


def ssim(pred, truth, mask=None) -> float:
    """Mean SSIM of ``pred`` against ``truth`` (over ``mask [H, W]`` pixels when given; ``nan``
    for an empty mask)."""
    a, b = _as_float(pred), _as_float(truth)
    m = _check_pair(a, b, mask)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    ta = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    tb = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1)))[None]
    s = ssim_map(ta, tb)[0].mean(0).numpy()  # [H, W]
    if m is not None:
        if not m.any():
            return float("nan")
        return float(s[m].mean())
    return float(s.mean())


def ssim_loss_map(pred: torch.Tensor, truth: torch.Tensor, window: int = 11) -> torch.Tensor:
    """``1 − SSIM`` averaged over ``[B, C, H, W]`` float images in [0, 1] (a scalar tensor)."""
    return 1.0 - ssim_map(pred, truth, window).mean()


__all__ = ["psnr", "ssim", "ssim_map", "ssim_loss_map"]

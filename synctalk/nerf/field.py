"""The head field: tri-plane grid + audio/blendshape conditioning with region attention.

For a point ``x`` of the head box (:mod:`synctalk.nerf.geometry`) and the conditioning of its
frame:

1. **Tri-plane encoding** (:func:`synctalk.ops.grid.triplane_encode`): ``x`` mapped to
   [0, 1]³ is looked up in three 2-D multi-resolution grids on the (x,y), (y,z), (x,z) planes
   → ``e [3·L·F]`` (36-d for 12 levels × 1 feature).
2. **Audio code** (per frame, :class:`AudioNet` + :class:`AudioAttention`): each frame's
   feature (512-d AVE) → MLP → 32-d; the codes of frames ``[t − w/2, t + w/2)`` (indices
   clamped to the clip) are mixed by a temporal attention (1-D conv stack → softmax weights)
   into one 32-d code ``a_t``.
3. **Region attention** (per point): ``α_a = MLP(e) [32]`` multiplies the audio code and
   ``α_b = MLP(e) [k]`` multiplies the k blendshape scores (hidden width ``region_hidden``),
   so each point decides how much audio / expression drive it. Their mean magnitudes,
   composited along rays, are the *ambient* outputs the locality losses penalise outside
   the lower face / eye region.
4. **Density MLP** on ``[e, α_a ⊙ a_t, α_b ⊙ b_t]`` → σ = exp(clamp(h₀)) (box units⁻¹) and a
   64-d geometry feature ``g``.
5. **Colour MLP** on ``[SH₄(d), g, c_f]`` (16 real spherical-harmonic values of the unit
   view direction, ``c_f`` the frame's 4-d appearance code) → RGB via sigmoid.
6. **Uncertainty** ``u = softplus(Linear(g)) ≥ 0`` per point; composited per ray it weights
   the photometric loss.

Conditioning is computed once per frame of a batch (:meth:`HeadField.frame_conditioning`)
and gathered per sample through a ``[S]`` index, so one step can mix frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.nerf.geometry import AABB
from synctalk.ops.grid import GridSpec, TriPlaneEncoder


def mlp(d_in: int, d_hidden: int, d_out: int, n_layers: int, *, bias: bool = True) -> nn.Sequential:
    """``n_layers`` linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    d = d_in
    for i in range(n_layers):
        last = i == n_layers - 1
        layers.append(nn.Linear(d, d_out if last else d_hidden, bias=bias))
        if not last:
            layers.append(nn.ReLU(inplace=True))
        d = d_hidden
    return nn.Sequential(*layers)


def sh_basis_deg4(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics of bands 0..3 (16 values) of unit directions ``[N, 3]``.

    Standard real SH normalisation (orthonormal on the sphere); ``[N, 16]``.
    """
    x, y, z = d.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.4886025119029199 * y,
        0.4886025119029199 * z,
        -0.4886025119029199 * x,
        1.0925484305920792 * x * y,
        -1.0925484305920792 * y * z,
        0.31539156525252005 * (2.0 * zz - xx - yy),
        -1.0925484305920792 * x * z,
        0.5462742152960396 * (xx - yy),
        -0.5900435899266435 * y * (3.0 * xx - yy),
        2.890611442640554 * x * y * z,
        -0.4570457994644658 * y * (4.0 * zz - xx - yy),
        0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
        -0.4570457994644658 * x * (4.0 * zz - xx - yy),
        1.445305721320277 * z * (xx - yy),
        -0.5900435899266435 * x * (xx - 3.0 * yy),
    ], -1)


class AudioNet(nn.Module):
    """Per-frame audio feature ``[..., D_in]`` → code ``[..., D_out]`` (MLP 256 → 128 → D_out,
    leaky ReLU)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 256), nn.LeakyReLU(0.02, inplace=True),
                                 nn.Linear(256, 128), nn.LeakyReLU(0.02, inplace=True),
                                 nn.Linear(128, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AudioAttention(nn.Module):
    """Temporal attention over a window of per-frame codes.

    ``[B, W, C]`` codes → 1-D convolutions along the window (channels C → 16 → 8 → 4 → 2 → 1,
    kernel 3, leaky ReLU) → ``[B, W]`` → linear → softmax weights → ``[B, C]`` weighted sum.
    """

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        chans = [dim, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv1d(a, b, 3, padding=1), nn.LeakyReLU(0.02, inplace=True)]
        self.conv = nn.Sequential(*layers[:-1])
        self.fc = nn.Linear(window, window)

    def weights(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, W, C]`` → ``[B, W]`` softmax weights."""
        s = self.conv(codes.transpose(1, 2))[:, 0]  # [B, W]
        return torch.softmax(self.fc(s), dim=-1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return (self.weights(codes)[..., None] * codes).sum(1)


@dataclass
class FrameConditioning:
    """Per-frame inputs of a batch (``B`` frames).

    Attributes:
        audio: ``[B, audio_dim]`` attended audio codes; bs: ``[B, k]`` blendshape scores;
        appearance: ``[B, appearance_dim]`` codes.
    """

    audio: torch.Tensor
    bs: torch.Tensor
    appearance: torch.Tensor

    def index(self, i: torch.Tensor) -> "FrameConditioning":
        return FrameConditioning(self.audio[i], self.bs[i], self.appearance[i])


def window_indices(t: torch.Tensor, window: int, n: int) -> torch.Tensor:
    """``[B]`` frame indices → ``[B, window]`` indices ``t − w/2 … t + w/2 − 1`` clamped to
    ``[0, n)``."""
    off = torch.arange(window, device=t.device) - window // 2
    return (t[:, None] + off).clamp(0, n - 1)


class HeadField(nn.Module):
    """The conditioned head NeRF (module docstring).

    Args:
        cfg: a :class:`~synctalk.nerf.config.TrainConfig` (grid, widths, code sizes).
        n_frames: frames of the subject (appearance codes are per frame).
        n_bs: blendshape inputs (k).
        audio_in: audio feature size (512 for AVE).
        generator: seeds the grid tables (the MLPs use the global torch RNG state the
            caller has seeded).
    """

    def __init__(self, cfg, n_frames: int, n_bs: int, audio_in: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.spec = GridSpec(dim=2, n_levels=cfg.grid_levels, n_features=cfg.grid_features,
                             base_resolution=cfg.grid_base_res, max_resolution=cfg.grid_max_res,
                             log2_hashmap_size=cfg.grid_log2_hashmap)
        self.encoder = TriPlaneEncoder(self.spec, generator=generator)
        enc = self.encoder.out_dim
        self.enc_dim = enc
        self.audio_window = cfg.audio_window
        self.sigma_clamp = cfg.sigma_clamp
        self.audio_net = AudioNet(audio_in, cfg.audio_dim)
        self.audio_att = AudioAttention(cfg.audio_dim, cfg.audio_window)
        self.audio_region = mlp(enc, cfg.region_hidden, cfg.audio_dim, 2)
        self.bs_region = mlp(enc, cfg.region_hidden, n_bs, 2)
        self.density_net = mlp(enc + cfg.audio_dim + n_bs, cfg.hidden_dim, 1 + cfg.geo_dim,
                               cfg.density_layers)
        self.color_net = mlp(16 + cfg.geo_dim + cfg.appearance_dim, cfg.hidden_dim, 3,
                             cfg.color_layers)
        self.unc_net = nn.Linear(cfg.geo_dim, 1)
        self.appearance = nn.Embedding(n_frames, cfg.appearance_dim)
        nn.init.zeros_(self.appearance.weight)
        lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
        self.register_buffer("aabb_lo", lo, persistent=False)
        self.register_buffer("aabb_size", hi - lo, persistent=False)

    @property
    def backend(self) -> str:
        return self.encoder.backend

    @backend.setter
    def backend(self, name: str) -> None:
        self.encoder.backend = name

    # ------------------------------------------------------------ parameter groups
    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.encoder.tables]

    def net_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    # ------------------------------------------------------------ conditioning
    def audio_codes(self, feats: torch.Tensor, frames: torch.Tensor,
                    ema: float = 0.0) -> torch.Tensor:
        """Attended audio codes of ``frames [B]`` from a clip's features ``feats [T, D]``.

        ``ema`` in [0, 1): optional smoothing — the code of frame t becomes the normalised
        exponentially weighted mean of the codes of t, t−1, … t−7 with weight ``ema^j``
        (stateless, so any frame can be rendered alone).
        """
        n = len(feats)
        if ema <= 0:
            win = window_indices(frames, self.audio_window, n)      # [B, W]
            return self.audio_att(self.audio_net(feats[win]))
        lags = torch.arange(8, device=frames.device)
        w = ema ** lags.float()
        w = w / w.sum()
        src = (frames[:, None] - lags).clamp(0, n - 1)               # [B, 8]
        win = window_indices(src.reshape(-1), self.audio_window, n)  # [B·8, W]
        codes = self.audio_att(self.audio_net(feats[win])).view(len(frames), 8, -1)
        return (w[None, :, None] * codes).sum(1)

    def frame_conditioning(self, feats: torch.Tensor, audio_frames: torch.Tensor, bs: torch.Tensor,
                           code_frames: torch.Tensor, ema: float = 0.0) -> FrameConditioning:
        """Conditioning of ``B`` frames: audio at ``audio_frames [B]`` of ``feats [T, D]``,
        blendshapes ``bs [B, k]``, appearance codes of subject frames ``code_frames [B]``."""
        return FrameConditioning(self.audio_codes(feats, audio_frames, ema), bs,
                                 self.appearance(code_frames))

    # ------------------------------------------------------------ evaluation
    def encode(self, xyz: torch.Tensor) -> torch.Tensor:
        """``[S, 3]`` box points → ``[S, enc_dim]`` tri-plane features."""
        u = ((xyz - self.aabb_lo) / self.aabb_size).clamp(0.0, 1.0)
        return self.encoder(u)

    def density(self, xyz: torch.Tensor, cond: FrameConditioning,
                index: torch.Tensor | None = None, enc: torch.Tensor | None = None) -> dict:
        """Density part.

        Args:
            xyz: ``[S, 3]`` box points. cond: per-frame conditioning (``B`` frames).
            index: ``[S]`` int64 frame (row of ``cond``) of each point; None → ``B`` must be 1.
            enc: precomputed :meth:`encode` output.

        Returns:
            ``{"sigma" [S], "geo" [S, geo_dim], "amb_audio" [S], "amb_bs" [S], "enc"}``; ambient
            values are the mean absolute attention of each point.
        """
        e = self.encode(xyz) if enc is None else enc
        if index is None:
            a, b = cond.audio.expand(len(e), -1), cond.bs.expand(len(e), -1)
        else:
            a, b = cond.audio[index], cond.bs[index]
        att_a = self.audio_region(e)
        att_b = self.bs_region(e)
        h = self.density_net(torch.cat([e, att_a * a, att_b * b], -1))
        sigma = torch.exp(h[:, 0].float().clamp(-self.sigma_clamp, self.sigma_clamp))
        return {"sigma": sigma, "geo": h[:, 1:], "amb_audio": att_a.abs().mean(-1),
                "amb_bs": att_b.abs().mean(-1), "enc": e}

    def color(self, dirs: torch.Tensor, geo: torch.Tensor, cond: FrameConditioning,
              index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rgb [S, 3] in (0, 1), uncertainty [S] ≥ 0)`` from unit directions ``[S, 3]`` and
        geometry features ``[S, geo_dim]``."""
        app = cond.appearance.expand(len(geo), -1) if index is None else cond.appearance[index]
        h = self.color_net(torch.cat([sh_basis_deg4(dirs), geo, app], -1))
        return torch.sigmoid(h.float()), F.softplus(self.unc_net(geo)[:, 0].float())

    def forward(self, xyz: torch.Tensor, dirs: torch.Tensor, cond: FrameConditioning,
                index: torch.Tensor | None = None) -> dict:
        """Everything at once: :meth:`density` outputs plus ``rgb [S, 3]`` and ``unc [S]``."""
        out = self.density(xyz, cond, index)
        out["rgb"], out["unc"] = self.color(dirs, out["geo"], cond, index)
        return out

"""Training configuration: one flat dataclass, presets as YAML, every field a CLI option.

:class:`TrainConfig` holds everything that shapes a model and its training. Presets live in
``configs/train_<name>.yaml`` (keys are field names, dashes or underscores); ``synctalk train``
builds the config as

    dataclass defaults < preset (``--preset``, default ``demo``) < ``-c FILE`` / ``SYNCTALK_*`` /
    command-line options,

and writes the resolved result to the model directory's ``config.json``. Resuming reads
that file back, so a resumed run uses exactly the settings it started with.

Units: pixel counts are at the training size; ``time_budget`` is in minutes; learning
rates are AdamW step sizes; loss weights multiply per-ray means.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from synctalk.errors import InputError

#: Where the preset YAML files live (the repository's ``configs/``).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PRESETS = ("demo", "default")


@dataclass
class TrainConfig:
    """All settings of a model and its training (see ``synctalk train --help``)."""

    # --- data
    size: int | None = None
    """training image side in px (≤ the subject's; None = the subject's size)"""
    # --- tri-plane grid (per plane: levels × features, resolutions base → max, hash table size)
    grid_levels: int = 12
    """tri-plane grid: levels per plane"""
    grid_features: int = 1
    """tri-plane grid: features per level"""
    grid_base_res: int = 64
    """tri-plane grid: coarsest resolution (cells per side)"""
    grid_max_res: int = 512
    """tri-plane grid: finest resolution (cells per side)"""
    grid_log2_hashmap: int = 14
    """tri-plane grid: log2 of the rows per level; levels with more vertices are hashed"""
    # --- networks
    hidden_dim: int = 64
    """width of the density and colour MLPs"""
    density_layers: int = 3
    """layers of the density MLP"""
    color_layers: int = 2
    """layers of the colour MLP"""
    geo_dim: int = 64
    """geometry feature passed from the density to the colour MLP"""
    region_hidden: int = 64
    """width of the per-point region-attention MLPs (audio and blendshapes)"""
    audio_dim: int = 32
    """per-frame audio code size"""
    audio_noise: float = 0.0
    """training: std of Gaussian noise added to the normalised audio features (smooths the
    audio → expression mapping so it carries over to new speech)"""
    audio_pca: int = 0
    """project the standardised audio features on their top-N principal components over the
    training frames before the audio net (0: use all dimensions); a short clip's 512-d
    features otherwise let the audio net memorise frames instead of mouth shapes"""
    audio_window: int = 8
    """frames in the temporal audio attention, [t − w/2, t + w/2)"""
    appearance_dim: int = 4
    """per-frame appearance code size"""
    torso_code_dim: int = 8
    """per-frame torso code size"""
    sigma_clamp: float = 15.0
    """the density pre-activation is clamped to ± this before exp"""
    # --- occupancy grid and ray marching
    occ_resolution: int = 128
    """occupancy grid cells per side"""
    occ_update_every: int = 16
    """steps between occupancy-grid updates"""
    occ_warmup: int = 64
    """steps before the first occupancy update (all seen cells count as occupied until then)"""
    occ_decay: float = 0.95
    """EMA-max decay of the density grid at each update"""
    occ_threshold: float = 10.0
    """occupancy threshold cap: occupied when density > min(mean, this)"""
    occ_fraction: float = 1.0
    """share of the seen cells re-evaluated at each occupancy update (the rest only decay)"""
    samples_per_ray: int = 16
    """samples per ray in training (before occupancy pruning)"""
    infer_samples: int = 64
    """samples per ray at inference (with early termination)"""
    early_stop: float = 1e-4
    """inference: samples after the transmittance drops below this are skipped"""
    train_prune: float | None = 1e-3
    """training: samples behind transmittance below this are skipped (None: keep all)"""
    # --- ray sampling
    rays_per_step: int = 65536
    """rays per training step (head and torso stages)"""
    frames_per_step: int = 1
    """frames the rays of one step are drawn from"""
    mouth_fraction: float = 0.1
    """fraction of a step's rays drawn inside the mouth box (grown by half its size)"""
    face_fraction: float = 0.4
    """fraction of a step's rays drawn inside the face box"""
    head_fraction: float = 0.3
    """fraction drawn inside the head box (the rest: anywhere the rays hit the head AABB)"""
    lip_patch: int = 64
    """lip stage: side in px of the square patch around the mouth"""
    lip_random_patches: int = 1
    """lip stage: extra patches of the same size at random places on the head"""
    # --- stages
    head_iters: int = 60000
    """head-stage steps"""
    lip_iters: int = 40000
    """lip fine-tune steps"""
    register_iters: int = 400
    """register stage: steps fitting the val frames' pose corrections to the frozen head (0 = off)"""
    torso_iters: int = 20000
    """torso-stage steps (0 = keep the subject's torso images)"""
    # --- optimiser
    lr_grid: float = 1e-2
    """AdamW learning rate of the grid tables"""
    lr_net: float = 1e-3
    """AdamW learning rate of the networks and codes"""
    lr_final: float = 0.1
    """learning rates decay exponentially to this fraction at the end of a stage group"""
    lr_pose: float = 1e-4
    """AdamW learning rate of the per-frame pose corrections (0 = keep prep's poses)"""
    lr_register: float = 3e-3
    """AdamW learning rate of the val frames' pose corrections in the register stage"""
    pose_warmup: int = 1000
    """head-stage steps before the pose corrections start to learn"""
    register_rays: int = 4096
    """register stage: rays per step, spread over all val frames"""
    weight_decay: float = 1e-6
    """AdamW weight decay of the networks (grids: none)"""
    adam_beta1: float = 0.0
    """AdamW β₁"""
    adam_beta2: float = 0.99
    """AdamW β₂"""
    adam_eps: float = 1e-15
    """AdamW ε"""
    # --- losses
    w_uncertainty: float = 0.1
    """uncertainty weighting: L1 / β + w·log β per ray (0 = plain L1)"""
    w_entropy: float = 1e-4
    """weights-entropy (opacity → 0 or 1)"""
    w_alpha: float = 0.0
    """binary cross-entropy of the head opacity against the head mask"""
    w_audio_locality: float = 1e-4
    """audio attention on rays outside the lower face"""
    w_bs_locality: float = 1e-4
    """blendshape attention on rays outside the eyes/brows"""
    w_lip_ssim: float = 0.2
    """lip stage: weight of 1 − SSIM on the patches"""
    w_lip_lpips: float = 0.0
    """lip stage: weight of LPIPS on the patches (needs lpips_backbone and lpips_linear)"""
    lpips_backbone: str | None = None
    """LPIPS: AlexNet trunk weights file (torchvision key names, e.g. alexnet-owt-7be5be79.pth)"""
    lpips_linear: str | None = None
    """LPIPS: v0.1 linear-layer weights file (lin0..lin4, e.g. the lpips package's alex.pth)"""
    # --- torso
    torso_levels: int = 8
    """torso 2-D grid levels"""
    torso_features: int = 2
    """torso 2-D grid features per level"""
    torso_base_res: int = 16
    """torso 2-D grid coarsest resolution"""
    torso_max_res: int = 512
    """torso 2-D grid finest resolution"""
    torso_anchors: int = 8
    """learnable anchor points projected with the head pose"""
    torso_rays_per_step: int = 16384
    """rays per torso-stage step"""
    # --- bookkeeping
    val_every: int = 2000
    """steps between validation renders (0 = only at the end)"""
    val_frames: int = 4
    """val frames rendered at each validation"""
    final_val_frames: int = 16
    """val frames scored at the end (spread over the val split; 0 = all)"""
    ckpt_every: int = 5000
    """steps between checkpoints"""
    log_every: int = 50
    """steps between JSON-lines log records"""
    seed: int = 0
    """seed of initial weights and ray sampling"""
    time_budget: float | None = None
    """wall-clock cap in minutes for all stages; steps are rescaled to fit"""

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, what: str = "config") -> "TrainConfig":
        """Build from a (partial) dict; unknown keys are an :class:`InputError`."""
        data = {str(k).replace("-", "_"): v for k, v in (data or {}).items()}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown training setting(s) in {what}: {', '.join(unknown)}; "
                             "see `synctalk train --help` for the known ones.")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> "TrainConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(f"invalid training setting: {msg}")

        need(self.size is None or self.size >= 32, f"size must be ≥ 32, got {self.size}")
        need(self.grid_levels >= 1 and self.grid_features >= 1, "grid_levels/grid_features ≥ 1")
        need(2 <= self.grid_base_res <= self.grid_max_res, "need 2 ≤ grid_base_res ≤ grid_max_res")
        need(8 <= self.grid_log2_hashmap <= 24, "grid_log2_hashmap must be in 8..24")
        need(self.audio_window >= 1, "audio_window ≥ 1")
        need(self.audio_pca >= 0 and self.audio_noise >= 0, "audio_pca and audio_noise ≥ 0")
        need(min(self.hidden_dim, self.geo_dim, self.region_hidden) >= 1, "MLP widths ≥ 1")
        need(self.samples_per_ray >= 1 and self.infer_samples >= 1, "samples per ray ≥ 1")
        need(self.occ_resolution >= 8 and self.occ_resolution % 8 == 0,
             "occ_resolution must be a multiple of 8")
        need(self.occ_update_every >= 1, "occ_update_every ≥ 1")
        need(self.train_prune is None or 0 < self.train_prune < 1, "train_prune must be in (0, 1)")
        need(0 < self.occ_fraction <= 1, "occ_fraction must be in (0, 1]")
        need(self.rays_per_step >= 16, "rays_per_step ≥ 16")
        need(self.frames_per_step >= 1, "frames_per_step ≥ 1")
        need(min(self.mouth_fraction, self.face_fraction, self.head_fraction) >= 0
             and self.mouth_fraction + self.face_fraction + self.head_fraction <= 1,
             "mouth_fraction, face_fraction and head_fraction must be ≥ 0 with a sum ≤ 1")
        need(self.lip_patch >= 8, "lip_patch ≥ 8")
        need(min(self.head_iters, self.lip_iters, self.register_iters, self.torso_iters) >= 0,
             "iteration counts ≥ 0")
        need(min(self.lr_pose, self.lr_register, self.pose_warmup) >= 0,
             "lr_pose, lr_register and pose_warmup ≥ 0")
        need(self.register_rays >= 16, "register_rays ≥ 16")
        need(self.w_lip_lpips >= 0, "w_lip_lpips ≥ 0")
        need(self.w_lip_lpips == 0 or (self.lpips_backbone and self.lpips_linear),
             "w_lip_lpips > 0 needs the LPIPS weight files: set lpips_backbone (AlexNet trunk) "
             "and lpips_linear (LPIPS linear layers); synctalk ships no pretrained weights")
        need(self.head_iters + self.lip_iters + self.torso_iters > 0, "nothing to train: all iters 0")
        need(0 < self.lr_final <= 1, "lr_final must be in (0, 1]")
        need(self.torso_anchors >= 1, "torso_anchors ≥ 1")
        need(self.time_budget is None or self.time_budget > 0, "time_budget must be positive")
        need(self.ckpt_every >= 1 and self.log_every >= 1, "ckpt_every and log_every ≥ 1")


#: One-line help of every field (the docstring under it), for the CLI.
def field_help() -> dict[str, str]:
    import ast
    import inspect

    src = inspect.getsource(TrainConfig)
    tree = ast.parse(src)
    helps: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(
                getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str):
            helps[a.target.id] = b.value.value.strip()  # type: ignore[attr-defined]
    return helps


def read_yaml(path) -> dict[str, Any]:
    """A YAML mapping of settings (``{}`` for an empty file)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"{p} must hold a mapping of setting: value")
    return data


def preset_path(name: str) -> Path:
    """``configs/train_<name>.yaml``."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    path = CONFIG_DIR / f"train_{name}.yaml"
    if not path.is_file():
        raise InputError(f"preset file {path} is missing (presets live in the repository's "
                         "configs/); pass the settings with -c FILE instead.")
    return path


def load_preset(name: str) -> TrainConfig:
    """The dataclass defaults overridden by ``configs/train_<name>.yaml``."""
    path = preset_path(name)
    data = {k.replace("-", "_"): v for k, v in read_yaml(path).items()}
    data.pop("preset", None)
    return TrainConfig.from_dict(data, what=str(path))


def resolve(preset: str, overrides: dict[str, Any]) -> TrainConfig:
    """Preset values with ``overrides`` (``None`` values are ignored) applied on top."""
    base = load_preset(preset)
    changes = {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(unknown)}")
    return base.replace(**changes)


__all__ = ["TrainConfig", "PRESETS", "CONFIG_DIR", "field_help", "load_preset", "preset_path",
           "read_yaml", "resolve"]

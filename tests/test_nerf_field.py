"""Head/torso fields, SH basis, audio attention, configs and image metrics (no subject needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synctalk.errors import InputError
from synctalk.metrics.image import psnr, ssim, ssim_loss_map
from synctalk.nerf.config import TrainConfig, load_preset, resolve
from synctalk.nerf.field import AudioAttention, HeadField, sh_basis_deg4, window_indices
from synctalk.nerf.geometry import AABB, HeadBox
from synctalk.nerf.torso import TorsoField


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(grid_levels=4, grid_features=2, grid_base_res=8, grid_max_res=64,
                grid_log2_hashmap=10, hidden_dim=16, geo_dim=8, torso_levels=3, torso_features=2,
                torso_base_res=8, torso_max_res=32, torso_anchors=4, occ_resolution=16)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def field(one_thread):
    torch.manual_seed(0)
    return HeadField(tiny_cfg(), n_frames=10, n_bs=7, audio_in=24,
                     generator=torch.Generator().manual_seed(0))


def test_head_field_shapes_ranges_and_gradients(field):
    feats = torch.randn(10, 24)
    frames = torch.tensor([0, 5, 9])
    cond = field.frame_conditioning(feats, frames, torch.rand(3, 7), frames)
    assert cond.audio.shape == (3, 32) and cond.appearance.shape == (3, 4)
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    xyz = lo + torch.rand(200, 3) * (hi - lo)
    dirs = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    index = torch.randint(0, 3, (200,))
    out = field(xyz, dirs, cond, index)
    assert out["sigma"].shape == (200,) and (out["sigma"] > 0).all()
    assert out["rgb"].shape == (200, 3) and ((out["rgb"] > 0) & (out["rgb"] < 1)).all()
    assert out["unc"].shape == (200,) and (out["unc"] >= 0).all()
    assert out["geo"].shape == (200, 8)
    assert out["amb_audio"].shape == (200,) and out["amb_bs"].shape == (200,)
    loss = out["rgb"].sum() + out["sigma"].log().sum() + out["unc"].sum()
    loss.backward()
    for name in ("encoder.tables", "audio_net.net.0.weight", "audio_att.fc.weight",
                 "audio_region.0.weight", "bs_region.0.weight", "density_net.0.weight",
                 "color_net.0.weight", "unc_net.weight", "appearance.weight"):
        g = dict(field.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_audio_and_blendshapes_change_density_only_through_region_attention(field):
    """Zero region attention ⇒ the audio code cannot move the density."""
    feats = torch.randn(10, 24)
    xyz = torch.rand(50, 3) - 0.5
    f = torch.tensor([3])
    c1 = field.frame_conditioning(feats, f, torch.rand(1, 7), f)
    c2 = field.frame_conditioning(feats * 3, f, torch.rand(1, 7), f)
    s1, s2 = field.density(xyz, c1)["sigma"], field.density(xyz, c2)["sigma"]
    assert not torch.allclose(s1, s2)
    for mod in (field.audio_region, field.bs_region):
        for p in mod.parameters():
            torch.nn.init.zeros_(p)
    s1, s2 = field.density(xyz, c1)["sigma"], field.density(xyz, c2)["sigma"]
    torch.testing.assert_close(s1, s2)


def test_sigma_is_clamped(field):
    with torch.no_grad():
        field.density_net[-1].bias[0] = 1e4
    out = field.density(torch.zeros(4, 3), field.frame_conditioning(
        torch.zeros(10, 24), torch.tensor([0]), torch.zeros(1, 7), torch.tensor([0])))
    assert torch.isfinite(out["sigma"]).all()
    assert float(out["sigma"].detach().max()) == pytest.approx(math.exp(15.0), rel=1e-5)


def test_temporal_attention_window_and_weights():
    idx = window_indices(torch.tensor([0, 5, 9]), 8, 10)
    assert idx[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert idx[1].tolist() == list(range(1, 9))
    assert idx[2].tolist() == [5, 6, 7, 8, 9, 9, 9, 9]
    att = AudioAttention(32, 8)
    w = att.weights(torch.randn(5, 8, 32))
    assert w.shape == (5, 8) and torch.allclose(w.sum(-1), torch.ones(5)) and (w > 0).all()
    codes = torch.randn(1, 8, 32).expand(2, 8, 32).clone()
    codes[1] = codes[0]  # identical windows → identical outputs
    out = att(codes)
    torch.testing.assert_close(out[0], out[1])


def test_audio_ema_is_a_weighted_mean_of_past_codes(field):
    feats = torch.randn(20, 24)
    t = torch.tensor([10])
    plain = field.audio_codes(feats, t)
    smoothed = field.audio_codes(feats, t, ema=0.5)
    lags = torch.arange(8)
    past = field.audio_codes(feats, t - lags)
    w = 0.5 ** lags.float()
    torch.testing.assert_close(smoothed[0], (w[:, None] * past).sum(0) / w.sum())
    assert not torch.allclose(plain, smoothed)


def test_sh_basis_is_orthonormal():
    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200000, 3, dtype=torch.float64), dim=-1)
    y = sh_basis_deg4(d)
    gram = (y.T @ y) / len(d) * 4 * math.pi
    assert y.shape == (200000, 16)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_torso_field_shapes_and_gradients(one_thread):
    cfg = tiny_cfg()
    torso = TorsoField(cfg, n_frames=6, generator=torch.Generator().manual_seed(0))
    cam_o = torch.tensor([[0.0, 8.0, 0.0]])
    rot = torch.tensor([[[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]])  # camera z → box −y
    K = torch.tensor([[200.0, 0, 32], [0, 200.0, 32], [0, 0, 1]])
    anchors = torso.anchor_positions(cam_o, rot, K, 64)
    assert anchors.shape == (1, 8)
    xy = torch.randint(0, 64, (100, 2))
    rgb, a = torso(xy, anchors.expand(100, -1), torch.full((100,), 2), 64)
    assert rgb.shape == (100, 3) and a.shape == (100,)
    assert ((a > 0) & (a < 1)).all()
    (rgb.sum() + a.sum()).backward()
    assert torso.grid.table.grad.abs().sum() > 0 and torso.anchors.grad.abs().sum() > 0


def test_head_box_round_trip():
    box = HeadBox((10.0, -5.0, 40.0), (0.01, 0.005, 0.008))
    x = np.random.default_rng(0).normal(size=(20, 3)) * 100
    np.testing.assert_allclose(box.box_to_world(box.world_to_box(x)), x, atol=1e-9)
    assert HeadBox.from_dict(box.to_dict()) == box
    # world +z (into the head) is box −y; world +y (down) is box +z
    np.testing.assert_allclose(box.world_to_box(np.array([10.0, -5.0, 140.0])), [0, -0.5, 0], atol=1e-12)
    np.testing.assert_allclose(box.world_to_box(np.array([10.0, 120.0, 40.0])), [0, 0, 1.0], atol=1e-12)


def test_presets_and_config_validation():
    demo, default = load_preset("demo"), load_preset("default")
    assert demo.size <= 256 and demo.rays_per_step <= 4096 and demo.time_budget
    assert (default.size, default.rays_per_step, default.head_iters, default.lip_iters) == (512, 65536, 60000, 40000)
    assert default.torso_iters > 0 and (default.grid_levels, default.grid_features) == (12, 1)
    cfg = resolve("demo", {"rays_per_step": 512, "seed": None})
    assert cfg.rays_per_step == 512 and cfg.seed == demo.seed
    with pytest.raises(InputError, match="unknown training setting"):
        TrainConfig.from_dict({"no_such_thing": 1})
    with pytest.raises(InputError, match="face_fraction"):
        TrainConfig(face_fraction=0.8, head_fraction=0.5).validate()
    with pytest.raises(InputError, match="unknown preset"):
        load_preset("huge")
    assert TrainConfig.from_dict(demo.to_dict()) == demo


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(np.float64) / 255 + 0.1, 0, 1)
    af = a.astype(np.float64) / 255
    assert psnr(b, af) == pytest.approx(10 * math.log10(1 / np.mean((b - af) ** 2)))
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    c = af.copy()
    c[16:] = 0  # damage only outside the mask
    assert psnr(c, af, mask=mask) == math.inf and psnr(c, af) < 20
    assert ssim(c, af, mask=mask) > ssim(c, af)
    assert math.isnan(psnr(c, af, mask=np.zeros((32, 32), bool)))
    noisy = np.clip(af + rng.normal(0, 0.2, af.shape), 0, 1)
    assert 0 < ssim(noisy, af) < 0.9
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss = ssim_loss_map(x, torch.rand(2, 3, 16, 16))
    loss.backward()
    assert 0 < float(loss.detach()) < 2 and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:16])


def test_audio_normalisation_with_and_without_pca():
    from synctalk.nerf.model import TalkingHeadModel

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 64, generator=g) @ torch.randn(64, 64, generator=g) + 5.0
    plain = TalkingHeadModel(tiny_cfg(), 300, 7, 64)
    plain.set_audio_stats(feats)
    z = plain.normalize_audio(feats)
    assert z.shape == (300, 64)
    torch.testing.assert_close(z.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    pca = TalkingHeadModel(tiny_cfg(audio_pca=8), 300, 7, 64)
    assert pca.head.audio_net.net[0].in_features == 8
    pca.set_audio_stats(feats)
    p = pca.normalize_audio(feats)
    assert p.shape == (300, 8)
    torch.testing.assert_close(p.std(0), torch.ones(8), atol=1e-3, rtol=0)
    # whitened components: uncorrelated, and they keep the most variance any 8 directions can
    cov = (p - p.mean(0)).T @ (p - p.mean(0)) / 299
    torch.testing.assert_close(cov, torch.eye(8), atol=1e-3, rtol=0)
    basis = torch.nn.functional.normalize(pca.audio_basis, dim=0)
    kept = (z @ basis).var(0).sum()
    assert kept >= z[:, :8].var(0).sum() and kept >= (z @ torch.linalg.qr(torch.randn(64, 8, generator=g))[0]).var(0).sum()

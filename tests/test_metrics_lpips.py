"""LPIPS from user-supplied weight files (synctalk.metrics.lpips) and its use as a lip-stage
loss. The weight files here are random, written with the reference key names."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from synctalk.errors import InputError, ModelFileError
from synctalk.metrics.lpips import CHANNELS, LPIPS, SCALE, SHIFT

#: torchvision AlexNet ``features`` conv layers: index → (in, out, kernel, stride, padding).
CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1),
         8: (384, 256, 3, 1, 1), 10: (256, 256, 3, 1, 1)}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    trunk = {}
    for i, (cin, cout, k, _, _) in CONVS.items():
        trunk[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        trunk[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    trunk["classifier.1.weight"] = torch.zeros(4, 9216)  # ignored
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(CHANNELS)}
    torch.save(trunk, d / "alexnet.pth")
    torch.save(lin, d / "alex.pth")
    return d / "alexnet.pth", d / "alex.pth", trunk, lin


def reference_lpips(x, y, trunk, lin):
    """Straight-line float64 LPIPS with the weights as plain tensors."""
    shift = torch.tensor(SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE, dtype=torch.float64).view(1, 3, 1, 1)

    def feats(img):
        h = ((img * 2 - 1) - shift) / scale
        out = []
        for n, (i, (_, _, _, s, p)) in enumerate(CONVS.items()):
            if n in (1, 2):
                h = F.max_pool2d(h, kernel_size=3, stride=2)
            h = F.relu(F.conv2d(h, trunk[f"features.{i}.weight"].double(),
                                trunk[f"features.{i}.bias"].double(), stride=s, padding=p))
            out.append(h)
        return out

    d = 0
    for k, (a, b) in enumerate(zip(feats(x.double()), feats(y.double()))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        d = d + ((a - b) ** 2 * lin[f"lin{k}.model.1.weight"].double()).sum(1).mean((1, 2))
    return d


def test_lpips_matches_a_plain_computation_and_is_a_distance(weight_files):
    backbone, linear, trunk, lin = weight_files
    net = LPIPS.from_files(backbone, linear)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 48, 48, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, 48, 48, generator=g)).clamp(0, 1)
    d = net(x, y)
    assert d.shape == (2,)
    assert torch.allclose(d.double(), reference_lpips(x, y, trunk, lin), rtol=1e-4, atol=1e-6)
    assert torch.allclose(net(x, x), torch.zeros(2), atol=1e-6)
    assert torch.allclose(net(y, x), d, rtol=1e-5)
    far = net(x, torch.rand(2, 3, 48, 48, generator=g))
    assert (d > 0).all() and (far > d).all()
    assert not any(p.requires_grad for p in net.parameters())
    xr = x.clone().requires_grad_()
    net(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0


def test_bad_weight_files_are_clear_errors(weight_files, tmp_path):
    backbone, linear, trunk, lin = weight_files
    with pytest.raises(ModelFileError, match="not found"):
        LPIPS.from_files(tmp_path / "nope.pth", linear)
    torch.save({k: v for k, v in trunk.items() if k != "features.8.weight"}, tmp_path / "t.pth")
    with pytest.raises(ModelFileError, match="features.8.weight"):
        LPIPS.from_files(tmp_path / "t.pth", linear)
    torch.save({**lin, "lin2.model.1.weight": -lin["lin2.model.1.weight"]}, tmp_path / "neg.pth")
    with pytest.raises(ModelFileError, match="non-negative"):
        LPIPS.from_files(backbone, tmp_path / "neg.pth")
    torch.save({**lin, "lin0.model.1.weight": torch.ones(1, 3, 1, 1)}, tmp_path / "shape.pth")
    with pytest.raises(ModelFileError, match="do not fit"):
        LPIPS.from_files(backbone, tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="cannot read"):
        LPIPS.from_files(tmp_path / "junk.pth", linear)


def test_lip_stage_uses_lpips_only_with_its_files(weight_files, nerf_subject, tiny_model, tmp_path):
    from synctalk.nerf.config import TrainConfig, load_preset
    from synctalk.nerf.trainer import train

    backbone, linear, _, _ = weight_files
    with pytest.raises(InputError, match="LPIPS weight files"):
        load_preset("demo").replace(w_lip_lpips=0.1)
    tiny = TrainConfig.from_dict(json.loads((tiny_model / "config.json").read_text())["config"])
    out = tmp_path / "lp"
    train(nerf_subject, out, tiny.replace(head_iters=2, lip_iters=2, register_iters=0, torso_iters=0,
                                          lip_patch=32, log_every=1, w_lip_lpips=0.1,
                                          lpips_backbone=str(backbone), lpips_linear=str(linear)),
          progress=False)
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    lip = [r for r in recs if r.get("stage") == "lip" and "loss" in r]
    assert lip and all(r["lpips"] > 0 for r in lip)
    assert all("lpips" not in r for r in recs if r.get("stage") == "head")

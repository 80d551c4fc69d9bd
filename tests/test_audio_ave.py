"""AVE architecture, checkpoint import (SyncTalk / Wav2Lip layouts), file format and CLI.

Checkpoints are built here from random tensors following the published layer plans, and the
imported model is compared with an independent functional forward pass over the raw tensors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synctalk.audio import mel as M
from synctalk.audio.ave import (AVE, FORMAT, SYNCTALK, WAV2LIP, AudioEncoder, Conv2dBlock,
                                FaceEncoder, load_ave, save_ave)
from synctalk.audio.checkpoint import import_checkpoint
from synctalk.errors import InputError, ModelFileError, OutputError

# Published layer plans: (cin, cout, kernel, stride, padding, residual) per block.
R = True


def _res(c, n):
    return [(c, c, 3, 1, 1, R)] * n


SYNCTALK_AUDIO = ([(1, 32, 3, 1, 1, False)] + _res(32, 2) + [(32, 64, 3, (3, 1), 1, False)]
                  + _res(64, 2) + [(64, 128, 3, 3, 1, False)] + _res(128, 2)
                  + [(128, 256, 3, (3, 2), 1, False)] + _res(256, 1)
                  + [(256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)])
WAV2LIP_AUDIO = SYNCTALK_AUDIO[:11] + _res(256, 1) + SYNCTALK_AUDIO[11:]
WAV2LIP_FACE = ([(15, 32, 7, 1, 3, False), (32, 64, 5, (1, 2), 1, False)] + _res(64, 2)
                + [(64, 128, 3, 2, 1, False)] + _res(128, 3) + [(128, 256, 3, 2, 1, False)]
                + _res(256, 2) + [(256, 512, 3, 2, 1, False)] + _res(512, 2)
                + [(512, 512, 3, 2, 1, False), (512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)])


def random_state(plan, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict with exactly the published keys for ``plan``, random well-scaled values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cin, cout, k, _, _, _) in enumerate(plan):
        p = f"{prefix}{i}.conv_block."
        state[p + "0.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        state[p + "0.bias"] = 0.1 * torch.randn(cout, generator=g)
        state[p + "1.weight"] = 1.0 + 0.1 * torch.randn(cout, generator=g)
        state[p + "1.bias"] = 0.1 * torch.randn(cout, generator=g)
        state[p + "1.running_mean"] = 0.1 * torch.randn(cout, generator=g)
        state[p + "1.running_var"] = 0.5 + torch.rand(cout, generator=g)
        state[p + "1.num_batches_tracked"] = torch.tensor(1000 + i)
    return state


def reference_forward(plan, state, x, prefix: str = "") -> torch.Tensor:
    """Conv → eval batch-norm (→ + input) → ReLU per block, straight from the raw tensors."""
    for i, (_, _, _, stride, pad, residual) in enumerate(plan):
        p = f"{prefix}{i}.conv_block."
        out = F.conv2d(x, state[p + "0.weight"], state[p + "0.bias"], stride, pad)
        out = F.batch_norm(out, state[p + "1.running_mean"], state[p + "1.running_var"],
                           state[p + "1.weight"], state[p + "1.bias"], training=False, eps=1e-5)
        x = F.relu(out + x if residual else out)
    return F.normalize(x.flatten(1), dim=1)


def n_params(plan) -> int:
    return sum(cout * cin * k * k + cout + 2 * cout for cin, cout, k, *_ in plan)


@pytest.fixture(scope="module")
def mel_windows() -> torch.Tensor:
    rng = np.random.default_rng(0)
    mel = M.melspectrogram((0.3 * rng.standard_normal(3 * 16000)).astype(np.float32))
    return M.frame_windows(mel, 8, 25.0)  # [8, 1, 80, 16]


@pytest.fixture(scope="module")
def mouth_crops() -> torch.Tensor:
    return torch.rand(2, 15, 48, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def synctalk_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "audio_visual_encoder.pth"
    state = random_state(SYNCTALK_AUDIO, seed=1)
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def wav2lip_state():
    return {**random_state(WAV2LIP_AUDIO, 2, "audio_encoder."),
            **random_state(WAV2LIP_FACE, 3, "face_encoder.")}


def save_wav2lip(path, state, module_prefix=False):
    if module_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save({"state_dict": state, "optimizer": None, "global_step": 250000,
                "global_epoch": 41}, path)
    return path


# ---------------------------------------------------------------- architecture

def test_block_state_dict_keys():
    keys = set(Conv2dBlock(3, 8, 3, 1, 1).state_dict())
    assert keys == {"conv_block.0.weight", "conv_block.0.bias", "conv_block.1.weight",
                    "conv_block.1.bias", "conv_block.1.running_mean", "conv_block.1.running_var",
                    "conv_block.1.num_batches_tracked"}


@pytest.mark.parametrize("layout, plan", [(SYNCTALK, SYNCTALK_AUDIO), (WAV2LIP, WAV2LIP_AUDIO)])
def test_audio_encoder_layout(layout, plan):
    enc = AudioEncoder(layout).eval()
    assert len(enc) == len(plan)
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in random_state(plan, 0).items()}
    assert sum(p.numel() for p in enc.parameters()) == n_params(plan)
    assert enc(torch.zeros(4, 1, 80, 16)).shape == (4, 512, 1, 1)


def test_synctalk_audio_encoder_size():
    enc = AudioEncoder(SYNCTALK)
    assert len(enc) == 13
    assert 2.75e6 < sum(p.numel() for p in enc.parameters()) < 2.85e6


def test_face_encoder_layout(mouth_crops):
    enc = FaceEncoder().eval()
    assert len(enc) == len(WAV2LIP_FACE) == 17
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in random_state(WAV2LIP_FACE, 0).items()}
    assert enc(mouth_crops).shape == (2, 512, 1, 1)


def test_embeddings_and_sync_prob(mel_windows, mouth_crops):
    model = AVE().eval()
    with torch.no_grad():
        a = model.embed_audio(mel_windows[:2])
        v = model.embed_face(mouth_crops)
    assert a.shape == v.shape == (2, 512)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    assert (a >= 0).all() and (v >= 0).all()
    p = AVE.sync_prob(a, v)
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()
    assert torch.all(AVE.sync_prob(a, a) < 1) and torch.allclose(AVE.sync_prob(a, a), torch.ones(2))
    e0, e1 = torch.eye(512)[:1], torch.eye(512)[1:2]
    assert 0 < AVE.sync_prob(e0, e1).item() < 1e-6
    with pytest.raises(ValueError, match="512, 1, 1"):
        model.embed_face(torch.rand(1, 15, 64, 96))  # does not reduce to 1×1


def test_construction_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = AVE(seed=5), AVE(seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert a.identity() == b.identity() != AVE(seed=6).identity()


# ---------------------------------------------------------------- import

def test_import_synctalk_matches_raw_state(synctalk_file, mel_windows, mouth_crops):
    path, raw = synctalk_file
    model, meta = import_checkpoint(path)
    assert not model.training
    assert meta["source_format"] == SYNCTALK and meta["has_face"] is False
    assert meta["audio_layout"] == SYNCTALK and meta["source_file"] == path.name
    assert len(meta["source_sha256"]) == 64
    with torch.no_grad():
        ours = model.embed_audio(mel_windows)
        by_hand = AudioEncoder(SYNCTALK).eval()
        by_hand.load_state_dict(raw)
        torch.testing.assert_close(ours, F.normalize(by_hand(mel_windows).flatten(1), dim=1),
                                   rtol=0, atol=0)
        torch.testing.assert_close(ours, reference_forward(SYNCTALK_AUDIO, raw, mel_windows),
                                   rtol=1e-5, atol=1e-6)
    assert ours.std(0).mean() > 1e-3  # inputs differ → embeddings differ


@pytest.mark.parametrize("module_prefix", [False, True])
def test_import_wav2lip_matches_raw_state(tmp_path, wav2lip_state, module_prefix, mel_windows,
                                          mouth_crops):
    path = save_wav2lip(tmp_path / "lipsync_expert.pth", wav2lip_state, module_prefix)
    model, meta = import_checkpoint(path)
    assert meta["source_format"] == WAV2LIP and meta["has_face"] is True
    assert meta["audio_layout"] == WAV2LIP and meta["global_step"] == 250000
    loaded = {f"audio_encoder.{k}": v for k, v in model.audio.state_dict().items()}
    loaded.update({f"face_encoder.{k}": v for k, v in model.face.state_dict().items()})
    assert loaded.keys() == wav2lip_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in wav2lip_state.items())
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed_audio(mel_windows),
            reference_forward(WAV2LIP_AUDIO, wav2lip_state, mel_windows, "audio_encoder."),
            rtol=1e-5, atol=1e-6)
        if not module_prefix:  # the face branch is slow on CPU: check its forward pass once
            torch.testing.assert_close(
                model.embed_face(mouth_crops),
                reference_forward(WAV2LIP_FACE, wav2lip_state, mouth_crops, "face_encoder."),
                rtol=1e-5, atol=1e-6)


def test_identity_is_stable_and_tracks_audio_weights(synctalk_file, tmp_path):
    path, raw = synctalk_file
    first, _ = import_checkpoint(path)
    second, _ = import_checkpoint(path)
    assert first.identity() == second.identity()
    with torch.no_grad():
        second.face[0].conv_block[0].weight.add_(1.0)  # face branch does not change audio features
    assert first.identity() == second.identity()
    changed = dict(raw)
    changed["5.conv_block.1.running_var"] = raw["5.conv_block.1.running_var"] * 1.01
    torch.save(changed, tmp_path / "changed.pth")
    assert import_checkpoint(tmp_path / "changed.pth")[0].identity() != first.identity()


def _synctalk_variants(raw):
    dropped = {k: v for k, v in raw.items() if k != "4.conv_block.1.running_mean"}
    reshaped = {**raw, "12.conv_block.0.weight": torch.zeros(256, 512, 1, 1)}
    extra = {**raw, "13.conv_block.0.weight": torch.zeros(1)}
    return [(dropped, "missing keys: 4.conv_block.1.running_mean"),
            (reshaped, r"shape mismatches: 12.conv_block.0.weight \[256, 512, 1, 1\]"),
            (extra, "unexpected keys: 13.conv_block.0.weight"),
            (random_state(WAV2LIP_AUDIO, 0), "SyncTalk audio_visual_encoder.pth but does not match"),
            ({"encoder.weight": torch.zeros(3)}, "not a recognised lip-sync expert checkpoint"),
            ({"state_dict": {"audio_encoder.0.conv_block.0.weight": torch.zeros(1)}},
             "Wav2Lip lipsync_expert.pth but does not match"),
            ([torch.zeros(3)], "a list"),
            ({}, "an empty dict")]


@pytest.mark.parametrize("case", range(8))
def test_import_refuses_wrong_architecture(tmp_path, synctalk_file, case):
    obj, match = _synctalk_variants(synctalk_file[1])[case]
    torch.save(obj, tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match=match) as info:
        import_checkpoint(tmp_path / "bad.pth")
    assert "accepted: SyncTalk" in str(info.value)


def test_import_refuses_wav2lip_with_synctalk_audio(tmp_path, wav2lip_state):
    state = {k: v for k, v in wav2lip_state.items() if not k.startswith("audio_encoder.")}
    state.update(random_state(SYNCTALK_AUDIO, 4, "audio_encoder."))
    with pytest.raises(ModelFileError, match="audio_encoder.11.conv_block.0.weight"):
        import_checkpoint(save_wav2lip(tmp_path / "mixed.pth", state))


def test_import_refuses_unreadable_and_missing_files(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    with pytest.raises(ModelFileError, match="cannot read .* as a PyTorch checkpoint"):
        import_checkpoint(tmp_path / "notes.pth")
    with pytest.raises(InputError, match="not found"):
        import_checkpoint(tmp_path / "absent.pth")


# ---------------------------------------------------------------- own file format

def test_save_load_round_trip(tmp_path, wav2lip_state, mel_windows, mouth_crops):
    model, meta = import_checkpoint(save_wav2lip(tmp_path / "w.pth", wav2lip_state))
    out = tmp_path / "ave.pt"
    save_ave(out, model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ave.pt", "w.pth"]  # no temporaries
    loaded, loaded_meta = load_ave(out)
    assert loaded_meta == meta and loaded.audio_layout == WAV2LIP and not loaded.training
    assert loaded.identity() == model.identity()
    with torch.no_grad():
        assert torch.equal(loaded.embed_audio(mel_windows), model.embed_audio(mel_windows))
        assert torch.equal(loaded.embed_face(mouth_crops[:1]), model.embed_face(mouth_crops[:1]))
    with pytest.raises(ModelFileError, match="already a synctalk-ave/1 file"):
        import_checkpoint(out)


def test_audio_only_save_is_small_and_exact(tmp_path, synctalk_file, mel_windows):
    model, meta = import_checkpoint(synctalk_file[0])
    out = tmp_path / "ave.pt"
    save_ave(out, model, meta, with_face=False)
    assert out.stat().st_size < 15e6  # the face branch alone would add ~52 MB
    loaded, loaded_meta = load_ave(out)
    assert loaded_meta == meta and loaded.identity() == model.identity()
    for k, v in model.state_dict().items():  # face re-created from the same seeded init
        assert torch.equal(loaded.state_dict()[k], v), k
    payload = torch.load(out, weights_only=True)
    payload["state_dict"]["face.0.conv_block.0.weight"] = torch.zeros(32, 15, 7, 7)
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(ModelFileError, match="unexpected keys: face.0.conv_block.0.weight"):
        load_ave(tmp_path / "extra.pt")


def test_load_refuses_foreign_or_mismatched_files(tmp_path, synctalk_file):
    with pytest.raises(ModelFileError, match="not a synctalk-ave/1 file"):
        load_ave(synctalk_file[0])
    model = AVE()
    state = model.state_dict()
    state["audio.0.conv_block.0.weight"] = torch.zeros(32, 1, 5, 5)
    torch.save({"format": FORMAT, "arch": {"audio_layout": SYNCTALK, "has_face": True},
                "state_dict": state, "meta": {}}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="audio.0.conv_block.0.weight"):
        load_ave(tmp_path / "bad.pt")
    torch.save({"format": FORMAT, "arch": {"audio_layout": "huge", "has_face": True},
                "state_dict": state, "meta": {}}, tmp_path / "arch.pt")
    with pytest.raises(ModelFileError, match="unknown architecture .*'huge'"):
        load_ave(tmp_path / "arch.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="cannot read"):
        load_ave(tmp_path / "junk.pt")


def test_save_refuses_bad_meta_and_bad_destination(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_ave(tmp_path / "a.pt", AVE(), {"step": np.int64(3)})
    with pytest.raises(OutputError):
        save_ave(tmp_path / "missing" / "a.pt", AVE(), {})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- CLI

@pytest.fixture()
def cli_main(monkeypatch):
    from synctalk import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ave",))
    return cli.main


def test_cli_import_synctalk(cli_main, synctalk_file, tmp_path, capsys):
    out = tmp_path / "ave.pt"
    assert cli_main(["ave", "import", str(synctalk_file[0]), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    model, meta = load_ave(out)
    assert out.stat().st_size < 15e6  # audio branch only
    assert "SyncTalk audio_visual_encoder.pth" in stdout
    assert "face branch: no" in stdout
    assert f"identity: {model.identity()}" in stdout
    assert meta["source_format"] == SYNCTALK


def test_cli_import_wav2lip_via_config_file(cli_main, wav2lip_state, tmp_path, capsys):
    src = save_wav2lip(tmp_path / "lipsync_expert.pth", wav2lip_state, module_prefix=True)
    out = tmp_path / "expert.pt"
    (tmp_path / "ave.yaml").write_text(f"out: {out}\n")
    assert cli_main(["ave", "import", "-c", str(tmp_path / "ave.yaml"), str(src)]) == 0
    stdout = capsys.readouterr().out
    assert "Wav2Lip lipsync_expert.pth" in stdout and "face branch: yes" in stdout
    assert load_ave(out)[1]["has_face"] is True


def test_cli_reports_bad_checkpoint_in_one_line(cli_main, tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    rc = cli_main(["ave", "import", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("synctalk ave: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o.pt").exists()


def test_cli_requires_an_action(cli_main, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["ave"])
    assert info.value.code == 2
    assert "ACTION" in capsys.readouterr().err

"""Per-frame audio features (AVE, HuBERT/wav2vec2), the subject feature cache, streaming,
and the errors bad audio gets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.audio import mel as M
from synctalk.audio.ave import AVE, save_ave
from synctalk.audio.dataset import InputSpec, mel_band_stats
from synctalk.audio.features import (FEATURE_DIR, ave_features, hf_features, load_hf_model,
                                     subject_features)
from synctalk.audio.streaming import LOOKAHEAD_S, StreamingFeatures, StreamingMel
from synctalk.errors import InputError, MediaError
from synctalk.media import write_wav


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """3.3 s of speech-like 16 kHz audio: a gliding harmonic tone with a syllable envelope."""
    t = np.arange(int(3.3 * 16000)) / 16000.0
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000.0) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.2 * tone * envelope + 0.01 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def ave() -> AVE:
    return AVE(width=0.25, seed=1).eval()


# ---------------------------------------------------------------- AVE features

def test_ave_features_are_the_audio_branch_on_centred_windows(speech, ave):
    feats = ave_features(speech, 25.0, 82, ave)
    assert feats.shape == (82, 512) and feats.dtype == torch.float32 and (feats >= 0).all()
    windows = M.frame_windows(M.melspectrogram(speech), 82, 25.0)
    with torch.no_grad():
        assert torch.allclose(feats, ave.audio(windows).flatten(1), atol=1e-5)
        unit = ave_features(speech, 25.0, 82, ave, normalize=True)
        assert torch.allclose(unit, ave.embed_audio(windows), atol=1e-5)
    # 30 fps and a stereo 48 kHz copy of the same audio
    assert ave_features(speech, 30.0, 99, ave).shape == (99, 512)
    stereo = np.repeat(np.repeat(speech, 3)[:, None], 2, axis=1)
    assert torch.allclose(ave_features(stereo, 25.0, 82, ave, sr=48000), feats, atol=1e-2)


def test_clip_normalised_ave_standardises_mel_bands(speech, ave):
    mel = M.melspectrogram(speech)
    mean, std = mel_band_stats(mel)
    mean, std = torch.from_numpy(mean)[:, None], torch.from_numpy(std)[:, None]
    windows = (M.frame_windows(mel, 40, 25.0) - mean) / std
    feats = ave_features(speech, 25.0, 40, ave, mel_norm="clip")
    with torch.no_grad():
        assert torch.allclose(feats, ave.audio(windows).flatten(1), atol=1e-5)
    other = (np.zeros(80, np.float32), np.ones(80, np.float32))
    assert torch.allclose(ave_features(speech, 25.0, 40, ave, mel_norm="clip", mel_stats=other),
                          ave_features(speech, 25.0, 40, ave), atol=1e-5)


@pytest.mark.parametrize("audio, message", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros(1000, np.float32), "at least 0.2 s"),
    (np.r_[np.zeros(5000), np.nan, np.zeros(5000)].astype(np.float32), "NaN or infinite"),
    (np.r_[np.zeros(5000), np.inf].astype(np.float32), "NaN or infinite"),
])
def test_bad_audio_is_refused(audio, message, ave):
    with pytest.raises(InputError, match=message):
        ave_features(audio, 25.0, 10, ave)
    stream = StreamingMel()
    with pytest.raises(InputError):
        stream.push(audio)
        stream.finish()


# ---------------------------------------------------------------- streaming

def _chunks(x: np.ndarray, seed: int):
    """Split ``x`` into 20–40 ms chunks."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(x):
        k = int(rng.integers(320, 641))
        yield x[i:i + k]
        i += k


@pytest.mark.parametrize("n", [3200, 3333, 16000 * 3 + 77])
def test_streaming_mel_equals_offline(speech, n):
    x = np.resize(speech, n)
    stream = StreamingMel()
    parts = [stream.push(c) for c in _chunks(x, n)] + [stream.finish()]
    assert all(p.shape[0] == 80 for p in parts)
    streamed = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(streamed, M.melspectrogram(x).numpy(), atol=1e-5)


def test_streaming_keeps_memory_bounded(speech):
    stream = StreamingMel()
    for _ in range(20):
        stream.push(speech)
    assert len(stream._y) < 1000 and stream.n_samples == 20 * len(speech)


@pytest.mark.parametrize("fps, mel_norm", [(25.0, "raw"), (30.0, "clip"), (29.97, "raw")])
def test_streaming_features_equal_offline(speech, ave, fps, mel_norm):
    stats = mel_band_stats(M.melspectrogram(speech)) if mel_norm == "clip" else None
    stream = StreamingFeatures(ave, fps, mel_norm=mel_norm, mel_stats=stats)
    pushed, parts = 0, []
    for chunk in _chunks(speech, 7):
        parts.append(stream.push(chunk))
        pushed += len(chunk)
        # every frame whose look-ahead is inside the pushed audio is out (the first frames,
        # whose window is clamped to the start, wait for the first window)
        need = np.maximum(np.arange(200) / fps, 0.08) + LOOKAHEAD_S
        due = int(np.sum(need <= pushed / 16000.0))
        assert stream.n_emitted >= due
    n_frames = int(np.ceil(len(speech) * fps / 16000))
    parts.append(stream.finish())
    streamed = torch.cat(parts)
    offline = ave_features(speech, fps, n_frames, ave, mel_norm=mel_norm, mel_stats=stats)
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5)


def test_streaming_lookahead_is_the_window_tail():
    assert LOOKAHEAD_S == pytest.approx(0.12 + 0.025 - 0.0125)


def test_streaming_clip_normalisation_needs_fixed_stats(ave):
    with pytest.raises(InputError, match="mel_stats"):
        StreamingFeatures(ave, 25.0, mel_norm="clip")


# ---------------------------------------------------------------- HuBERT / wav2vec2

@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised tiny HuBERT and wav2vec2 models in save_pretrained layout."""
    transformers = pytest.importorskip("transformers")
    out = {}
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    kinds = (("hubert", transformers.HubertConfig, transformers.HubertModel),
             ("wav2vec2", transformers.Wav2Vec2Config, transformers.Wav2Vec2Model))
    for name, config, model in kinds:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        model(config(**common)).save_pretrained(path)
        transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(path)
        out[name] = path
    return out


@pytest.mark.parametrize("name", ["hubert", "wav2vec2"])
def test_hf_features_two_steps_per_frame(tiny_hf, speech, name):
    hf = load_hf_model(tiny_hf[name])
    assert hf.hop == 320 and hf.receptive_field == 400 and hf.do_normalize
    assert hf.encoder_id.startswith(f"hf-{name}-")
    feats = hf_features(speech, 25.0, 82, hf)
    assert feats.shape == (82, 2, 32)
    x = torch.from_numpy(speech).double()
    x = ((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)).float()
    with torch.no_grad():
        full = hf.model(x[None]).last_hidden_state[0]  # [K, 32] at 50 Hz
    k = len(full)
    assert k == hf.n_out(len(speech))
    # at 25 fps, frame t is model frames 2t and 2t + 1 (the last repeated past the end)
    index = np.minimum(np.arange(164), k - 1)
    assert torch.allclose(feats.reshape(164, 32), full[index], atol=1e-4)
    assert hf_features(speech, 30.0, 99, hf).shape == (99, 2, 32)
    chunked = hf_features(speech, 25.0, 82, hf, chunk_s=1.0, context_s=0.5)
    assert chunked.shape == feats.shape and torch.isfinite(chunked).all()
    # far from chunk edges (and with 0.5 s of context) the chunked output is close
    assert torch.allclose(chunked[10:15], feats[10:15], atol=0.2)


def test_hf_model_must_be_local_unless_hub_is_allowed(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(InputError, match="--hub"):
        load_hf_model("facebook/hubert-large-ls960-ft")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(Exception, match="cannot load an audio model"):
        load_hf_model(tmp_path)


# ---------------------------------------------------------------- subject cache

@pytest.fixture()
def subject(tmp_path, speech) -> Path:
    """A minimal subject directory: manifest with the ingest fps, 82 frames, audio.wav."""
    root = tmp_path / "subj"
    (root / "frames").mkdir(parents=True)
    for i in range(82):
        (root / "frames" / f"{i:06d}.jpg").write_bytes(b"")
    (root / "manifest.json").write_text(json.dumps(
        {"format": "synctalk-subject/1", "source": {},
         "steps": {"ingest": {"info": {"fps": 25.0}}}}))
    write_wav(root / "audio.wav", speech)
    return root


def test_subject_feature_cache_hits_and_misses(subject, ave, tiny_hf):
    path, feats, cached = subject_features(subject, ave=ave, ave_meta={})
    assert not cached and feats.shape == (82, 512) and path.parent == subject / FEATURE_DIR
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["n_frames"] == 82 and record["fps"] == 25.0 and record["shape"] == [82, 512]
    again = subject_features(subject, ave=ave, ave_meta={})
    assert again[2] and np.array_equal(again[1], feats) and again[0] == path
    # a different encoder (other weights, or other input convention) is another cache entry
    other = subject_features(subject, ave=AVE(width=0.25, seed=2), ave_meta={})
    assert not other[2] and other[0] != path
    clip_norm = subject_features(subject, ave=ave, ave_meta={"inputs": InputSpec().to_meta()})
    assert not clip_norm[2] and clip_norm[0] not in (path, other[0])
    # changed audio invalidates
    write_wav(subject / "audio.wav", np.zeros(16000, np.float32))
    changed = subject_features(subject, ave=ave, ave_meta={})
    assert not changed[2] and changed[0] == path and not np.array_equal(changed[1], feats)
    # HF encoders: id from the model files
    hub = subject_features(subject, hf=load_hf_model(tiny_hf["hubert"]))
    w2v = subject_features(subject, hf=load_hf_model(tiny_hf["wav2vec2"]))
    assert hub[1].shape == (82, 2, 32) and not hub[2] and hub[0].name != w2v[0].name
    assert subject_features(subject, hf=load_hf_model(tiny_hf["hubert"]))[2]


def test_cli_features_and_bad_audio(subject, ave, tmp_path, monkeypatch, capsys):
    from synctalk import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ave",))
    model_file = tmp_path / "ave.pt"
    save_ave(model_file, ave, {"has_face": True})
    assert cli.main(["ave", "features", str(subject), "--ave", str(model_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["ave", "features", str(subject), "--ave", str(model_file)]) == 0
    assert capsys.readouterr().out.startswith("cached")
    write_wav(subject / "audio.wav", np.zeros(0, np.float32))
    with pytest.raises(MediaError, match="no audio samples"):
        subject_features(subject, ave=ave, ave_meta={})
    write_wav(subject / "audio.wav", np.zeros(1000, np.float32))
    with pytest.raises(InputError, match="at least 0.2 s"):
        subject_features(subject, ave=ave, ave_meta={})
    (subject / "audio.wav").write_text("not a wav")
    with pytest.raises(MediaError):
        subject_features(subject, ave=ave, ave_meta={})
    assert cli.main(["ave", "features", str(subject), "--ave", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot decode audio" in err
    assert cli.main(["ave", "features", str(tmp_path), "--ave", str(model_file)]) == 2
    assert "not a subject directory" in capsys.readouterr().err

"""AVE training data, training loop, resumption, sync scoring and their errors.

Data comes from an 8-second synthetic clip (``synctalk.synth``) whose mouth opening is
known, tracked with the shared MediaPipe model; training runs a few steps of a slim AVE.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.audio import mel as M
from synctalk.audio.ave import AVE, FORMAT, load_ave, save_ave
from synctalk.audio.dataset import (FACE_OVAL, ClipPortion, InputSpec, MouthClip, face_boxes,
                                    face_inputs, find_clips, genuine_windows, load_clip,
                                    mel_inputs, split_clip)
from synctalk.audio.sampling import MIN_SHIFT, SyncSampler, translate
from synctalk.audio.score import shift_similarities, sync_score
from synctalk.audio.train import (TrainConfig, WeightEMA, carve_selection, evaluate,
                                  selection_score, sync_loss, train)
from synctalk.errors import InputError, MediaError, ModelFileError

TINY = dict(width=0.125, batch_size=8, lr=1e-3, val_fraction=0.25, augment=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth_clip(tmp_path_factory, face_landmarker_path) -> tuple[Path, Path, dict]:
    """``(clip.mp4, cache dir, ground truth)`` of an 8 s, 128 px, 25 fps synthetic clip."""
    from synctalk.synth.generate import SynthOptions, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root / "s", SynthOptions(seconds=8, size=128))
    cache = root / "cache"
    load_clip(root / "s" / "clip.mp4", cache_dir=cache, face_landmarker=face_landmarker_path)
    gt = json.loads((root / "s" / "ground_truth.json").read_text())
    return root / "s" / "clip.mp4", cache, gt


@pytest.fixture()
def clip(synth_clip) -> MouthClip:
    return load_clip(synth_clip[0], cache_dir=synth_clip[1])


# ---------------------------------------------------------------- data

def test_clip_crops_follow_the_known_mouth_opening(clip, synth_clip):
    gt = synth_clip[2]
    assert clip.crops.shape == (200, 48, 96, 3) and clip.crops.dtype == np.uint8
    assert clip.valid.all() and clip.fps == 25.0
    assert clip.mel.shape == (80, 1 + 8 * 16000 // 200)
    # The synthetic open mouth shows white teeth in the middle of the crop: the darkest
    # channel of those pixels (low for skin and lips) rises with the opening.
    whiteness = clip.crops[:, 8:40, 24:72].min(axis=3).astype(np.float64).mean(axis=(1, 2))
    opening = np.array([f["mouth_open"] for f in gt["frames"]])
    assert np.corrcoef(whiteness, opening)[0, 1] > 0.6


def test_clip_cache_is_reused_without_tracking(synth_clip, monkeypatch):
    import data_prep.face_tracking as ft

    monkeypatch.setattr(ft, "track_video", lambda *a, **k: pytest.fail("re-tracked a cached clip"))
    a = load_clip(synth_clip[0], cache_dir=synth_clip[1])
    b = load_clip(synth_clip[0], cache_dir=synth_clip[1])
    assert a.key == b.key and np.array_equal(a.crops, b.crops) and np.array_equal(a.mel, b.mel)
    assert [p.name for p in synth_clip[1].iterdir()] == [a.key]


def test_subject_dir_gives_the_same_crops_as_its_video(synth_clip, clip, tmp_path,
                                                        face_landmarker_path):
    import cv2
    import imageio.v2 as imageio

    from data_prep.face_tracking import track_video
    from synctalk.media import read_audio, write_wav

    video = synth_clip[0]
    subject = tmp_path / "subject"
    (subject / "frames").mkdir(parents=True)
    for i, frame in enumerate(imageio.get_reader(str(video), "ffmpeg")):
        cv2.imwrite(str(subject / "frames" / f"{i:06d}.jpg"), frame[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    track = track_video(video, face_landmarker_path)
    valid = track.detected.copy()
    valid[50:53] = False  # a gap: its boxes are interpolated
    np.savez(subject / "track.npz", landmarks=track.landmarks, valid=valid,
             detected=track.detected)
    write_wav(subject / "audio.wav", read_audio(video))
    (subject / "manifest.json").write_text(json.dumps(
        {"format": "synctalk-subject/1", "source": {},
         "steps": {"ingest": {"info": {"fps": 25.0}}}}))
    assert find_clips([tmp_path]) == [subject]
    sub = load_clip(subject, cache_dir=tmp_path / "cache")
    assert sub.crops.shape == clip.crops.shape and sub.fps == 25.0
    assert np.array_equal(sub.valid, valid) and sub.key != clip.key
    diff = np.abs(sub.crops.astype(np.int16) - clip.crops.astype(np.int16))
    assert np.median(diff) <= 3
    assert np.abs(sub.mel - clip.mel).mean() < 0.02  # the same audio, through 16-bit PCM


def test_face_boxes_fill_gaps_and_smooth():
    lm = np.zeros((9, 478, 3))
    angle = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    for i in range(9):  # a round face oval of 100 px, moving 10 px right per frame
        lm[i, :, :2] = (150 + 10 * i, 100)
        lm[i, FACE_OVAL, 0] = 150 + 10 * i + 50 * np.cos(angle)
        lm[i, FACE_OVAL, 1] = 100 + 50 * np.sin(angle)
    valid = np.ones(9, bool)
    valid[4] = False
    lm[4] = np.nan
    boxes = face_boxes(lm, valid)
    assert np.allclose(boxes[2:7, 0], 150 + 10 * np.arange(2, 7)) and np.allclose(boxes[:, 2], 100)
    with pytest.raises(InputError, match="no face"):
        face_boxes(lm, np.zeros(9, bool))


def test_split_shares_no_frames_or_audio(clip):
    train_p, val_p = split_clip(clip, 0.25)
    assert (train_p.lo, train_p.hi, val_p.lo, val_p.hi) == (0, 150, 150, 200)
    t_train = train_p.frames_where(train_p.visual_ok & train_p.audio_ok)
    t_val = val_p.frames_where(val_p.visual_ok & val_p.audio_ok)
    assert t_train.max() + 2 < 150 <= t_val.min() - 2
    starts = M.window_starts(clip.n_frames, clip.fps, clip.mel.shape[1])
    # last training window (with its ±2-frame STFT support) ends before the first held-out one
    assert starts[train_p.frames_where(train_p.audio_ok)].max() + 16 + 2 <= \
        starts[val_p.frames_where(val_p.audio_ok)].min() - 2
    assert not genuine_windows(200, 25.0, clip.mel.shape[1])[:2].any()


def test_per_clip_normalisation(clip):
    p = ClipPortion.of(clip)
    frames = p.frames_where(p.visual_ok & p.audio_ok)
    faces = face_inputs(p, frames, InputSpec())
    mels = mel_inputs(p, frames, InputSpec())
    assert faces.shape == (len(frames), 15, 48, 96) and mels.shape == (len(frames), 1, 80, 16)
    assert abs(float(faces.mean())) < 0.05 and 0.8 < float(faces.std()) < 1.2
    assert torch.allclose(mels.mean(dim=(0, 1, 3)), torch.zeros(80), atol=0.3)
    # centre frame t sits in channels 6–8; Wav2Lip convention is BGR in [0, 1]
    bgr = face_inputs(p, frames[:1], InputSpec("bgr", "raw"))
    blue = torch.from_numpy(clip.crops[frames[0], :, :, 2] / 255.0).float()
    assert torch.allclose(bgr[0, 6], blue)
    louder = mel_inputs(p, frames[:4], InputSpec(mel="raw"), gain_db=torch.full((4,), 6.0))
    quiet = mel_inputs(p, frames[:4], InputSpec(mel="raw"))
    assert torch.all(louder >= quiet)
    assert float((louder - quiet).max()) == pytest.approx(0.48, abs=1e-5)  # 8 · 6 dB / 100


def test_sampler_batches_are_balanced_and_deterministic(clip):
    train_p, _ = split_clip(clip, 0.25)
    sampler = SyncSampler([train_p], InputSpec())
    a = sampler.batch(8, torch.Generator().manual_seed(3))
    b = sampler.batch(8, torch.Generator().manual_seed(3))
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("faces", "mels", "targets"))
    assert a.faces.shape == (8, 15, 48, 96) and a.mels.shape == (8, 1, 80, 16)
    assert a.targets.diagonal().tolist() == [1, 0] * 4
    assert set(a.targets.unique().tolist()) <= {-1.0, 0.0, 1.0}
    for t in sampler.anchor_frame[:20]:
        u = sampler._negative(train_p, int(t), torch.Generator().manual_seed(int(t)))
        assert MIN_SHIFT <= abs(u - t) <= 15 and train_p.audio_ok[u]
    with pytest.raises(InputError, match="even"):
        sampler.batch(7, torch.Generator())
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    shifted = translate(x, torch.tensor([[1, 0], [0, -1]]))
    assert torch.equal(shifted[0, 0, :, 1:], x[0, 0, :, :-1])
    assert torch.equal(shifted[0, 0, :, 0], x[0, 0, :, 0])
    assert torch.equal(shifted[1, 0, :-1], x[1, 0, 1:])


def test_sampler_min_shift_sets_the_nearest_negatives(clip):
    train_p, _ = split_clip(clip, 0.25)
    near = SyncSampler([train_p], InputSpec(), min_shift=2, augment=False)
    shifts = set()
    for t in near.anchor_frame[:40]:
        u = near._negative(train_p, int(t), torch.Generator().manual_seed(int(t)))
        assert 2 <= abs(u - t) <= 15
        shifts.add(abs(u - t))
    assert shifts & {2, 3, 4}  # nearer than the default 5 now occur
    # anchors need a negative within min_shift … max_shift: a nearer min_shift allows more
    assert len(near) >= len(SyncSampler([train_p], InputSpec()))
    with pytest.raises(InputError, match="--min-shift"):
        SyncSampler([train_p], InputSpec(), min_shift=0)
    with pytest.raises(InputError, match="--max-shift"):
        SyncSampler([train_p], InputSpec(), min_shift=6, max_shift=5)


def test_find_clips_expands_folders(tmp_path, clip):
    (tmp_path / "spk1").mkdir()
    (tmp_path / "spk1" / "00001.mp4").write_bytes(b"x")
    (tmp_path / "spk1" / "notes.txt").write_text("x")
    (tmp_path / "spk0").mkdir()
    (tmp_path / "spk0" / "00002.MP4").write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_clips([tmp_path])] == \
        ["spk0/00002.MP4", "spk1/00001.mp4"]
    with pytest.raises(InputError, match="not found"):
        find_clips([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no videos"):
        find_clips([tmp_path / "empty"])


# ---------------------------------------------------------------- training

def test_loss_goes_down_on_a_fixed_batch(clip):
    train_p, _ = split_clip(clip, 0.0)
    sampler = SyncSampler([train_p], InputSpec(), augment=False)
    batch = sampler.batch(16, torch.Generator().manual_seed(0))
    model = AVE(width=0.125, seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = sync_loss(model.embed_audio(batch.mels), model.embed_face(batch.faces),
                         batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_sync_loss_is_balanced_bce_on_the_clamped_cosine():
    a = torch.nn.functional.normalize(torch.rand(4, 512), dim=1)
    v = torch.nn.functional.normalize(torch.rand(4, 512), dim=1)
    targets = torch.tensor([[1, 0, -1, 0], [0, 0, 0, 0], [0, 1, 1, -1], [0, 0, 0, 0]]).float()
    prob = AVE.sync_prob(v[:, None, :].expand(4, 4, 512).reshape(16, 512),
                         a[None].expand(4, 4, 512).reshape(16, 512)).reshape(4, 4)
    pos = -torch.log(prob[targets == 1]).mean()
    neg = -torch.log(1 - prob[targets == 0]).mean()
    assert torch.allclose(sync_loss(a, v, targets), (pos + neg) / 2, atol=1e-6)


def test_train_writes_a_loadable_ave_log_and_checkpoint(clip, tmp_path):
    out = tmp_path / "ave.pt"
    summary = train([clip], out, TrainConfig(max_steps=4, eval_every=2, **TINY), progress=False)
    assert summary["steps"] == 4 and summary["best"]["step"] in (2, 4)
    model, meta = load_ave(out)
    assert model.width == 0.125 and meta["inputs"] == {"face": "clip", "mel": "clip"}
    assert meta["has_face"] is True and meta["clips"][0]["n_frames"] == 200
    assert set(meta["metrics"]) >= {"sync_acc", "offset_acc_1s", "offset_acc_2s"}
    assert model.embed_audio(torch.zeros(2, 1, 80, 16)).shape == (2, 512)
    records = [json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    assert Path(f"{out}.ckpt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_resume_equals_uninterrupted(clip, tmp_path, monkeypatch):
    cfg = TrainConfig(max_steps=6, eval_every=2, **TINY)
    train([clip], tmp_path / "a.pt", cfg, progress=False)
    # Ctrl-C while drawing the 4th batch: the checkpoint holds step 3
    draw = SyncSampler.batch
    calls = []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return draw(self, *args)

    monkeypatch.setattr(SyncSampler, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train([clip], tmp_path / "b.pt", cfg, progress=False)
    assert torch.load(tmp_path / "b.pt.ckpt", weights_only=True)["step"] == 3
    monkeypatch.setattr(SyncSampler, "batch", draw)
    summary = train([clip], tmp_path / "b.pt", cfg, resume=True, progress=False)
    assert summary["steps"] == 6
    a = torch.load(tmp_path / "a.pt.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b.pt.ckpt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["generator"], b["generator"])
    assert json.dumps(a["best"]) == json.dumps(b["best"])  # NaN-safe comparison


def test_weight_ema_update_rule():
    model = AVE(width=0.125, seed=1)
    ema = WeightEMA(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.audio[0].conv_block[1].num_batches_tracked.fill_(5)
    ema.update(model)  # update 0: decay min(0.9, 1/10) = 0.1
    avg = ema.model.state_dict()
    name = "audio.0.conv_block.0.weight"
    assert torch.allclose(avg[name], 0.1 * start[name] + 0.9 * model.state_dict()[name])
    assert int(avg["audio.0.conv_block.1.num_batches_tracked"]) == 5  # integers are copied
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(avg[name], model.state_dict()[name], atol=1e-5)
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(InputError, match="--ema"):
        WeightEMA(model, 1.0)


def test_ema_model_is_saved_and_resumes_exactly(clip, tmp_path, monkeypatch):
    """With --ema the saved AVE is the average (not the raw weights in the checkpoint), and
    an interrupted run resumes to the same average."""
    cfg = TrainConfig(max_steps=4, eval_every=2, ema=0.5, keep="last", **TINY)
    train([clip], tmp_path / "a.pt", cfg, progress=False)
    saved, meta = load_ave(tmp_path / "a.pt")
    ckpt = torch.load(tmp_path / "a.pt.ckpt", weights_only=True)
    assert meta["step"] == 4 and ckpt["ema"]["updates"] == 4
    for k, v in saved.state_dict().items():
        assert torch.equal(v, ckpt["ema"]["model"][k]), k
    assert not all(torch.equal(v, ckpt["model"][k]) for k, v in saved.state_dict().items())
    draw, calls = SyncSampler.batch, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return draw(self, *args)

    monkeypatch.setattr(SyncSampler, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train([clip], tmp_path / "b.pt", cfg, progress=False)
    monkeypatch.setattr(SyncSampler, "batch", draw)
    train([clip], tmp_path / "b.pt", cfg, resume=True, progress=False)
    b = load_ave(tmp_path / "b.pt")[0].state_dict()
    for k, v in saved.state_dict().items():
        assert torch.equal(v, b[k]), k
    with pytest.raises(ModelFileError, match="ema: checkpoint 0.5, now 0.9"):
        train([clip], tmp_path / "b.pt", TrainConfig(max_steps=6, ema=0.9, keep="last", **TINY),
              resume=True, progress=False)


def test_keep_last_saves_the_final_model_and_evals_are_returned(clip, tmp_path):
    summary = train([clip], tmp_path / "a.pt", TrainConfig(max_steps=6, eval_every=2, ema=0.0,
                                                           keep="last", **TINY), progress=False)
    assert [e["step"] for e in summary["evals"]] == [2, 4, 6]
    assert summary["evals"][-1]["sync_acc"] == summary["last"]["sync_acc"]
    model, meta = load_ave(tmp_path / "a.pt")
    ckpt = torch.load(tmp_path / "a.pt.ckpt", weights_only=True)
    assert meta["step"] == 6
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="--keep"):
        train([clip], tmp_path / "c.pt", TrainConfig(max_steps=1, keep="first", **TINY))


def test_selection_slice_is_carved_from_training_and_chooses_the_kept_model(clip, tmp_path):
    train_p, held = split_clip(clip, 0.25)
    fit, sel = carve_selection(train_p, 0.25)
    assert (fit.lo, fit.hi, sel.lo, sel.hi) == (0, 112, 112, 150) and held.lo == 150
    assert not np.array_equal(fit.mel_mean, train_p.mel_mean)  # own normalisation statistics
    assert carve_selection(train_p, 0.001)[1] is None
    cfg = TrainConfig(max_steps=6, eval_every=2, select_fraction=0.25, **TINY)
    summary = train([clip], tmp_path / "a.pt", cfg, progress=False)
    evals = summary["evals"]
    assert all("select_sync_acc" in e and "sync_acc" in e for e in evals)
    scores = [selection_score({k[7:]: v for k, v in e.items() if k.startswith("select_")})
              for e in evals]
    assert summary["best"]["step"] == evals[int(np.argmax(scores))]["step"]
    assert summary["best"]["selection"]["sync_acc"] == evals[int(np.argmax(scores))]["select_sync_acc"]
    meta = load_ave(tmp_path / "a.pt")[1]
    assert meta["step"] == summary["best"]["step"] and "select_offset_acc_1s" in meta["metrics"]
    with pytest.raises(InputError, match="--select-fraction"):
        train([clip], tmp_path / "b.pt", TrainConfig(max_steps=1, select_fraction=1.0, **TINY))


def test_cpu_clock_limits_training_by_cpu_time(clip, tmp_path):
    cpu = time.process_time()
    summary = train([clip], tmp_path / "a.pt", TrainConfig(minutes=0.02, clock="cpu", **TINY),
                    progress=False)
    assert 1.2 <= summary["train_s"] <= time.process_time() - cpu
    with pytest.raises(InputError, match="--clock"):
        train([clip], tmp_path / "b.pt", TrainConfig(minutes=1, clock="sundial", **TINY))


def test_resume_refuses_other_settings_or_data(clip, tmp_path):
    out = tmp_path / "a.pt"
    with pytest.raises(InputError, match="no checkpoint"):
        train([clip], out, TrainConfig(max_steps=1, **TINY), resume=True, progress=False)
    train([clip], out, TrainConfig(max_steps=1, **TINY), progress=False)
    wider = {**TINY, "width": 0.25}
    with pytest.raises(ModelFileError, match="width: checkpoint 0.125, now 0.25"):
        train([clip], out, TrainConfig(max_steps=2, **wider), resume=True, progress=False)
    other = MouthClip("other", clip.fps, clip.crops, clip.valid, clip.mel, "0" * 64)
    with pytest.raises(InputError, match="other data"):
        train([other], out, TrainConfig(max_steps=2, **TINY), resume=True, progress=False)
    with pytest.raises(InputError, match="how long"):
        train([clip], out, TrainConfig(**TINY), progress=False)


def test_evaluate_reports_perfect_scores_for_a_perfect_model(coded_clip):
    """An AVE whose embeddings encode the frame index: in-sync pairs match exactly."""
    _, val_p = split_clip(coded_clip, 0.5)
    metrics = evaluate(_FrameCodeAVE(coded_clip, offset=0), [val_p], InputSpec("bgr", "raw"))
    assert metrics["sync_acc"] == 1.0 and metrics["offset_acc_1s"] == 1.0
    assert metrics["offset_acc_2s"] == 1.0 and metrics["windows_1s"] > 10
    shifted = evaluate(_FrameCodeAVE(coded_clip, offset=3), [val_p], InputSpec("bgr", "raw"))
    assert shifted["offset_acc_1s"] == 0.0 and shifted["pos_acc"] == 0.0


# ---------------------------------------------------------------- scoring

class _FrameCodeAVE(AVE):
    """Embeds a face input as one-hot(t + offset) and a mel window as one-hot(u), where t and
    u are the frames the inputs were cut for (read back from planted pixel/mel values)."""

    def __init__(self, clip: MouthClip, offset: int) -> None:
        super().__init__(width=0.125)
        self.offset = offset
        starts = M.window_starts(clip.n_frames, clip.fps, clip.mel.shape[1])
        self.frame_of_start = {int(s): t for t, s in reversed(list(enumerate(starts)))}

    def embed_face(self, crops: torch.Tensor) -> torch.Tensor:
        t = torch.round(crops[:, 6, 0, 0] * 255.0).long()  # centre frame, BGR channel 0
        return torch.nn.functional.one_hot((t + self.offset) % 512, 512).float()

    def embed_audio(self, mel_windows: torch.Tensor) -> torch.Tensor:
        start = torch.round(mel_windows[:, 0, 0, 0] * 1000.0).long()
        u = torch.tensor([self.frame_of_start[int(s)] for s in start])
        return torch.nn.functional.one_hot(u % 512, 512).float()


@pytest.fixture()
def coded_clip(clip) -> MouthClip:
    """The clip with crop ``t`` painted with value ``t`` (blue channel) and mel column ``c``
    holding ``c / 1000``."""
    crops = np.array(clip.crops)
    crops[..., 2] = np.arange(clip.n_frames, dtype=np.uint8)[:, None, None]
    mel = np.tile(np.arange(clip.mel.shape[1], dtype=np.float32) / 1000.0, (80, 1))
    return MouthClip(clip.name, clip.fps, crops, clip.valid, mel, clip.key)


@pytest.mark.parametrize("offset", [0, 4, -7])
def test_sync_score_finds_a_planted_offset(coded_clip, offset):
    ave = _FrameCodeAVE(coded_clip, offset=offset)
    result = sync_score(coded_clip.crops, coded_clip.mel, coded_clip.fps, ave,
                        spec=InputSpec("bgr", "raw"))
    assert result["offset_frames"] == offset and result["offset_s"] == pytest.approx(offset / 25)
    assert result["min_dist"] == pytest.approx(0.0, abs=1e-6)
    assert result["confidence"] == pytest.approx(np.sqrt(2.0), abs=1e-6)
    assert result["window_offset_agreement"] == 1.0 and len(result["distances"]) == 31
    assert sync_score(coded_clip, None, None, ave, spec=InputSpec("bgr", "raw")) == result


def test_shift_similarity_sign_convention():
    faces = np.eye(8, dtype=np.float32)
    audio = np.roll(np.eye(8, dtype=np.float32), 2, axis=0)  # audio of frame t heard at t + 2
    sims = shift_similarities(faces, audio, max_offset=3)
    assert sims.shape == (8, 7) and sims[0, 3 + 2] == 1.0 and np.isnan(sims[7, 3 + 1])


def test_sync_score_rejects_short_or_malformed_input(clip):
    ave = AVE(width=0.125)
    with pytest.raises(InputError, match="at least 31"):
        sync_score(clip.crops[:30], clip.mel[:, :100], 25.0, ave)
    with pytest.raises(InputError, match=r"\[N, 48, 96, 3\] uint8"):
        sync_score(clip.crops[:, :40], clip.mel, 25.0, ave)
    with pytest.raises(InputError, match="mel and fps"):
        sync_score(clip.crops, None, None, ave)


# ---------------------------------------------------------------- CLI and bad input

@pytest.fixture()
def cli_main(monkeypatch):
    from synctalk import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ave",))
    return cli.main


def test_cli_train_then_score(cli_main, synth_clip, tmp_path, capsys):
    video, cache, _ = synth_clip
    out = tmp_path / "ave.pt"
    rc = cli_main(["ave", "train", str(video), "--out", str(out), "--cache-dir", str(cache),
                   "--max-steps", "2", "--batch-size", "8", "--width", "0.125",
                   "--val-fraction", "0.25", "--no-progress", "--threads", "1"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "trained 2 steps" in stdout and "held-out" in stdout and "s/epoch" in stdout
    assert load_ave(out)[0].width == 0.125
    rc = cli_main(["ave", "score", str(video), "--ave", str(out), "--cache-dir", str(cache),
                   "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert -15 <= result["offset_frames"] <= 15 and result["frames_used"] > 100
    assert result["confidence"] >= 0


def test_cli_score_errors_are_one_line(cli_main, synth_clip, tmp_path, capsys):
    video, cache, _ = synth_clip
    audio_only = tmp_path / "audio_only.pt"
    model = AVE(width=0.125)
    save_ave(audio_only, model, {"has_face": False}, with_face=False)
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_text("not audio")
    wrong = tmp_path / "wrong.pt"
    state = {k: v for k, v in AVE(width=0.25).state_dict().items()}
    torch.save({"format": FORMAT, "arch": {"audio_layout": "synctalk", "has_face": True,
                                           "width": 0.125}, "state_dict": state, "meta": {}}, wrong)
    trained = tmp_path / "t.pt"
    save_ave(trained, model, {"has_face": True, "inputs": InputSpec().to_meta()})
    for extra, message in [(["--ave", str(audio_only)], "no trained face branch"),
                           (["--ave", str(wrong)], "does not match the AVE architecture"),
                           (["--ave", str(trained), "--audio", str(bad_audio)],
                            "cannot decode audio")]:
        rc = cli_main(["ave", "score", str(video), "--cache-dir", str(cache), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_video_without_a_face_is_refused(tmp_path, face_landmarker_path):
    from synctalk.media import write_mp4, write_wav

    t = np.arange(16000) / 16000.0
    write_wav(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 220 * t))
    frames = [np.full((64, 64, 3), 40 + 4 * i, np.uint8) for i in range(25)]
    write_mp4(tmp_path / "wall.mp4", frames, 25.0, audio_path=tmp_path / "tone.wav")
    with pytest.raises(InputError, match="no face was found"):
        load_clip(tmp_path / "wall.mp4", cache_dir=tmp_path / "cache",
                  face_landmarker=face_landmarker_path)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    write_mp4(tmp_path / "silent.mp4", frames, 25.0)
    with pytest.raises(MediaError, match="no audio"):
        load_clip(tmp_path / "silent.mp4", cache_dir=tmp_path / "cache",
                  face_landmarker=face_landmarker_path)


def test_pretrain_config_parses_into_train_options():
    """configs/ave_pretrain.yaml (the documented GPU recipe) holds only known options."""
    from synctalk.cli import build_parser

    config = Path(__file__).resolve().parents[1] / "configs" / "ave_pretrain.yaml"
    args = build_parser().parse_args(["ave", "train", "data", "-c", str(config), "--out", "x.pt"])
    assert (args.device, args.width, args.batch_size, args.val_split) == ("cuda", 1.0, 256, "clips")
    assert args.ema == 0.999 and args.epochs == 40 and args.prep_workers == 8

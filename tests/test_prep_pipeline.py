"""``synctalk prep`` end to end: outputs, resuming, interruption, bad input."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from data_prep.pipeline import PrepOptions, prep
from synctalk.audio.ave import AVE, load_ave, save_ave
from synctalk.audio.checkpoint import import_checkpoint
from synctalk.audio.dataset import InputSpec
from synctalk.audio.features import ave_encoder_id
from synctalk.cli import main
from synctalk.errors import InputError, MediaError, ModelFileError, OutputError
from synctalk.fsutil import sha256_file
from synctalk.media import write_mp4, write_wav
from synctalk.synth.generate import SynthOptions, generate

OUTPUTS = ["manifest.json", "audio.wav", "track.npz", "background.png", "mouth_boxes.npy",
           "poses.npz", "blendshapes.npz", "splits.json", "ave.pt", "preview.mp4", "report.json",
           "report.md"]
#: CPU seconds of subject-AVE training in these tests (the real default scales with the clip).
AVE_BUDGET = 2.0


def opts(landmarker, **kw) -> PrepOptions:
    return PrepOptions(size=256, face_landmarker=str(landmarker), ave_budget=AVE_BUDGET, **kw)
HASHED = ["audio.wav", "track.npz", "background.png", "poses.npz", "blendshapes.npz", "splits.json"]


@pytest.fixture(scope="module")
def synth_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "s"
    generate(out, SynthOptions(seconds=8, size=256, seed=3))
    return out / "clip.mp4"


@pytest.fixture(scope="module")
def subject(synth_clip, tmp_path_factory, face_landmarker_path):
    out = tmp_path_factory.mktemp("prep") / "subject"
    result = prep(synth_clip, out, opts(face_landmarker_path))
    return out, result


def test_subject_has_every_output(subject):
    out, result = subject
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    n = json.loads((out / "manifest.json").read_text())["steps"]["ingest"]["info"]["n_frames"]
    assert n == 200
    for d, ext in (("frames", "jpg"), ("masks", "png"), ("face_masks", "png"), ("torso", "png"),
                   ("targets", "jpg")):
        assert len(list((out / d).glob(f"*.{ext}"))) == n, d
    splits = json.loads((out / "splits.json").read_text())
    assert max(splits["train"]) < min(splits["val"])
    assert len(splits["val"]) == round(n / 11)
    assert not any(r["skipped"] for r in result["steps"].values())
    report = json.loads((out / "report.json").read_text())
    assert set(report["steps"]) >= {"ingest", "track", "segment", "stabilize", "blendshapes",
                                    "splits", "audio"}


def test_audio_step_trains_a_subject_ave_and_caches_its_features(subject):
    out, result = subject
    info = result["steps"]["audio"]["info"]
    n = json.loads((out / "manifest.json").read_text())["steps"]["ingest"]["info"]["n_frames"]
    model, meta = load_ave(out / "ave.pt")
    assert info["source"] == "trained-on-subject" and info["ave"] == "ave.pt"
    assert meta["trained_by"] == "synctalk ave train" and model.width == 0.25
    assert info["train_steps"] > 0 and info["budget_s"] == AVE_BUDGET
    assert info["encoder_id"] == ave_encoder_id(model, InputSpec.from_meta(meta))
    feats = np.load(out / info["features"])
    assert info["features"] == f"audio_features/{info['encoder_id']}.npy"
    assert feats.shape == (n, 512) == (info["frames"], info["dim"]) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std(axis=0).max() > 0


def test_given_ave_skips_training_and_a_changed_one_reruns_only_audio(subject, synth_clip, tmp_path,
                                                                       face_landmarker_path):
    """--ave with a raw SyncTalk checkpoint, then with an AVE file: no training, the encoder's
    id recorded, and only the audio step and the report re-run."""
    ref, _ = subject
    out = tmp_path / "subject"
    shutil.copytree(ref, out)
    raw = tmp_path / "audio_visual_encoder.pth"
    torch.save(AVE(seed=7).audio.state_dict(), raw)  # SyncTalk's layout: a bare Sequential dict
    first = prep(synth_clip, out, opts(face_landmarker_path, ave=str(raw)))
    assert {k for k, r in first["steps"].items() if not r["skipped"]} == {"audio", "report"}
    info = first["steps"]["audio"]["info"]
    assert info["source"] == str(raw.resolve()) and "train_steps" not in info
    imported, meta = import_checkpoint(raw)
    assert info["encoder_id"] == ave_encoder_id(imported, InputSpec.from_meta(meta))
    n = info["frames"]
    assert np.load(out / info["features"]).shape == (n, 512)
    assert load_ave(out / "ave.pt")[0].identity() == imported.identity()
    assert all(r["skipped"] for r in prep(synth_clip, out, opts(face_landmarker_path,
                                                                ave=str(raw)))["steps"].values())

    other = tmp_path / "other.pt"
    save_ave(other, AVE(seed=8, width=0.25), {"note": "test"})
    second = prep(synth_clip, out, opts(face_landmarker_path, ave=str(other)))
    assert {k for k, r in second["steps"].items() if not r["skipped"]} == {"audio", "report"}
    info2 = second["steps"]["audio"]["info"]
    assert info2["encoder_id"] != info["encoder_id"] and info2["source"] == str(other.resolve())
    assert np.load(out / info2["features"]).shape == (n, 512)
    # The same path with other content is a changed encoder too.
    save_ave(other, AVE(seed=9, width=0.25), {"note": "test"})
    third = prep(synth_clip, out, opts(face_landmarker_path, ave=str(other)))
    assert not third["steps"]["audio"]["skipped"]
    assert third["steps"]["audio"]["info"]["encoder_id"] != info2["encoder_id"]
    # A file that is no encoder is refused before anything runs.
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="checkpoint"):
        prep(synth_clip, out, opts(face_landmarker_path, ave=str(bad)))
    with pytest.raises(InputError, match="--ave"):
        prep(synth_clip, out, opts(face_landmarker_path, ave=str(tmp_path / "missing.pt")))


def test_rerun_skips_everything_and_param_change_reruns_only_dependents(subject, synth_clip,
                                                                         face_landmarker_path):
    out, _ = subject
    before = {f: sha256_file(out / f) for f in HASHED}
    again = prep(synth_clip, out, opts(face_landmarker_path))
    assert all(r["skipped"] for r in again["steps"].values())
    changed = prep(synth_clip, out, opts(face_landmarker_path, val_fraction=0.2))
    rerun = {k for k, r in changed["steps"].items() if not r["skipped"]}
    assert rerun == {"splits", "report"}
    assert all(sha256_file(out / f) == before[f] for f in HASHED if f != "splits.json")
    prep(synth_clip, out, opts(face_landmarker_path))
    assert sha256_file(out / "splits.json") == before["splits.json"]  # back to the defaults


def test_interrupted_prep_resumes_with_the_same_outputs(subject, synth_clip, tmp_path, face_landmarker_path):
    """SIGTERM while a later step runs; the re-run skips the finished steps and ends with the
    same files as the uninterrupted run."""
    ref, _ = subject
    out = tmp_path / "subject"
    cmd = [sys.executable, "-m", "synctalk.cli", "prep", str(synth_clip), "--out", str(out),
           "--size", "256", "--face-landmarker", str(face_landmarker_path),
           "--ave-budget", str(AVE_BUDGET)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and "track" in json.loads(manifest.read_text())["steps"]:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "prep finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    done = set(json.loads(manifest.read_text())["steps"])
    assert {"ingest", "track"} <= done and "report" not in done
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    result = prep(synth_clip, out, opts(face_landmarker_path))
    assert all(result["steps"][s]["skipped"] for s in done)
    for f in HASHED:
        assert sha256_file(out / f) == sha256_file(ref / f), f


def test_bad_inputs_are_clear_errors_and_leave_nothing(tmp_path, synth_clip, face_landmarker_path,
                                                       capsys):
    options = opts(face_landmarker_path)
    out = tmp_path / "s"
    with pytest.raises(InputError, match="not found"):
        prep(tmp_path / "missing.mp4", out, options)
    wav = tmp_path / "speech.wav"
    write_wav(wav, np.zeros(16000 * 6, np.float32))
    with pytest.raises(MediaError, match="video"):
        prep(wav, out, options)
    mute = tmp_path / "mute.mp4"
    write_mp4(mute, [np.zeros((64, 64, 3), np.uint8)] * 150, 25)
    with pytest.raises(MediaError, match="audio"):
        prep(mute, out, options)
    short = tmp_path / "short"
    generate(short, SynthOptions(seconds=3, size=128))
    with pytest.raises(InputError, match="short"):
        prep(short / "clip.mp4", out, options)
    assert not out.exists()
    with pytest.raises(OutputError):
        prep(synth_clip, tmp_path / "no" / "such" / "dir", options)
    # A different subject in the output directory is refused unless --force.
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "synctalk-subject/1",
                                                     "source": {"sha256": "x"}, "steps": {}}))
    assert main(["prep", str(synth_clip), "--out", str(other), "--size", "256",
                 "--face-landmarker", str(face_landmarker_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]


def test_video_without_a_face(tmp_path, face_landmarker_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(150)]
    audio = tmp_path / "a.wav"
    write_wav(audio, 0.1 * rng.standard_normal(16000 * 6).astype(np.float32))
    clip = tmp_path / "noface.mp4"
    write_mp4(clip, frames, 25, audio_path=audio)
    with pytest.raises(InputError, match="face"):
        prep(clip, tmp_path / "s", PrepOptions(size=128, face_landmarker=str(face_landmarker_path)))
    assert not (tmp_path / "s").exists()

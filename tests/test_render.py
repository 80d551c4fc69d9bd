"""``synctalk render``: frame planning, pose replay, audio handling, and the mp4 it writes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from synctalk.errors import InputError, MediaError, OutputError
from synctalk.media import write_wav
from synctalk.render.offline import (check_output_path, frames_for_audio, load_audio,
                                     load_pose_source, pingpong, retarget_poses)


def test_pingpong_order():
    assert pingpong(9, [10, 11, 12]).tolist() == [10, 11, 12, 11, 10, 11, 12, 11, 10]
    assert pingpong(3, [5]).tolist() == [5, 5, 5]
    assert pingpong(0, [1, 2]).tolist() == []
    seq = np.arange(50)
    out = pingpong(1000, seq)
    assert np.abs(np.diff(out)).max() == 1  # never jumps at a loop boundary
    with pytest.raises(InputError):
        pingpong(3, [])


def test_frames_cover_the_audio():
    assert frames_for_audio(16000, 16000, 25.0) == 25
    assert frames_for_audio(16001, 16000, 25.0) == 26
    assert frames_for_audio(640, 16000, 25.0) == 1
    assert frames_for_audio(16000, 16000, 30000 / 1001) == 30


def _poses(n: int, seed: int, depth: float) -> np.ndarray:
    """Camera-to-world poses of a head seen from ``depth`` mm, turning a little."""
    rng = np.random.default_rng(seed)
    rot = Rotation.from_rotvec(rng.normal(scale=0.1, size=(n, 3))).as_matrix()  # head→camera
    t = np.array([0.0, 0.0, depth]) + rng.normal(scale=5.0, size=(n, 3))
    c2w = np.zeros((n, 4, 4))
    c2w[:, :3, :3] = np.swapaxes(rot, 1, 2)
    c2w[:, :3, 3] = -np.einsum("nji,nj->ni", rot, t)
    c2w[:, 3, 3] = 1
    return c2w


def _head_to_cam(c2w):
    r = np.swapaxes(c2w[:, :3, :3], 1, 2)
    return r, -np.einsum("nij,nj->ni", r, c2w[:, :3, 3])


def test_retarget_keeps_relative_motion_and_moves_to_the_reference():
    src, ref = _poses(40, 0, 600.0), _poses(30, 1, 900.0)
    out = retarget_poses(src, ref)
    assert out.shape == (40, 4, 4)
    np.testing.assert_allclose(retarget_poses(ref, ref), ref, atol=1e-9)  # own motion: unchanged
    r_s, t_s = _head_to_cam(src)
    r_o, t_o = _head_to_cam(out)
    r_r, t_r = _head_to_cam(ref)
    # rotation between any two output frames equals the source's
    np.testing.assert_allclose(r_o[5] @ r_o[9].T, r_s[5] @ r_s[9].T, atol=1e-9)
    # the output sits at the reference's mean depth, source translations scaled by depth ratio
    assert t_o[:, 2].mean() == pytest.approx(t_r[:, 2].mean())
    np.testing.assert_allclose(t_o[3] - t_o[7], (t_s[3] - t_s[7]) * t_r[:, 2].mean() / t_s[:, 2].mean())
    np.testing.assert_allclose(np.linalg.det(out[:, :3, :3]), 1.0)


def test_pose_sources(tmp_path):
    c2w = _poses(10, 2, 700.0)
    np.savez(tmp_path / "p.npz", c2w=c2w)
    np.testing.assert_allclose(load_pose_source(tmp_path / "p.npz", 25.0), c2w)
    np.savez(tmp_path / "p50.npz", c2w=c2w, fps=50.0)  # resampled to 25 fps: every other pose
    np.testing.assert_allclose(load_pose_source(tmp_path / "p50.npz", 25.0), c2w[::2])
    subj = tmp_path / "subj"
    subj.mkdir()
    valid = np.ones(10, bool)
    valid[3] = False
    np.savez(subj / "poses.npz", c2w=c2w, valid=valid)
    assert len(load_pose_source(subj, 25.0)) == 9
    np.savez(tmp_path / "bad.npz", poses=c2w)
    for bad, msg in ((tmp_path / "bad.npz", "no 'c2w'"), (tmp_path / "none.npz", "does not exist"),
                     (tmp_path, "no poses.npz")):
        with pytest.raises(InputError, match=msg):
            load_pose_source(bad, 25.0)
    np.savez(tmp_path / "shape.npz", c2w=np.zeros((4, 3, 4)))
    with pytest.raises(InputError, match=r"\[M, 4, 4\]"):
        load_pose_source(tmp_path / "shape.npz", 25.0)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_pose_source(tmp_path / "junk.npz", 25.0)


def _stereo_wav(path, seconds: float, sr: int) -> np.ndarray:
    """A 16-bit stereo wav: a tone on the left, silence on the right."""
    import wave

    t = np.arange(int(seconds * sr)) / sr
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    pcm = (np.stack([left, np.zeros_like(left)], 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return left


def test_audio_of_any_rate_and_channels(tmp_path):
    _stereo_wav(tmp_path / "a.wav", 1.3, 8000)
    audio, n = load_audio(tmp_path / "a.wav", 25.0)
    assert n == 33 and abs(len(audio) - 1.3 * 16000) <= 2
    assert audio.std() == pytest.approx(0.25 / np.sqrt(2), rel=0.05)  # channels averaged


def test_audio_shorter_than_a_frame_is_refused(tmp_path):
    write_wav(tmp_path / "short.wav", np.zeros(500, np.float32), 16000)  # 31 ms < 40 ms
    with pytest.raises(InputError, match="shorter than one video frame"):
        load_audio(tmp_path / "short.wav", 25.0)
    (tmp_path / "x.wav").write_bytes(b"RIFF nothing")
    with pytest.raises(MediaError):
        load_audio(tmp_path / "x.wav", 25.0)
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "missing.wav", 25.0)


def test_output_path_checks(tmp_path):
    assert check_output_path(tmp_path / "o.mp4") == tmp_path / "o.mp4"
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "o.mp4")
    with pytest.raises(OutputError, match="must end in .mp4"):
        check_output_path(tmp_path / "o.avi")
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_output_path(tmp_path / "d.mp4")


# ---------------------------------------------------------------- with a (tiny) trained model

def _probe(path):
    """(video frames, video seconds, audio seconds) of an mp4, from ffprobe-like ffmpeg output."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), "ffmpeg")
    n = sum(1 for _ in reader)
    meta = reader.get_meta_data()
    reader.close()
    from synctalk.media import read_audio

    return n, meta["duration"], len(read_audio(path, 16000)) / 16000


@pytest.fixture(scope="module")
def head(tiny_model):
    from synctalk.nerf.inference import TalkingHead

    return TalkingHead.load(tiny_model)


def test_render_8khz_stereo_to_mp4_and_pngs(tiny_model, head, tmp_path, capsys, one_thread):
    """Any rate/channel count works; one frame per 1/fps s of audio; PNGs are the exact frames."""
    import cv2

    from synctalk.cli import main
    from synctalk.render.offline import plan_frames

    _stereo_wav(tmp_path / "a.wav", 0.5, 8000)
    out = tmp_path / "o.mp4"
    rc = main(["render", str(tiny_model), "--audio", str(tmp_path / "a.wav"), "--out", str(out),
               "--frames-dir", str(tmp_path / "png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "rendered 13 frames" in text and "frames/s" in text and "field" in text
    n, video_s, audio_s = _probe(out)
    assert n == 13 and audio_s == pytest.approx(0.5, abs=0.05)
    assert video_s == pytest.approx(0.5, abs=0.1)
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs][:2] == ["000000.png", "000001.png"] and len(pngs) == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "o.mp4", "png"]  # no temp files
    # frame 5 on disk is what the model renders for audio frame 5 and its ping-pong source frame
    from synctalk.render.offline import audio_features, load_audio

    audio, n_out = load_audio(tmp_path / "a.wav", head.fps)
    plan = plan_frames(head, n_out)
    assert plan.source_frames.tolist() == sorted(head.splits["train"])[:13]
    want = head.render_frame(audio_features(head, audio, n_out), 5, int(plan.source_frames[5]))["rgb"]
    got = cv2.imread(str(pngs[5]))[..., ::-1]
    np.testing.assert_array_equal(got, want)


def test_frame_plan_options(head, tmp_path):
    from synctalk.render.offline import plan_frames

    train = sorted(head.splits["train"])
    plan = plan_frames(head, 300)
    assert plan.c2w is None and plan.blink is None
    assert plan.source_frames[len(train) - 1] == train[-1] and plan.source_frames[len(train)] == train[-2]
    synth = plan_frames(head, 200, blink="synth", seed=1).blink  # 8 s: blinks every 2.5-5 s
    assert synth.shape == (200,) and synth.min() == 0.0 and synth.max() > 0.9
    assert (synth > 0.5).mean() < 0.1
    assert not plan_frames(head, 10, blink="open").blink.any()
    posed = plan_frames(head, 7, pose_from=head.subject)
    assert posed.c2w.shape == (7, 4, 4)
    with pytest.raises(InputError, match="blink mode"):
        plan_frames(head, 3, blink="wink")


def test_render_options_change_the_frames(tiny_model, head, tmp_path, one_thread):
    from synctalk.render.offline import render_to_mp4

    write_wav(tmp_path / "a.wav", 0.1 * np.random.default_rng(0).normal(size=1600).astype(np.float32))
    plain = render_to_mp4(head, tmp_path / "a.wav", tmp_path / "p.mp4", frames_dir=tmp_path / "p",
                          progress=False)
    assert plain.n_frames == 3  # 0.1 s: shorter than the encoder window, padded for features
    c2w = np.load(head.subject / "poses.npz")["c2w"]
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_euler("y", 12, degrees=True).as_matrix()
    np.savez(tmp_path / "turned.npz", c2w=c2w[:5] @ rot, fps=25.0)
    turned = render_to_mp4(head, tmp_path / "a.wav", tmp_path / "t.mp4", frames_dir=tmp_path / "t",
                           pose_from=tmp_path / "turned.npz", blink="open", progress=False)
    assert turned.n_frames == 3 and set(plain.stage_ms) >= {"features", "march", "field", "encode"}
    import cv2

    a = cv2.imread(str(tmp_path / "p" / "000001.png")).astype(int)
    b = cv2.imread(str(tmp_path / "t" / "000001.png")).astype(int)
    assert np.abs(a - b).mean() > 0.5  # another head pose renders another image


def test_render_cli_errors(tiny_model, tmp_path, capsys):
    from synctalk.cli import main

    write_wav(tmp_path / "ok.wav", np.zeros(8000, np.float32))
    write_wav(tmp_path / "short.wav", np.zeros(400, np.float32))
    cases = [
        (["--audio", str(tmp_path / "short.wav"), "--out", str(tmp_path / "o.mp4")],
         "shorter than one video frame"),
        (["--audio", str(tmp_path / "ok.wav"), "--out", str(tmp_path / "missing" / "o.mp4")],
         "output directory does not exist"),
        (["--audio", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o.mp4")], "not found"),
    ]
    for extra, msg in cases:
        assert main(["render", str(tiny_model), *extra]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
    ok = ["--audio", str(tmp_path / "ok.wav"), "--out", str(tmp_path / "o.mp4")]
    assert main(["render", str(tmp_path / "no_model"), *ok]) == 2
    assert "model directory not found" in capsys.readouterr().err
    broken = tmp_path / "broken"  # a model directory without its weights
    broken.mkdir()
    import shutil

    shutil.copy(tiny_model / "config.json", broken / "config.json")
    assert main(["render", str(broken), *ok]) == 2
    assert "model.pt" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()

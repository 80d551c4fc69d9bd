"""prep step ``ingest``: probing, resampling, audio alignment, auto-crop, damaged input."""
from __future__ import annotations

import json
import logging
import subprocess
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep import ingest
from synctalk.errors import InputError, MediaError
from synctalk.media import ffmpeg_exe, read_audio, write_mp4, write_wav
from synctalk.synth.generate import SynthOptions, generate

SR = ingest.SAMPLE_RATE


def _ffmpeg(*args) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *map(str, args)], check=True)


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767.0


def _flash_clip(path: Path, *, fps: float = 30.0, seconds: float = 6.0, change_s: float = 3.0,
                size: int = 64) -> Path:
    """A clip that turns from black to white at ``change_s`` with a click at the same time."""
    audio = np.zeros(int(seconds * SR), np.float32)
    burst = np.arange(int(0.005 * SR))
    audio[int(change_s * SR) + burst] = 0.8 * np.sin(2 * np.pi * 2000 * burst / SR)
    wav = path.with_suffix(".wav")
    write_wav(wav, audio, SR)
    n = int(round(seconds * fps))
    frames = (np.full((size, size, 3), 255 if i >= change_s * fps else 0, np.uint8) for i in range(n))
    write_mp4(path, frames, fps, audio_path=wav)
    return path


def _onset(audio: np.ndarray) -> int:
    """First sample louder than a third of the peak."""
    return int(np.argmax(np.abs(audio) > np.abs(audio).max() / 3))


@pytest.fixture(scope="module")
def flash(tmp_path_factory) -> Path:
    return _flash_clip(tmp_path_factory.mktemp("flash") / "flash.mp4")


@pytest.fixture(scope="module")
def synth25(tmp_path_factory) -> Path:
    """6 s synthetic head at 256², 25 fps, with ground truth."""
    out = tmp_path_factory.mktemp("synth") / "s"
    generate(out, SynthOptions(seconds=6, size=256, fps=25))
    return out


def _subject(tmp_path: Path) -> Path:
    d = tmp_path / "subject"
    d.mkdir()
    return d


# --------------------------------------------------------------------------- probing

@pytest.mark.parametrize("name, size, fps, codec, video_start, audio", [
    ("german_20s_25fps.mp4", [512, 512], 25.0, "h264", 0.0, ("aac", 44100, 2, 0.0)),
    ("anchor_71s_25fps.mp4", [512, 512], 25.0, "h264", 0.0, ("mp3", 44100, 2, 0.0)),
    # The first video frame is at 0.08 s and the audio starts at 0: audio leads by 0.08 s.
    ("macron_50s_30fps.mp4", [512, 512], 30.0, "h264", 0.08, ("aac", 48000, 2, 0.0)),
    ("fullbody_20s_1080x1920.mp4", [1080, 1920], 25.0, "hevc", 0.0, ("aac", 44100, 2, 0.0)),
])
def test_probe_real_clips(shared_data, name, size, fps, codec, video_start, audio):
    info = ingest.probe_video(shared_data / "clips" / name)
    v, a = info["video"], info["audio"]
    assert [v["width"], v["height"]] == v["display_size"] == size
    assert (v["fps"], v["codec"], v["rotation"]) == (fps, codec, 0.0)
    assert v["start_s"] == pytest.approx(video_start, abs=1e-6)
    assert (a["codec"], a["sample_rate"], a["channels"]) == audio[:3]
    assert a["start_s"] == pytest.approx(audio[3], abs=1e-6)
    assert info["duration_s"] > 19


def test_probe_rotation_and_display_size(flash, tmp_path):
    wide = tmp_path / "wide.mp4"
    _ffmpeg("-i", flash, "-vf", "scale=64:32", "-c:a", "copy", wide)
    rotated = tmp_path / "rotated.mp4"
    _ffmpeg("-display_rotation", 90, "-i", wide, "-c", "copy", rotated)
    v = ingest.probe_video(rotated)["video"]
    assert (v["width"], v["height"], v["rotation"], v["display_size"]) == (64, 32, 90.0, [32, 64])
    frame = next(ingest.source_frames(rotated, 25))
    assert frame.shape == (64, 32, 3)  # decoded upright: H=64, W=32


def test_probe_rejects_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ingest.probe_video(tmp_path / "missing.mp4")
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError, match="not a video"):
        ingest.probe_video(fake)
    silent = tmp_path / "no_audio.mp4"
    write_mp4(silent, (np.zeros((32, 32, 3), np.uint8) for _ in range(10)), 25)
    with pytest.raises(MediaError, match="no audio track"):
        ingest.probe_video(silent)


# --------------------------------------------------------------------------- timing

def test_align_audio_pads_trims_and_cuts():
    a = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(ingest.align_audio(a, 2 / SR, 6), [0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ingest.align_audio(a, -3 / SR, 5), [4, 5, 6, 7, 8])
    np.testing.assert_array_equal(ingest.align_audio(a, 0.0, 12), [*range(1, 11), 0, 0])


@pytest.mark.parametrize("shift", ["none", "audio_late", "video_late"])
def test_resample_30_to_25_keeps_audio_on_the_frames(flash, tmp_path, shift):
    """Frames and audio stay in sync through 30→25 fps resampling and stream start offsets.

    The clip turns white at 3.0 s with a click at the same instant. Delaying one stream by
    0.2 s in the container (``-itsoffset``) must move the click by ±0.2 s relative to the
    white frame in the subject, exactly as a player would present it.
    """
    src = flash
    if shift != "none":
        src = tmp_path / f"{shift}.mp4"
        late_video = shift == "video_late"
        _ffmpeg(*(["-itsoffset", 0.2] if late_video else []), "-i", flash,
                *([] if late_video else ["-itsoffset", 0.2]), "-i", flash,
                "-map", "0:v", "-map", "1:a", "-c", "copy", src)
    subject = _subject(tmp_path)
    info = ingest.run(subject, {"source": src, "fps": 25, "size": 64, "auto_crop": False})

    assert info["n_frames"] == ingest.frame_count(subject) == 150  # 6 s × 25 fps
    assert (info["fps"], info["source_fps"], info["crop"]) == (25.0, 30.0, {"x": 0, "y": 0, "side": 64})
    audio = _read_wav(subject / "audio.wav")
    assert len(audio) == 150 * SR // 25
    brightness = np.array([rgb.mean() for _, rgb in ingest.iter_frames(subject)])
    first_white = int(np.argmax(brightness > 128))
    assert first_white == 75  # 3.0 s after the first frame
    expected = {"none": 0.0, "audio_late": 0.2, "video_late": -0.2}[shift]
    click_s = _onset(audio) / SR
    assert click_s - first_white / 25 == pytest.approx(expected, abs=0.002)
    if shift == "video_late":
        assert info["audio_offset_s"] == pytest.approx(-0.2, abs=1e-3)
    if shift == "audio_late":
        assert info["audio_offset_s"] > 0.1
        assert not audio[: int(info["audio_offset_s"] * SR)].any()  # padded with silence


def test_real_30fps_clip_with_late_video(shared_data, tmp_path):
    """macron's video starts 0.08 s after its audio: 0.08 s of audio is dropped."""
    src = shared_data / "clips" / "macron_50s_30fps.mp4"
    subject = _subject(tmp_path)
    info = ingest.run(subject, {"source": src, "size": 256, "auto_crop": False, "max_seconds": 6})
    assert (info["n_frames"], info["source_fps"], info["audio_offset_s"]) == (150, 30.0, -0.08)
    assert ingest.read_frame(subject, 149).shape == (256, 256, 3)
    audio = _read_wav(subject / "audio.wav")
    raw = read_audio(src, SR)
    np.testing.assert_allclose(audio, raw[1280:1280 + 6 * SR], atol=2 / 32767)  # 0.08 s = 1280


def test_too_short_clip_is_refused_before_decoding(tmp_path):
    src = tmp_path / "short.mp4"
    write_wav(tmp_path / "a.wav", np.zeros(3 * SR, np.float32), SR)
    write_mp4(src, (np.zeros((32, 32, 3), np.uint8) for _ in range(75)), 25,
              audio_path=tmp_path / "a.wav")
    subject = _subject(tmp_path)
    with pytest.raises(InputError, match="3.0 s of video; prep needs at least 5 s"):
        ingest.run(subject, {"source": src, "auto_crop": False})
    assert list(subject.iterdir()) == []


def test_silent_audio_is_a_warning_not_an_error(tmp_path, caplog):
    src = tmp_path / "silent.mp4"
    write_wav(tmp_path / "a.wav", np.zeros(6 * SR, np.float32), SR)
    write_mp4(src, (np.zeros((32, 32, 3), np.uint8) for _ in range(150)), 25,
              audio_path=tmp_path / "a.wav")
    with caplog.at_level(logging.WARNING, logger="data_prep.ingest"):
        info = ingest.run(_subject(tmp_path), {"source": src, "size": 32, "auto_crop": False})
    assert info["audio_rms"] < ingest.SILENCE_RMS and info["n_frames"] == 150
    assert any("is silent" in r.message for r in caplog.records)


def test_damaged_stream_is_decoded_and_reported(synth25, tmp_path, caplog):
    data = bytearray((synth25 / "clip.mp4").read_bytes())
    rng = np.random.default_rng(0)
    for at in (0.3, 0.5, 0.7):
        start = int(len(data) * at)
        data[start:start + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    src = tmp_path / "damaged.mp4"
    src.write_bytes(bytes(data))
    subject = _subject(tmp_path)
    with caplog.at_level(logging.WARNING, logger="data_prep.ingest"):
        info = ingest.run(subject, {"source": src, "size": 128, "auto_crop": False})
    assert info["n_frames"] == 150  # the timeline is kept: lost frames repeat the previous one
    assert info["corrupt_warnings"] > 0
    assert info["source_frames_lost"] + info["source_frames_damaged"] > 0
    assert any("is damaged" in r.message for r in caplog.records)


def test_decode_stats_parses_ffmpeg_log():
    log = ("[h264 @ 0x1] [error] Reference 9 >= 4\n"
           "[vist#0:0/h264 @ 0x2] [dec:h264 @ 0x3] [warning] corrupt decoded frame\n"
           "[in#0/mov @ 0x4] [verbose]   Input stream #0:0 (video): 180 packets read "
           "(179394 bytes); 179 frames decoded; 1 decode errors; \n")
    assert ingest.decode_stats(log) == {"packets": 180, "decoded": 179, "lost": 1,
                                        "damaged": 1, "errors": 1}


# --------------------------------------------------------------------------- auto-crop

def test_choose_crop_geometry():
    face = np.array([[900.0, 400.0, 1000.0, 520.0]] * 10)  # 120 px high in a 1920×1080 frame
    crop = ingest.choose_crop(face, (1920, 1080))
    side = crop["side"]
    assert side == pytest.approx(120 / ingest.FACE_FRACTION, abs=2) and side % 2 == 0
    assert crop["x"] + side / 2 == pytest.approx(950, abs=2)
    assert crop["y"] + ingest.FACE_CENTRE_Y * side == pytest.approx(460, abs=2)
    # Near the top-left corner the crop is shifted into the frame, not shrunk.
    corner = ingest.choose_crop(face - [880, 390, 880, 390], (1920, 1080))
    assert (corner["x"], corner["y"], corner["side"]) == (0, 0, side)
    # A large face in a square frame: the whole frame.
    big = ingest.choose_crop(np.array([[100.0, 120, 380, 400]] * 5), (512, 512))
    assert (big["x"], big["y"], big["side"]) == (0, 0, 512)
    # Head motion: the union of the boxes must fit with a margin.
    moving = face + np.linspace(0, 300, 10)[:, None] * [1, 0, 1, 0]
    wide = ingest.choose_crop(moving, (1920, 1080))
    assert wide["side"] >= ingest.MOTION_MARGIN * 400 - 2
    assert wide["x"] <= 900 and wide["x"] + wide["side"] >= 1300


def test_choose_crop_refuses_missing_or_tiny_faces():
    boxes = np.full((10, 4), np.nan)
    boxes[:4] = [10, 10, 200, 200]
    with pytest.raises(InputError, match="no face found in most sampled frames"):
        ingest.choose_crop(boxes, (640, 480))
    with pytest.raises(InputError, match="face too small: 50 px"):
        ingest.choose_crop(np.array([[10.0, 10, 50, 60]] * 5), (640, 480))


def test_crop_mapping_round_trip():
    crop = {"x": 300, "y": 700, "side": 410}
    pts = np.array([[0.0, 0.0], [256.0, 256.0], [12.5, 200.25]])
    src = ingest.crop_to_source(pts, crop, 256)
    np.testing.assert_allclose(src[1], [710, 1110])
    np.testing.assert_allclose(ingest.source_to_crop(src, crop, 256), pts)


def test_crop_principal_point_is_the_source_centre_in_crop_pixels():
    info = {"crop": {"x": 300, "y": 700, "side": 410}, "source_size": [720, 1280], "size": 256}
    cx, cy = ingest.crop_principal_point(info)
    assert (cx, cy) == pytest.approx(((360 - 300) * 256 / 410, (640 - 700) * 256 / 410))
    np.testing.assert_allclose(ingest.crop_to_source([cx, cy], info["crop"], 256), [360, 640])
    # A centred crop keeps the principal point at the crop centre.
    centred = {"crop": ingest.centre_crop((640, 480)), "source_size": [640, 480], "size": 512}
    assert ingest.crop_principal_point(centred) == pytest.approx((256.0, 256.0))
    assert ingest.crop_principal_point({"size": 512}) is None


def test_prefetched_keeps_order_passes_errors_and_stops_early():
    assert list(ingest.prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad frame")

    it = ingest.prefetched(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad frame"):
        next(it)
    made = []

    def endless():
        for i in range(10_000):
            made.append(i)
            yield i

    it = ingest.prefetched(endless(), depth=2)
    assert next(it) == 0
    it.close()  # the producer stops: it made only a few items ahead
    assert len(made) <= 6


def test_auto_crop_in_a_large_frame(synth25, tmp_path, face_landmarker_path):
    """The synthetic head, enlarged 1.5× and padded into a 720×1280 portrait canvas."""
    src = tmp_path / "portrait.mp4"
    _ffmpeg("-i", synth25 / "clip.mp4", "-vf", "scale=384:384,pad=720:1280:300:700:color=gray",
            "-c:a", "copy", src)
    subject = _subject(tmp_path)
    info = ingest.run(subject, {"source": src, "size": 256, "face_landmarker": face_landmarker_path})
    crop, side = info["crop"], info["crop"]["side"]
    assert info["source_size"] == [720, 1280] and info["scale"] == pytest.approx(256 / side)
    assert 150 < info["face_px"] < 220 and 0.3 < info["face_px"] / side < 0.6

    # Every ground-truth landmark of every frame lies inside the crop.
    gt = json.loads((synth25 / "ground_truth.json").read_text())
    pts = np.array([list(f["landmarks"].values()) for f in gt["frames"]]) * 1.5 + [300, 700]
    inside = ingest.source_to_crop(pts, crop, 256)
    assert inside.min() > 10 and inside.max() < 246

    # The recorded box is the exact source region of the crop: among boxes shifted by up to
    # 3 px, it is the one whose resized source pixels match the ingested frame best, and a
    # 1 px shift already doubles the difference.
    source = next(ingest.source_frames(src, 25)).astype(np.float32)
    frame = ingest.read_frame(subject, 0).astype(np.float32)

    def error(dx: int, dy: int) -> float:
        x, y = crop["x"] + dx, crop["y"] + dy
        region = cv2.resize(source[y:y + side, x:x + side], (256, 256), interpolation=cv2.INTER_AREA)
        return float(np.abs(region - frame).mean())

    shifts = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)]
    errors = {s: error(*s) for s in shifts}
    assert min(errors, key=errors.get) == (0, 0)
    assert errors[(0, 0)] < 3.0
    assert min(errors[s] for s in [(-1, 0), (1, 0), (0, -1), (0, 1)]) > 1.8 * errors[(0, 0)]


def test_face_too_small_leaves_nothing_behind(synth25, tmp_path, face_landmarker_path):
    src = tmp_path / "small.mp4"
    _ffmpeg("-i", synth25 / "clip.mp4", "-vf", "scale=128:128", "-c:a", "copy", src)
    subject = _subject(tmp_path)
    with pytest.raises(InputError, match="face too small"):
        ingest.run(subject, {"source": src, "face_landmarker": face_landmarker_path})
    assert list(subject.iterdir()) == []


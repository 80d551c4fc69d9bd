"""Atomic writes and ffmpeg-based media I/O."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from synctalk.errors import MediaError, OutputError
from synctalk.fsutil import atomic_dir, atomic_path, write_json_atomic
from synctalk.media import ffmpeg_exe, read_audio, write_mp4, write_wav


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_missing_parent_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_json_atomic(tmp_path / "nope" / "x.json", {})


def test_atomic_write_respects_umask(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_atomic_dir_replaces_only_on_success(tmp_path):
    d = tmp_path / "subject"
    d.mkdir()
    (d / "keep").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(d) as tmp:
            (tmp / "new").write_text("2")
            raise ValueError
    assert [p.name for p in d.iterdir()] == ["keep"]
    with atomic_dir(d) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in d.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subject"]


def test_audio_roundtrip_resample_and_downmix(tmp_path):
    sr = 48000
    t = np.arange(sr) / sr
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], 1)
    path = tmp_path / "tone.wav"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "f32le", "-ar", str(sr), "-ac", "2", "-i", "-",
                    str(path)], input=stereo.astype("<f4").tobytes(), check=True)
    mono = read_audio(path, 16000)
    assert abs(len(mono) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(mono))
    assert abs(np.argmax(spectrum) * 16000 / len(mono) - 440) < 3
    write_wav(tmp_path / "m.wav", mono, 16000)
    np.testing.assert_allclose(read_audio(tmp_path / "m.wav", 16000), mono, atol=2e-4)


def test_read_audio_of_a_file_without_audio(tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8)] * 5
    write_mp4(tmp_path / "silent.mp4", frames, 25)
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(tmp_path / "silent.mp4")


def test_write_mp4_rejects_odd_sizes_and_leaves_nothing(tmp_path):
    with pytest.raises(MediaError, match="even"):
        write_mp4(tmp_path / "x.mp4", [np.zeros((31, 32, 3), np.uint8)], 25)
    assert list(tmp_path.iterdir()) == []


def test_read_audio_averages_channels(tmp_path):
    """Stereo with the same signal in both channels decodes to that signal, not louder."""
    sr = 16000
    x = 0.3 * np.sin(2 * np.pi * 300 * np.arange(sr) / sr)
    stereo = np.stack([x, x], 1).astype("<f4")
    path = tmp_path / "st.wav"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "f32le", "-ar", str(sr), "-ac", "2", "-i", "-",
                    "-c:a", "pcm_f32le", str(path)], input=stereo.tobytes(), check=True)
    np.testing.assert_allclose(read_audio(path, sr), x, atol=1e-6)

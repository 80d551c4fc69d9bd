"""Audio and video I/O through the ffmpeg binary that ``imageio-ffmpeg`` ships.

Conventions:
    * audio arrays are ``float32`` in ``[-1, 1]``, shape ``[n_samples]`` (mono);
    * video frames are ``uint8`` RGB, shape ``[H, W, 3]``.
"""
from __future__ import annotations

import subprocess
import wave
from typing import Iterable

import numpy as np

from synctalk.errors import MediaError, require_file
from synctalk.fsutil import atomic_path


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def read_audio(path, sr: int = 16000) -> np.ndarray:
    """Decode any audio (or the audio track of a video) to mono float32 at ``sr`` Hz.

    Channels are averaged (so a stereo file with the same signal in both channels gives
    that signal); resampling is done by ffmpeg (swr, default filter).

    Returns:
        ``[n_samples]`` float32 in [-1, 1].

    Raises:
        InputError: the file is missing. MediaError: it has no decodable audio stream.
    """
    path = require_file(path, "audio file")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-vn", "-map", "0:a:0",
           "-ar", str(sr), "-c:a", "pcm_f32le", "-f", "wav", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        lines = err.strip().splitlines()
        detail = "the file has no audio stream" if "matches no streams" in err else (
            lines[-1] if lines else "unknown ffmpeg error")
        raise MediaError(f"cannot decode audio from {path}: {detail}")
    channels, data = _parse_wav_stream(proc.stdout)
    audio = np.frombuffer(data[: len(data) // (4 * channels) * 4 * channels], dtype="<f4")
    audio = audio.reshape(-1, channels).mean(axis=1, dtype=np.float64).astype(np.float32)
    if audio.size == 0:
        raise MediaError(f"{path} contains no audio samples.")
    return audio


def _parse_wav_stream(buf: bytes) -> tuple[int, bytes]:
    """Channel count and sample bytes of a RIFF/WAVE stream written by ffmpeg to a pipe
    (whose size fields are unknown, so the data chunk runs to the end of the buffer)."""
    if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise MediaError("ffmpeg did not produce a WAV stream")
    pos, channels = 12, None
    while pos + 8 <= len(buf):
        cid, size = buf[pos:pos + 4], int.from_bytes(buf[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            channels = int.from_bytes(buf[pos + 10:pos + 12], "little")
        elif cid == b"data":
            if not channels:
                break
            return channels, buf[pos + 8:]
        pos += 8 + size + (size & 1)
    raise MediaError("malformed WAV stream from ffmpeg")


def write_wav(path, audio: np.ndarray, sr: int = 16000) -> None:
    """Write mono float audio as 16-bit PCM WAV (atomically)."""
    pcm = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    pcm = np.round(pcm * 32767.0).astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(pcm.tobytes())


def write_mp4(path, frames: Iterable[np.ndarray], fps: float, *, audio_path=None,
              crf: int = 18, preset: str = "medium", threads: int = 2,
              shortest: bool = True) -> int:
    """Encode RGB frames to H.264 (yuv420p) MP4, optionally muxing an audio file as AAC.

    Frames are streamed to ffmpeg (never all held in memory). Output is bit-exact for
    identical inputs and settings: container metadata and encoder tags are stripped and
    the x264 thread count is fixed.

    Args:
        path: output ``.mp4``; written to a temporary name and renamed when complete.
        frames: iterable of ``[H, W, 3]`` uint8 RGB arrays, all the same size (even H, W).
        fps: frame rate.
        audio_path: optional audio file to mux (trimmed to the video length).
        crf, preset, threads: x264 settings.
        shortest: end the file with the shorter stream (ffmpeg ``-shortest``); False keeps
            every frame and all of the audio (a renderer that covers the audio with
            ``⌈duration · fps⌉`` frames wants that: ``-shortest`` may drop the last frame).

    Returns:
        The number of frames written.
    """
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise MediaError("no frames to encode") from None
    h, w = first.shape[:2]
    if h % 2 or w % 2:
        raise MediaError(f"frame size must be even for H.264/yuv420p, got {w}x{h}")
    with atomic_path(path) as tmp:
        cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", repr(float(fps)),
               "-i", "-"]
        if audio_path is not None:
            cmd += ["-i", str(audio_path)]
        cmd += ["-map", "0:v:0"]
        if audio_path is not None:
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
            cmd += ["-shortest"] if shortest else []
        cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                "-threads", str(threads), "-map_metadata", "-1", "-fflags", "+bitexact",
                "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-movflags", "+faststart",
                str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        n = 0
        try:
            for frame in _chain(first, it):
                if frame.shape != first.shape or frame.dtype != np.uint8:
                    raise MediaError(f"frame {n} has shape {frame.shape}/{frame.dtype}, "
                                     f"expected {first.shape}/uint8")
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                n += 1
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise MediaError(f"ffmpeg failed to encode {path}: {err.strip()[-500:]}")
    return n


def _chain(first, rest):
    yield first
    yield from rest

"""Per-video-frame audio features that condition the talking head, and their subject cache.

Two encoders:

* **AVE** (:func:`ave_features`): the audio branch of an :class:`~synctalk.audio.ave.AVE` on
  each frame's centred mel window (:func:`synctalk.audio.mel.frame_windows`) → ``[N, 512]``.
  Features are the branch's raw (non-negative, **unnormalised**) output, as SyncTalk's
  ``aud_ave.npy``; pass ``normalize=True`` for the unit-length embeddings the sync loss
  compares. AVEs trained here standardise each mel band over the clip first
  (``meta["inputs"]["mel"] == "clip"``); imported SyncTalk/Wav2Lip encoders take raw mel.
* **HuBERT / wav2vec2** (:func:`hf_features`) via ``transformers`` from a local directory:
  ``last_hidden_state`` at the model's frame rate (50 Hz: one frame per 320 samples, frame
  ``k`` at ``k·0.02`` s) is sampled at two instants per video frame, ``(2t + j) / (2·fps)`` s
  for ``j = 0, 1``, by linear interpolation → ``[N, 2, D]`` (D = 1024 for HuBERT-large). At
  25 fps that is exactly frames ``2t`` and ``2t+1``, the ER-NeRF/SyncTalk layout. Long audio
  runs in chunks (:data:`CHUNK_S` s plus :data:`CONTEXT_S` s of context each side, whose
  outputs are discarded).

Subject cache (:func:`subject_features`): ``<subject>/audio_features/<encoder-id>.npy`` with a
``.json`` beside it recording the encoder id, the sha256 of ``audio.wav``, fps and frame count.
The encoder id hashes the AVE's :meth:`~synctalk.audio.ave.AVE.identity` and input convention,
or the bytes of every file of the HF model directory, so a changed encoder (or audio) never
reuses stale features.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synctalk.audio import mel as M
from synctalk.audio.ave import AVE, EMBED_DIM
from synctalk.audio.dataset import InputSpec, mel_band_stats, subject_info
from synctalk.errors import InputError, ModelFileError
from synctalk.fsutil import atomic_path, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

#: Seconds of audio per HF model call, and of context added each side of a chunk.
CHUNK_S = 30.0
CONTEXT_S = 1.0
#: Subdirectory of a subject that holds cached features.
FEATURE_DIR = "audio_features"


def _audio_16k(audio: np.ndarray | torch.Tensor, sr: int) -> np.ndarray:
    """Mono 16 kHz float32, at least one mel window long, finite (else InputError)."""
    x = M.to_mono_16k(audio, sr)
    if len(x) < M.MIN_SAMPLES:
        raise InputError(f"audio is {len(x) / M.SAMPLE_RATE:.3f} s long; at least "
                         f"{M.MIN_SAMPLES / M.SAMPLE_RATE:.1f} s is needed for one feature window.")
    return x


def _check_frames(fps: float, n_frames: int) -> None:
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps}")
    if n_frames < 1:
        raise InputError(f"n_frames must be ≥ 1, got {n_frames}")


@torch.no_grad()
def ave_features(audio: np.ndarray | torch.Tensor, fps: float, n_frames: int, ave: AVE, *,
                 sr: int = M.SAMPLE_RATE, mel_norm: str = "raw",
                 mel_stats: tuple[np.ndarray, np.ndarray] | None = None, normalize: bool = False,
                 batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """AVE audio features, one per video frame.

    Args:
        audio: ``[n]`` or ``[n, channels]`` samples at ``sr`` Hz; sample 0 is heard with frame 0.
        fps: video frame rate.
        n_frames: number of frames; frames past the end of the audio repeat the last window.
        ave: the encoder (its audio branch is used).
        mel_norm: the AVE's mel convention (``InputSpec.from_meta(meta).mel``): ``"raw"``, or
            ``"clip"`` to standardise each mel band with ``mel_stats``, by default those of
            this audio.
        mel_stats: ``(mean [80], std [80])`` to standardise with (see
            :func:`~synctalk.audio.dataset.mel_band_stats`); streaming uses fixed ones.
        normalize: return unit-length embeddings instead of the raw branch output.

    Returns:
        ``[n_frames, 512]`` float32 on the CPU.

    Raises:
        InputError: empty, non-finite or shorter-than-200 ms audio; bad fps/n_frames.
    """
    _check_frames(fps, n_frames)
    InputSpec(mel=mel_norm)  # validates the name
    mel = M.melspectrogram(_audio_16k(audio, sr))
    windows = M.frame_windows(mel, n_frames, fps)  # [N, 1, 80, 16]
    if mel_norm == "clip":
        mean, std = mel_stats if mel_stats is not None else mel_band_stats(mel)
        windows = (windows - torch.as_tensor(mean)[:, None]) / torch.as_tensor(std)[:, None]
    return embed_windows(ave, windows, normalize=normalize, batch_size=batch_size, device=device)


@torch.no_grad()
def embed_windows(ave: AVE, windows: torch.Tensor, *, normalize: bool = False,
                  batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[B, 1, 80, 16]`` (already normalised) mel windows → ``[B, 512]`` float32 CPU features."""
    ave = ave.to(device).eval()
    out = torch.empty(len(windows), EMBED_DIM)
    for i in range(0, len(windows), batch_size):
        y = ave.audio(windows[i:i + batch_size].to(device)).flatten(1).float()
        out[i:i + batch_size] = (F.normalize(y, dim=1) if normalize else y).cpu()
    return out


# ---------------------------------------------------------------- HuBERT / wav2vec2

@dataclass
class HFAudioModel:
    """A HuBERT/wav2vec2-style model loaded from a local directory.

    Attributes:
        model: the ``transformers`` model (eval mode).
        do_normalize: standardise the waveform first (the feature extractor's setting).
        kernels, strides: the convolutional front-end, for output lengths.
        encoder_id: ``hf-<model_type>-<16 hex>``, from the sha256 of the directory's files.
        path: the directory.
    """

    model: torch.nn.Module
    do_normalize: bool
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    encoder_id: str
    path: Path

    @property
    def hop(self) -> int:
        """Samples between output frames (320 for HuBERT/wav2vec2: 50 Hz)."""
        return math.prod(self.strides)

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame of the convolutional front-end (400)."""
        rf = 1
        for k, s in zip(reversed(self.kernels), reversed(self.strides)):
            rf = (rf - 1) * s + k
        return rf

    def n_out(self, n_samples: int) -> int:
        """Output frames for ``n_samples`` input samples."""
        n = n_samples
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return max(n, 0)


def directory_sha256(path) -> str:
    """sha256 over the names and contents of every file under ``path`` (sorted, recursive)."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\n{sha256_file(f)}\n".encode())
    return h.hexdigest()


def load_hf_model(path, *, allow_hub: bool = False,
                  device: torch.device | str = "cpu") -> HFAudioModel:
    """Load a HuBERT/wav2vec2-style model with ``AutoModel`` from a local directory.

    Args:
        path: directory written by ``save_pretrained`` (``config.json`` + weights, and
            ``preprocessor_config.json`` when the model expects a normalised waveform).
        allow_hub: treat a ``path`` that is not a directory as a Hugging Face Hub repo id and
            download it (``huggingface_hub.snapshot_download``); never done otherwise.

    Raises:
        InputError: not a directory (and no ``allow_hub``), or ``transformers`` missing.
        ModelFileError: the directory holds no loadable audio model.
    """
    try:
        from transformers import AutoFeatureExtractor, AutoModel
    except ImportError as e:
        raise InputError("HuBERT/wav2vec2 features need the `transformers` package: "
                         "pip install transformers") from e
    local = Path(path).expanduser()
    if not local.is_dir():
        if not allow_hub:
            raise InputError(f"--audio-model {path}: no such directory. Give a local model "
                             "directory (save_pretrained layout), or pass --hub to download "
                             "this Hugging Face repo id.")
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(str(path)))
    try:
        model = AutoModel.from_pretrained(str(local), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFileError(f"cannot load an audio model from {local}: {e}") from e
    cfg = model.config
    if not (hasattr(cfg, "conv_kernel") and hasattr(cfg, "conv_stride")):
        raise ModelFileError(f"{local} holds a {cfg.model_type!r} model, not a HuBERT/wav2vec2-"
                             "style speech encoder (no convolutional waveform front-end).")
    do_normalize = False
    if (local / "preprocessor_config.json").is_file():
        extractor = AutoFeatureExtractor.from_pretrained(str(local), local_files_only=True)
        if getattr(extractor, "sampling_rate", M.SAMPLE_RATE) != M.SAMPLE_RATE:
            raise ModelFileError(f"{local} expects {extractor.sampling_rate} Hz audio; "
                                 f"only {M.SAMPLE_RATE} Hz models are supported.")
        do_normalize = bool(getattr(extractor, "do_normalize", False))
    else:
        log.warning("%s has no preprocessor_config.json; feeding the waveform un-normalised", local)
    return HFAudioModel(model.to(device).eval(), do_normalize, tuple(cfg.conv_kernel),
                        tuple(cfg.conv_stride),
                        f"hf-{cfg.model_type}-{directory_sha256(local)[:16]}", local)


@torch.no_grad()
def hf_features(audio: np.ndarray | torch.Tensor, fps: float, n_frames: int, hf: HFAudioModel, *,
                sr: int = M.SAMPLE_RATE, chunk_s: float = CHUNK_S, context_s: float = CONTEXT_S,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """HuBERT/wav2vec2 ``last_hidden_state``, two steps per video frame (module docstring).

    Args:
        audio: ``[n]`` or ``[n, channels]`` samples at ``sr`` Hz; sample 0 is heard with frame 0.
        fps, n_frames: the video's frame rate and frame count (frames past the end of the
            audio repeat the last model frame).
        chunk_s, context_s: chunking of long audio.

    Returns:
        ``[n_frames, 2, D]`` float32 on the CPU.
    """
    _check_frames(fps, n_frames)
    x = torch.from_numpy(_audio_16k(audio, sr)).double()
    if hf.do_normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, whole utterance
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    x = x.float()
    hop, rf = hf.hop, hf.receptive_field
    total = hf.n_out(len(x))
    per_chunk = max(1, int(chunk_s * M.SAMPLE_RATE) // hop)
    context = int(math.ceil(context_s * M.SAMPLE_RATE / hop))
    model = hf.model.to(device)
    hidden: torch.Tensor | None = None
    for k0 in range(0, total, per_chunk):
        k1 = min(total, k0 + per_chunk)
        first = max(0, k0 - context)
        a, b = first * hop, min(len(x), (k1 + context - 1) * hop + rf)
        h = model(x[a:b][None].to(device)).last_hidden_state[0].float().cpu()  # [L, D]
        if hidden is None:
            hidden = torch.empty(total, h.shape[1])
        hidden[k0:k1] = h[k0 - first:k1 - first]
    # sample at (2t + j) / (2 fps) s, i.e. model frame q = time · 16000 / hop
    times = torch.arange(2 * n_frames, dtype=torch.float64) / (2.0 * fps)
    q = (times * M.SAMPLE_RATE / hop).clamp(0, total - 1)
    lo = q.floor().long()
    hi = (lo + 1).clamp(max=total - 1)
    w = (q - lo).float()[:, None]
    out = hidden[lo] * (1 - w) + hidden[hi] * w
    return out.reshape(n_frames, 2, -1)


# ---------------------------------------------------------------- subject cache

def ave_encoder_id(ave: AVE, spec: InputSpec) -> str:
    """``ave-<16 hex>``: hash of the AVE's identity and its mel input convention."""
    return "ave-" + hashlib.sha256(f"{ave.identity()}:mel={spec.mel}".encode()).hexdigest()[:16]


def subject_features(subject, *, ave: AVE | None = None, ave_meta: dict | None = None,
                     hf: HFAudioModel | None = None, force: bool = False,
                     device: torch.device | str = "cpu") -> tuple[Path, np.ndarray, bool]:
    """Compute, or read from the cache, a subject's audio features.

    Exactly one of ``ave`` (with its file's ``ave_meta``) and ``hf`` is given.

    Returns:
        ``(path, features, cached)``: the ``.npy`` (``[N, 512]`` AVE or ``[N, 2, D]`` HF,
        float32), the array, and whether it came from the cache.
    """
    from synctalk.media import read_audio

    if (ave is None) == (hf is None):
        raise InputError("give exactly one audio encoder: --ave AVE.pt or --audio-model DIR")
    subject = Path(subject)
    n_frames, fps = subject_info(subject)
    wav = subject / "audio.wav"
    if not wav.is_file():
        raise InputError(f"{subject} has no audio.wav — re-run `synctalk prep`.")
    spec = InputSpec.from_meta(ave_meta or {}) if ave is not None else None
    encoder_id = ave_encoder_id(ave, spec) if ave is not None else hf.encoder_id
    out = subject / FEATURE_DIR / f"{encoder_id}.npy"
    sidecar = out.with_suffix(".json")
    record: dict[str, Any] = {"encoder": encoder_id, "audio_sha256": sha256_file(wav),
                              "fps": fps, "n_frames": n_frames}
    if not force and out.is_file() and sidecar.is_file():
        try:
            saved = json.loads(sidecar.read_text())
        except ValueError:
            saved = {}
        if all(saved.get(k) == v for k, v in record.items()):
            return out, np.load(out), True
    audio = read_audio(wav, M.SAMPLE_RATE)
    if ave is not None:
        feats = ave_features(audio, fps, n_frames, ave, mel_norm=spec.mel, device=device)
        record.update(kind="ave", layout="[N, 512] raw audio-branch output, one per frame")
    else:
        feats = hf_features(audio, fps, n_frames, hf, device=device)
        record.update(kind="hf", model=str(hf.path),
                      layout=f"[N, 2, {feats.shape[-1]}] last_hidden_state at (2t + j) / (2 fps) s")
    arr = feats.numpy().astype(np.float32)
    out.parent.mkdir(exist_ok=True)
    with atomic_path(out) as tmp:
        np.save(tmp, arr)
    record["shape"] = list(arr.shape)
    write_json_atomic(sidecar, record)
    return out, arr, False


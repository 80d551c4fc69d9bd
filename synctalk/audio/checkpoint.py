"""Import published lip-sync expert checkpoints as :class:`~synctalk.audio.ave.AVE` models.

Recognised files (loaded with ``torch.load(map_location="cpu", weights_only=True)``):

* SyncTalk ``audio_visual_encoder.pth``: a bare state dict of the 13-block audio encoder,
  keys ``0.conv_block.0.weight`` … ``12.conv_block.1.num_batches_tracked``. Audio branch
  only: the face branch keeps its (seeded) random initialisation and ``meta["has_face"]`` is
  False.
* Wav2Lip ``lipsync_expert.pth``: ``{"state_dict": {...}, ...}`` whose state dict holds
  ``audio_encoder.*`` (14 blocks) and ``face_encoder.*`` (17 blocks), possibly with the
  ``module.`` prefix ``nn.DataParallel`` adds. Other top-level entries (optimizer state,
  ``global_step``) are ignored.

A ``module.`` key prefix is dropped in either format. Every key and shape is checked;
anything missing, extra or misshapen is refused.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synctalk.audio.ave import AVE, FORMAT, SYNCTALK, WAV2LIP, state_dict_problems
from synctalk.errors import ModelFileError, require_file
from synctalk.fsutil import sha256_file

#: Human-readable name of each recognised source format.
SOURCE_FORMATS = {
    SYNCTALK: "SyncTalk audio_visual_encoder.pth",
    WAV2LIP: "Wav2Lip lipsync_expert.pth",
}
UNREADABLE = ("it is not a torch.save file, is damaged, or holds objects other than tensors "
              "and plain containers")
ACCEPTED = ("accepted: SyncTalk audio_visual_encoder.pth (a bare state dict with keys "
            "0.conv_block.0.weight … 12.conv_block.1.*) or Wav2Lip lipsync_expert.pth "
            "({'state_dict': {'audio_encoder.*', 'face_encoder.*'}}, 'module.' prefix allowed).")


def import_checkpoint(path) -> tuple[AVE, dict[str, Any]]:
    """Load a SyncTalk or Wav2Lip lip-sync expert checkpoint.

    Returns:
        ``(model, meta)``: the AVE on the CPU in eval mode, and
        ``{"source_format": "synctalk" | "wav2lip", "source_file", "source_sha256",
        "audio_layout", "has_face"}`` plus ``"global_step"`` when a Wav2Lip file records it.

    Raises:
        InputError: ``path`` is missing. ModelFileError: unreadable, not a torch file, or
        not exactly one of the recognised layouts (the message names the first offending keys).
    """
    path = require_file(path, "AVE checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-torch or damaged files
        raise ModelFileError(f"cannot read {path} as a PyTorch checkpoint: {UNREADABLE} "
                             f"({type(e).__name__}) — {ACCEPTED}") from e
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        raise ModelFileError(f"{path} is already a {FORMAT} file; use it directly, no import needed.")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        model, meta = _from_wav2lip(path, obj)
    elif isinstance(obj, Mapping) and obj and all(_leading_index(k) for k in _strip_module(obj)):
        model, meta = _from_synctalk(path, obj)
    else:
        raise ModelFileError(f"{path} is not a recognised lip-sync expert checkpoint "
                             f"({_describe(obj)}) — {ACCEPTED}")
    meta.update(source_file=path.name, source_sha256=sha256_file(path),
                audio_layout=model.audio_layout)
    return model.eval(), meta


def _from_synctalk(path: Path, state: Mapping[str, Any]) -> tuple[AVE, dict[str, Any]]:
    model = AVE(SYNCTALK)
    _load_exact(path, SYNCTALK, model.audio, _strip_module(state))
    return model, {"source_format": SYNCTALK, "has_face": False}


def _from_wav2lip(path: Path, obj: Mapping[str, Any]) -> tuple[AVE, dict[str, Any]]:
    model = AVE(WAV2LIP)
    # A container whose state-dict keys are Wav2Lip's; loading it fills model.audio/.face.
    expected = nn.ModuleDict({"audio_encoder": model.audio, "face_encoder": model.face})
    _load_exact(path, WAV2LIP, expected, _strip_module(obj["state_dict"]))
    meta: dict[str, Any] = {"source_format": WAV2LIP, "has_face": True}
    if isinstance(obj.get("global_step"), int):
        meta["global_step"] = obj["global_step"]
    return model, meta


def _load_exact(path: Path, fmt: str, module: nn.Module, state: Mapping[str, Any]) -> None:
    problems = state_dict_problems(module, state)
    if problems:
        raise ModelFileError(f"{path} looks like a {SOURCE_FORMATS[fmt]} but does not match its "
                             f"architecture: {'; '.join(problems)} — {ACCEPTED}")
    module.load_state_dict(state)


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` puts on every key."""
    return {(k.removeprefix("module.") if isinstance(k, str) else k): v for k, v in state.items()}


def _leading_index(key: Any) -> bool:
    return isinstance(key, str) and key.split(".", 1)[0].isdigit()


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:3]]
        more = f", … ({len(obj)} in all)" if len(obj) > 3 else ""
        return f"a dict with keys {', '.join(keys)}{more}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"

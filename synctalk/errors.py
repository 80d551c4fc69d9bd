"""User-facing errors.

Every error a user can cause (a bad path, a file that is not what it should be, a
missing model file) is a :class:`SyncTalkError`. The CLI prints its message — which
says what was wrong and what to do — without a traceback and exits with status 2.
"""
from __future__ import annotations


class SyncTalkError(Exception):
    """Base class of errors caused by the user's input or environment."""

    exit_code = 2


class InputError(SyncTalkError):
    """An input file or directory is missing, unreadable or of the wrong kind."""


class MediaError(SyncTalkError):
    """Audio or video could not be decoded or encoded."""


class ModelFileError(SyncTalkError):
    """A model file (e.g. ``face_landmarker.task``) is missing or corrupt."""


class OutputError(SyncTalkError):
    """An output location cannot be written (missing parent, not writable, disk full)."""


def require_file(path, what: str = "input file"):
    """Return ``path`` as a :class:`pathlib.Path` if it is a readable file, else raise.

    Args:
        path: file path (str or Path).
        what: noun used in the message, e.g. ``"audio file"``.
    """
    import os
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} not found: {p} — check the path.")
    if not p.is_file():
        raise InputError(f"{what} is not a file: {p}")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} is not readable: {p} — check its permissions.")
    return p

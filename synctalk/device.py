"""Torch devices named on the command line (``--device cpu|cuda|cuda:N``)."""
from __future__ import annotations

import torch

from synctalk.errors import InputError


def torch_device(name: str | torch.device) -> torch.device:
    """``name`` as a :class:`torch.device`, checked.

    Raises:
        InputError: an unknown device name, or a CUDA device this torch cannot reach.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"--device {name!r} is not a torch device; use cpu or cuda.") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this torch has no CUDA device; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return dev

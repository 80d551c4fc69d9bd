"""Step "splits": train/val frame lists. As in SyncTalk the last 1/11 of the clip is the
validation set (configurable); frames not usable for training (``track.npz`` ``valid``)
are left out of both."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.errors import InputError
from synctalk.fsutil import write_json_atomic

DEFAULT_PARAMS = {"val_fraction": 1.0 / 11.0}


def make_splits(valid: np.ndarray, val_fraction: float) -> dict[str, list[int]]:
    """Split frame indices ``[0, N)``: the last ``val_fraction`` of the clip is val."""
    n = len(valid)
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise InputError(f"val fraction {val_fraction} leaves no train or no val frames of {n}")
    idx = np.flatnonzero(valid)
    return {"train": [int(i) for i in idx if i < n - n_val],
            "val": [int(i) for i in idx if i >= n - n_val]}


def run(subject: Path, params: dict) -> dict:
    valid = np.load(Path(subject) / "track.npz")["valid"]
    splits = make_splits(valid, params["val_fraction"])
    write_json_atomic(Path(subject) / "splits.json", splits, indent=None)
    return {"train": len(splits["train"]), "val": len(splits["val"]),
            "unusable": int((~valid).sum())}

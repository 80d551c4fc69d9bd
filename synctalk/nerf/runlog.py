"""Training log: JSON lines in ``MODEL/log.jsonl`` and, when it imports, TensorBoard."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class RunLog:
    """Append one JSON object per record to ``log.jsonl`` (flushed at once, so a killed run
    keeps its log); numeric values also go to TensorBoard (``MODEL/tb/``) when
    ``torch.utils.tensorboard`` is importable."""

    def __init__(self, model_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(model_dir) / "log.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(model_dir) / "tb"))
            except Exception:  # tensorboard not installed: JSON lines only
                self._tb = None

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()
        if self._tb is not None and "step" in record:
            prefix = str(record.get("stage", "train"))
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{prefix}/{k}", v, int(record["step"]))

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()

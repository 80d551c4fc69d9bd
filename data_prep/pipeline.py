"""``synctalk prep``: one talking-head video → a subject directory (see data_prep.subject).

Steps run in order and each is skipped when its inputs and parameters are unchanged, so
an interrupted run (Ctrl-C, SIGTERM) resumes at the first unfinished step. A run that
fails on bad input removes the subject directory it created: nothing half-made is left.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_prep import (audio_features, blendshapes, ingest, report, segment, splits, stabilize,
                       track)
from data_prep.subject import MANIFEST, Manifest, Step, run_steps, sigterm_as_interrupt
from synctalk.errors import InputError, OutputError, SyncTalkError, require_file
from synctalk.fsutil import sha256_file

log = logging.getLogger(__name__)


@dataclass
class PrepOptions:
    """Options of ``synctalk prep`` (see its ``--help``)."""

    fps: float = 25.0
    size: int = 512
    auto_crop: bool = True
    force: bool = False
    face_landmarker: str | None = None
    selfie_segmenter: str | None = None
    val_fraction: float = 1.0 / 11.0
    blendshape_names: list[str] = field(default_factory=lambda: list(blendshapes.DEFAULT_TRAIN_NAMES))
    max_seconds: float | None = None
    ave: str | None = None
    ave_budget: float | None = None


def build_steps(video: Path, opts: PrepOptions, face_model: Path) -> list[Step]:
    """The prep steps with their parameters (everything that changes their outputs)."""
    model = str(face_model)
    ingest_params = {**ingest.DEFAULT_PARAMS, "source": str(video), "fps": opts.fps,
                     "size": opts.size, "auto_crop": opts.auto_crop, "face_landmarker": model}
    if opts.max_seconds is not None:
        ingest_params["max_seconds"] = opts.max_seconds
    audio_params = {**audio_features.DEFAULT_PARAMS, "budget_seconds": opts.ave_budget}
    if opts.ave is not None:
        given = require_file(opts.ave, "--ave encoder file")
        audio_params.update(ave=str(given.resolve()), ave_sha256=sha256_file(given),
                            budget_seconds=None)
    return [
        Step("ingest", ingest.run, ingest_params),
        Step("track", track.run, {**track.DEFAULT_PARAMS, "face_landmarker": model}, ("ingest",)),
        Step("segment", segment.run, {**segment.DEFAULT_PARAMS, "selfie_segmenter": opts.selfie_segmenter},
             ("ingest", "track")),
        Step("stabilize", stabilize.run, dict(stabilize.DEFAULT_PARAMS), ("ingest", "track")),
        Step("blendshapes", blendshapes.run, {**blendshapes.DEFAULT_PARAMS,
                                             "train_names": list(opts.blendshape_names)}, ("track",)),
        Step("splits", splits.run, {**splits.DEFAULT_PARAMS, "val_fraction": opts.val_fraction},
             ("track",)),
        Step("audio", audio_features.run, audio_params, ("ingest", "track")),
        Step("report", report.run, dict(report.DEFAULT_PARAMS),
             ("ingest", "track", "segment", "stabilize", "blendshapes", "splits", "audio")),
    ]


def _claim_output(out: Path, sha: str, force: bool) -> tuple[Manifest | None, bool]:
    """Check ``out`` may hold this subject. Returns (existing manifest, created-now)."""
    if not out.parent.is_dir():
        raise OutputError(f"parent directory of {out} does not exist — create it first.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory.")
    existing = Manifest.load(out) if out.is_dir() else None
    nonempty = out.is_dir() and any(out.iterdir())
    if nonempty and (existing is None or existing.data["source"].get("sha256") != sha):
        what = "a different subject" if existing else "files that are not a subject directory"
        if not force:
            raise InputError(f"{out} already holds {what}; choose another --out or pass --force "
                             "to replace it.")
        shutil.rmtree(out)
        existing = None
    created = not out.exists()
    out.mkdir(exist_ok=True)
    return existing, created


def prep(video, out, opts: PrepOptions | None = None) -> dict:
    """Run (or resume) prep of ``video`` into the subject directory ``out``.

    Returns:
        ``{"subject": path, "steps": {name: {"skipped", "seconds", "info"}}, "seconds": total}``.
    """
    from synctalk.models import resolve_face_landmarker

    opts = opts or PrepOptions()
    video = require_file(video, "video")
    out = Path(out)
    t0 = time.perf_counter()
    probe = ingest.probe_video(video)  # fails early on no video/audio stream
    if opts.ave is not None:
        require_file(opts.ave, "--ave encoder file")
    if opts.ave_budget is not None and not opts.ave_budget > 0:
        raise InputError(f"--ave-budget must be a positive number of seconds, "
                         f"got {opts.ave_budget}")
    face_model = resolve_face_landmarker(opts.face_landmarker)
    sha = sha256_file(video)
    existing, created = _claim_output(out, sha, opts.force)
    try:
        manifest = existing or Manifest.create(out, {"path": str(video.resolve()), "sha256": sha, **probe})
        with sigterm_as_interrupt():
            results = run_steps(manifest, build_steps(video, opts, face_model),
                                on_step=lambda name: log.info("prep: %s ...", name))
    except SyncTalkError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    except KeyboardInterrupt:
        if created and not (out / MANIFEST).is_file():
            shutil.rmtree(out, ignore_errors=True)
        log.warning("prep interrupted; finished steps are kept — run the same command to resume.")
        raise
    return {"subject": str(out), "steps": results, "seconds": time.perf_counter() - t0}

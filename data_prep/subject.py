"""The subject directory: layout, manifest and resumable steps.

A subject directory is everything training needs, made from one video by ``synctalk prep``.
All per-frame data is indexed by the frame number ``i`` of the *resampled* clip
(``fps`` in the manifest); frame ``i`` is at time ``i / fps`` s and audio sample
``round(i / fps · 16000)`` of ``audio.wav`` is heard with it.

Layout (paths relative to the subject directory; shapes use N = number of frames,
S = crop side in pixels):

=========================  =================================================================
``manifest.json``          format, source video (path, sha256, fps, size, audio start), crop box
                           in source pixels, per-step status/params/timing, tool versions
``frames/%06d.jpg``        cropped RGB frames, S×S
``audio.wav``              16 kHz mono PCM, aligned with frame 0
``track.npz``              ``landmarks [N,478,3]`` float32 (x, y px of the crop, z width-scaled),
                           ``blendshapes [N,52]``, ``blendshape_names [52]``, ``matrices [N,4,4]``
                           (MediaPipe facial transformation), ``detected [N]`` bool (face found
                           in that frame), ``valid [N]`` bool (usable for training: detected or
                           interpolated across a gap ≤ 5 frames)
``background.png``         S×S RGB background plate
``background_seen.png``    S×S uint8 0/255: plate pixels actually seen (the rest is inpainted)
``masks/%06d.png``         uint8 label map: 0 background, 1 head (face + hair), 2 neck, 3 torso
``face_masks/%06d.png``    uint8 0/255: skin, brows, eyes, nose, lips (no hair, ears, neck)
``torso/%06d.png``         RGBA torso image: head removed and the gap filled
``targets/%06d.jpg``       training target: the frame with its background replaced by the plate
``mouth_boxes.npy``        ``[N, 4]`` int32 ``x0, y0, x1, y1`` px
``poses.npz``              ``c2w [N,4,4]`` camera-to-world (OpenCV camera, head-centred world,
                           unit documented in the file's ``unit`` entry), ``intrinsics [3,3]``
                           px, ``residual_px [N]``, plus BA tracks for inspection
``blendshapes.npz``        ``scores [N,52]`` Savitzky–Golay smoothed, ``names [52]``
``splits.json``            ``{"train": [...], "val": [...]}`` frame indices
``ave.pt``                 the audio-visual encoder used for the audio features (step ``audio``)
``audio_features/``        ``<encoder-id>.npy`` ``[N, 512]`` float32 per-frame audio features
                           (+ ``.json``), see :mod:`data_prep.audio_features`
``preview.mp4``, ``report.json``, ``report.md``
=========================  =================================================================
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from synctalk import __version__
from synctalk.errors import InputError
from synctalk.fsutil import write_json_atomic

log = logging.getLogger(__name__)

SUBJECT_FORMAT = "synctalk-subject/1"
MANIFEST = "manifest.json"
FRAME_PATTERN = "%06d"


def frame_name(i: int, ext: str) -> str:
    """File name of per-frame data for frame ``i``, e.g. ``000042.jpg``."""
    return f"{FRAME_PATTERN % i}.{ext}"


class Manifest:
    """``manifest.json`` of a subject directory, saved atomically after every change."""

    def __init__(self, root: Path, data: dict) -> None:
        self.root = Path(root)
        self.data = data

    @classmethod
    def load(cls, root) -> "Manifest | None":
        path = Path(root) / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{path} is not a readable subject manifest ({e}); "
                             "re-run prep with --force to rebuild the subject.") from e
        if data.get("format") != SUBJECT_FORMAT:
            raise InputError(f"{path} has format {data.get('format')!r}, expected {SUBJECT_FORMAT!r}.")
        return cls(root, data)

    @classmethod
    def create(cls, root, source: dict) -> "Manifest":
        m = cls(root, {"format": SUBJECT_FORMAT, "synctalk": __version__, "source": source,
                       "steps": {}, "tools": tool_versions()})
        m.save()
        return m

    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST, self.data)

    def step(self, name: str) -> dict | None:
        return self.data["steps"].get(name)

    def finish_step(self, name: str, key: str, params: dict, seconds: float, info: dict,
                    cpu_seconds: float | None = None) -> None:
        """Record step ``name`` as done: its key, parameters, wall ``seconds``, ``info`` and
        (when measured) ``cpu_seconds``, the CPU time of this process's threads in it."""
        rec = {"status": "done", "key": key, "params": params, "seconds": round(seconds, 3),
               "info": info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if cpu_seconds is not None:
            rec["cpu_seconds"] = round(cpu_seconds, 3)
        self.data["steps"][name] = rec
        self.data["tools"] = tool_versions()
        self.save()


def tool_versions() -> dict:
    """Versions of the tools whose output a subject directory depends on."""
    import cv2
    import numpy
    import scipy

    out = {"synctalk": __version__, "opencv": cv2.__version__, "numpy": numpy.__version__,
           "scipy": scipy.__version__}
    try:
        import mediapipe

        out["mediapipe"] = mediapipe.__version__
    except ImportError:
        pass
    return out


def params_from_dict(cls, params: dict | None, step: str):
    """Build the parameter dataclass ``cls`` of ``step`` from a (partial) dict;
    unknown keys are an :class:`InputError` naming the known ones."""
    from dataclasses import fields

    params = dict(params or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise InputError(f"unknown {step} parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(names))}")
    return cls(**params)


@dataclass
class Step:
    """One resumable preprocessing step.

    Attributes:
        name: key in the manifest, e.g. ``"track"``.
        run: ``run(subject_dir, params) -> info`` writes the step's outputs (each atomically)
            and returns a small JSON-able summary for the manifest and report.
        params: everything that changes the step's output.
        deps: names of steps whose outputs this one reads.
    """

    name: str
    run: Callable[[Path, dict], dict]
    params: dict
    deps: tuple[str, ...] = ()


def step_key(step: Step, manifest: Manifest) -> str:
    """Hash of the step's parameters, its dependencies' keys and the source video."""
    h = hashlib.sha256()
    h.update(json.dumps(step.params, sort_keys=True, default=str).encode())
    h.update(manifest.data["source"].get("sha256", "").encode())
    for dep in step.deps:
        dep_rec = manifest.step(dep)
        h.update((dep_rec or {}).get("key", "missing").encode())
    return h.hexdigest()[:16]


def run_steps(manifest: Manifest, steps: list[Step], *, on_step=None) -> dict[str, dict]:
    """Run ``steps`` in order, skipping any whose key is unchanged since it last finished.

    A step finished in the manifest is only recorded after all its outputs exist, so an
    interrupted run resumes at the first unfinished step.

    Returns:
        ``{step name: {"skipped": bool, "seconds": float, "info": dict}}``.
    """
    results = {}
    for step in steps:
        key = step_key(step, manifest)
        rec = manifest.step(step.name)
        if rec and rec.get("status") == "done" and rec.get("key") == key:
            log.info("prep: %-10s up to date (skipped)", step.name)
            results[step.name] = {"skipped": True, "seconds": 0.0, "info": rec.get("info", {})}
            continue
        if on_step:
            on_step(step.name)
        t, cpu = time.perf_counter(), time.process_time()
        info = step.run(manifest.root, step.params) or {}
        seconds = time.perf_counter() - t
        manifest.finish_step(step.name, key, step.params, seconds, info,
                             cpu_seconds=time.process_time() - cpu)
        log.info("prep: %-10s done in %.1f s", step.name, seconds)
        results[step.name] = {"skipped": False, "seconds": seconds, "info": info}
    return results


#: ``set/get_num_threads`` symbol pairs of the OpenBLAS builds numpy, scipy and OpenCV ship.
_OPENBLAS_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                     ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                     ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                     ("openblas_set_num_threads", "openblas_get_num_threads"))


def _loaded_openblas() -> list[tuple[Callable[[int], None], int]]:
    """``(set_num_threads, current count)`` of every OpenBLAS loaded in this process (read
    from ``/proc/self/maps``; none where that does not exist)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    found = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                found.append((setter, int(getter())))
                break
    return found


@contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` OpenBLAS threads in every OpenBLAS this process has loaded
    (numpy's, scipy's, OpenCV's), restoring the previous counts afterwards.

    The bundle adjustment does many small BLAS/LAPACK calls (stacked 6×3 products, banded
    triangular solves); with OpenBLAS's default of one thread per core they cost several
    times the CPU (its threads spin-wait), worst on a machine whose cores are busy.
    ``OPENBLAS_NUM_THREADS`` only acts before numpy is imported, so the count is set at run
    time (the libraries' ``*_set_num_threads``, as threadpoolctl does).
    """
    libs = _loaded_openblas()
    for setter, _ in libs:
        setter(n)
    try:
        yield
    finally:
        for setter, before in libs:
            setter(before)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C inside the block, so cleanup (temp files) runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)

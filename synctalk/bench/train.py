"""``synctalk bench train``: a full training step of a preset, native ops vs the torch reference.

Two modes, both on one prepared subject (``--subject DIR``, or a small synthetic subject
built once into the cache by :func:`synthetic_subject`, the same one the test suite's
``nerf_subject`` fixture uses):

**Step timing** (default). One :class:`~synctalk.nerf.trainer.Trainer` per backend
(``--backends``, default ``torch,native``) is built in this process from the same preset
(``--preset``, default ``demo``), subject and seed. Per stage (``--stages``, default
``head,lip``): ``--warmup`` untimed steps of each trainer, one occupancy-grid update each
(so that the timed steps march a pruned grid, as a run does after ``occ_warmup`` steps),
then ``--repeats`` rounds in which every trainer makes one step
(:meth:`Trainer.step <synctalk.nerf.trainer.Trainer.step>`: sampling, rendering, loss,
backward, optimiser), the backends interleaved (their order alternating between rounds)
so that both see the same load on a shared machine. The trainers' own occupancy updates
(every ``occ_update_every`` steps) run between the timed steps and are timed apart.
Reported per stage (with ``planned_iters``, the preset's steps of that stage) and backend:

* ``step_ms``: wall time of one step, ``median``/``min``/``mean`` over the repeats, and the
  medians of their first and second halves (apart when the cost still drifts);
* ``cpu_ms``: process CPU time of one step (all threads), ``median``/``min`` — steadier than
  the wall clock on a busy machine;
* ``occupancy_update_ms`` (median of the updates made, or null) and ``amortized_step_ms``
  = median step + that update ÷ ``occ_update_every``;
* ``samples_per_ray``, ``loss``, ``psnr``: means over the timed steps (the backends train
  the same model on the same rays, so these agree closely);
* ``op_calls``: how often each registered implementation of each hot op ran during the
  timed steps, per backend name — the proof that a step ran on the backend it is named for.

``ratio_vs_torch[b]`` is the speed-up ``torch / b`` of the medians (``median``), minima
(``min``), CPU-time medians (``cpu_median``) and amortized steps (``amortized``), exactly
the quotients of the reported figures (rounded to 3 decimals). Also: ``process_cpu_s`` and
``wall_s`` of the whole benchmark, trainer set-up seconds, and the 1-minute load average
at the start and the end (timings are only comparable at similar load).

**Parity** (``--parity ITERS``): the preset is trained to ``ITERS`` steps (split over the
stages in the preset's proportions; no time budget, no intermediate validation, same
seed) once with each backend, one after the other, and the final val PSNRs (full frame,
face mask, mouth box) are reported with their differences ``b − torch`` and whether
they are within ``PARITY_TOLERANCE_DB`` (issue 6: "a training run with ``--backend native``
reaches the same val PSNR ± 0.3 dB as ``--backend torch``"), plus each run's wall and CPU
seconds. Benchmarks report; they never assert.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from synctalk.device import torch_device
from synctalk.errors import InputError

#: Stages a step can be timed in (the torso stage's step does not use the hot ops).
TIMED_STAGES: tuple[str, ...] = ("head", "lip")
#: Issue 6's parity tolerance on the final val PSNR, dB.
PARITY_TOLERANCE_DB = 0.3
#: Settings of the synthetic subject (the ``nerf_subject`` test fixture's).
SYNTH_SECONDS, SYNTH_SIZE, SYNTH_SEED, SUBJECT_SIZE = 6.0, 160, 1, 128
#: Marker written last into a cached synthetic subject: present = complete.
_COMPLETE = ".complete"


# ----------------------------------------------------------------------------------------
# the synthetic subject


def build_synthetic_subject(root, face_landmarker=None, *, seconds: float = SYNTH_SECONDS,
                            synth_size: int = SYNTH_SIZE, size: int = SUBJECT_SIZE,
                            seed: int = SYNTH_SEED) -> Path:
    """Make a small prepared subject under ``root`` (created; its parent must exist):
    ``synth/`` (a ``synctalk synth`` clip of ``seconds`` s at ``synth_size``² px), ``ave_random.pt``
    (a random-weight slim AVE: no encoder training) and ``subject/`` (that clip prepped to
    ``size``² px with that AVE). Returns ``root / "subject"``.

    Args:
        face_landmarker: MediaPipe ``face_landmarker.task`` (None: prep resolves it).
    """
    import torch

    from data_prep.pipeline import PrepOptions, prep
    from synctalk.audio.ave import AVE, save_ave
    from synctalk.synth.generate import SynthOptions, generate

    root = Path(root)
    root.mkdir(exist_ok=True)
    generate(root / "synth", SynthOptions(seconds=seconds, size=synth_size, seed=seed))
    ave_path = root / "ave_random.pt"
    with torch.random.fork_rng(devices=[]):
        save_ave(ave_path, AVE(seed=0, width=0.125), {"inputs": {"face": "clip", "mel": "clip"}},
                 with_face=False)
    prep(root / "synth" / "clip.mp4", root / "subject",
         PrepOptions(size=size, face_landmarker=None if face_landmarker is None else str(face_landmarker),
                     ave=str(ave_path)))
    return root / "subject"


def synthetic_subject(face_landmarker=None) -> Path:
    """The :func:`build_synthetic_subject` subject cached in ``<cache_dir()>/bench/``, built on
    first use (about a minute); a build that did not finish is made again."""
    import sys

    from synctalk.fsutil import write_text_atomic
    from synctalk.models import cache_dir

    key = f"train_subject_{SYNTH_SECONDS:g}s_{SYNTH_SIZE}to{SUBJECT_SIZE}_seed{SYNTH_SEED}"
    root = cache_dir() / "bench" / key
    if (root / _COMPLETE).is_file():
        return root / "subject"
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    print(f"synctalk bench train: building the synthetic subject in {root} (once)", file=sys.stderr,
          flush=True)
    subject = build_synthetic_subject(root, face_landmarker)
    write_text_atomic(root / _COMPLETE, "ok\n")
    return subject


def _default_face_landmarker() -> Path | None:
    """The shared copy of ``face_landmarker.task`` when present (else prep resolves one)."""
    from synctalk.bench.prep import SHARED_DATA

    path = SHARED_DATA / "models" / "face_landmarker.task"
    return path if path.is_file() else None


# ----------------------------------------------------------------------------------------
# CLI


def register(actions) -> None:
    """Add ``bench train`` to the ``bench`` group."""
    from synctalk.cli import subcommand_parser_kwargs
    from synctalk.nerf.config import PRESETS

    p = actions.add_parser(
        "train", help="a full training step of a preset: native ops vs the torch reference",
        description="Time full training steps (head and lip stages) of a preset with the native "
                    "ops and with the torch reference in one process, on one subject and seed; or, "
                    "with --parity ITERS, train ITERS steps with each backend and compare the final "
                    "val PSNRs.", **subcommand_parser_kwargs())
    p.add_argument("--subject", default=None,
                   help="prepared subject directory (default: a small synthetic subject, built "
                        "once into the cache)")
    p.add_argument("--preset", default="demo", choices=PRESETS, help="training preset")
    p.add_argument("--backends", default="torch,native",
                   help="comma-separated op backends to compare (torch is the reference)")
    p.add_argument("--stages", default=",".join(TIMED_STAGES),
                   help="comma-separated stages to time (of: " + ", ".join(TIMED_STAGES) + ")")
    p.add_argument("--warmup", type=int, default=40,
                   help="untimed steps per stage and backend (a fresh model's first steps are "
                        "slower: it is dense everywhere until the occupancy grid prunes it)")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per stage and backend")
    p.add_argument("--parity", type=int, default=None, metavar="ITERS",
                   help="instead of timing steps: train ITERS steps with each backend and report "
                        "the final val PSNRs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while training (default: the trainer's, 1 on CPU)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    p.add_argument("--size", type=int, default=None,
                   help="training size in px (default: the preset's, at most the subject's)")
    p.add_argument("--rays", type=int, default=None, help="rays per step (default: the preset's)")
    p.add_argument("--work-dir", default=None,
                   help="directory for the model directories (default: a temporary one, deleted)")
    p.add_argument("--face-landmarker", default=None,
                   help="face_landmarker.task for building the synthetic subject (default: the "
                        "shared copy, else resolved)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (a CUDA device synchronises around each step)")
    p.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.set_defaults(func=_main)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _main(args) -> int:
    from synctalk.fsutil import write_json_atomic

    common = dict(subject=args.subject, preset=args.preset, backends=_csv(args.backends),
                  threads=args.threads, seed=args.seed, size=args.size, rays=args.rays,
                  work_dir=args.work_dir, face_landmarker=args.face_landmarker, device=args.device)
    if args.parity is not None:
        result = run_parity(iters=args.parity, **common)
    else:
        result = run_bench(stages=_csv(args.stages), warmup=args.warmup, repeats=args.repeats, **common)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


# ----------------------------------------------------------------------------------------
# shared set-up


def _resolve_subject(subject, face_landmarker) -> tuple[Path, str]:
    """``(subject directory, "given" | "synthetic")``."""
    if subject is not None:
        path = Path(subject)
        if not path.is_dir():
            raise InputError(f"--subject {path} is not a directory; give a subject made by `synctalk prep`")
        return path, "given"
    lm = face_landmarker if face_landmarker is not None else _default_face_landmarker()
    return synthetic_subject(lm), "synthetic"


def _config(preset: str, subject: Path, *, seed, size, rays, overrides: dict | None):
    """The preset with the benchmark's changes: no time budget, the size capped at the
    subject's, ``seed`` / ``size`` / ``rays`` when given, then ``overrides``."""
    from synctalk.nerf.config import load_preset
    from synctalk.nerf.data import subject_identity

    cfg = load_preset(preset)
    subject_size = int(subject_identity(subject)["size"])
    changes: dict = {"time_budget": None,
                     "size": min(size or cfg.size or subject_size, subject_size)}
    if seed is not None:
        changes["seed"] = int(seed)
    if rays is not None:
        changes["rays_per_step"] = int(rays)
    changes.update(overrides or {})
    return cfg.replace(**changes)


def _check_backends(backends: list[str]) -> list[str]:
    from synctalk.ops.backend import available, loader_error

    if not backends:
        raise InputError("--backends is empty; give e.g. torch,native")
    names = list(dict.fromkeys(backends))
    if "torch" not in names:
        names.insert(0, "torch")  # the reference every ratio is taken against
    have = available("grid_encode")
    for b in names:
        if b not in have:
            why = loader_error(b)
            raise InputError(f"backend {b!r} is not available{f' ({why})' if why else ''}; available: "
                             f"{', '.join(have)} — `synctalk native build` shows why native is not")
    return names


@contextmanager
def _work_dir(path) -> Iterator[Path]:
    """``path`` (created) or a temporary directory deleted afterwards."""
    if path is not None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="synctalk-bench-train-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh(work: Path, name: str) -> Path:
    """``work/name``, which must not hold anything yet (a model directory)."""
    out = work / name
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; give --work-dir a new or empty directory")
    return out


class OpCallCounter:
    """Counts the calls of every registered implementation of every hot op, per backend
    name, while active (the registry entries are wrapped and restored afterwards)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}

    @contextmanager
    def active(self) -> Iterator["OpCallCounter"]:
        from synctalk.ops.backend import OPS, available, register_backend, resolve

        originals = []
        for op in OPS:
            for name in available(op):
                fn = resolve(op, name)
                originals.append((op, name, fn))
                register_backend(op, name, self._wrap(op, name, fn))
        try:
            yield self
        finally:
            for op, name, fn in originals:
                register_backend(op, name, fn)

    def _wrap(self, op: str, name: str, fn):
        counts = self.counts.setdefault(name, {})

        def counted(*args, **kwargs):
            counts[op] = counts.get(op, 0) + 1
            return fn(*args, **kwargs)

        return counted

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {b: dict(c) for b, c in self.counts.items()}

    def since(self, before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Calls made after ``before`` (a :meth:`snapshot`), backends/ops with none left out."""
        out: dict[str, dict[str, int]] = {}
        for b, c in self.counts.items():
            diff = {op: n - before.get(b, {}).get(op, 0) for op, n in c.items()}
            diff = {op: n for op, n in diff.items() if n}
            if diff:
                out[b] = diff
        return out


def _add_counts(total: dict, more: dict) -> None:
    for b, c in more.items():
        t = total.setdefault(b, {})
        for op, n in c.items():
            t[op] = t.get(op, 0) + n


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _machine(dev=None) -> dict:
    import torch

    from synctalk.ops.native import native_status

    cuda = dev is not None and dev.type == "cuda"
    return {"device": dev.type if dev is not None else "cpu",
            "device_name": torch.cuda.get_device_name(dev) if cuda else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "native": native_status()["detail"]}


def _config_json(cfg) -> dict:
    keys = ("size", "rays_per_step", "frames_per_step", "samples_per_ray", "train_prune", "grid_levels",
            "grid_features", "grid_base_res", "grid_max_res", "grid_log2_hashmap", "hidden_dim",
            "density_layers", "color_layers", "geo_dim", "occ_resolution", "occ_update_every",
            "occ_warmup", "lip_patch", "head_iters", "lip_iters", "torso_iters", "seed")
    return {k: getattr(cfg, k) for k in keys}


def _ms_stats(values: list[float]) -> dict:
    """median / min / mean, and the medians of the first and second half of the repeats (a
    difference says the step cost still drifts: more warm-up needed)."""
    half = max(1, len(values) // 2)
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "mean": round(statistics.fmean(values), 3),
            "median_first_half": round(statistics.median(values[:half]), 3),
            "median_second_half": round(statistics.median(values[half:] or values), 3)}


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded to 3 decimals (None when either is missing or b is 0)."""
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


# ----------------------------------------------------------------------------------------
# step timing


def run_bench(subject=None, *, preset: str = "demo", backends=("torch", "native"),
              stages=TIMED_STAGES, warmup: int = 40, repeats: int = 20, threads: int | None = None,
              seed: int | None = None, size: int | None = None, rays: int | None = None,
              work_dir=None, face_landmarker=None, overrides: dict | None = None,
              device: str = "cpu") -> dict:
    """Time training steps of every backend (module docstring); returns the JSON-ready result.

    Args:
        subject: prepared subject directory (None: the cached synthetic one).
        overrides: further :class:`~synctalk.nerf.config.TrainConfig` changes (tests).
    """
    from synctalk.nerf.trainer import Trainer

    stages = list(stages)
    bad = sorted(set(stages) - set(TIMED_STAGES))
    if bad or not stages:
        raise InputError(f"--stages must name some of {', '.join(TIMED_STAGES)}, got {','.join(stages)}")
    if repeats < 1 or warmup < 0:
        raise InputError("--repeats must be ≥ 1 and --warmup ≥ 0")
    names = _check_backends(list(backends))
    dev = torch_device(device)
    subject, kind = _resolve_subject(subject, face_landmarker)
    cfg = _config(preset, subject, seed=seed, size=size, rays=rays, overrides=overrides)
    wall0, cpu0, load0 = time.perf_counter(), time.process_time(), _load()
    result: dict = {"bench": "train", "mode": "steps", "preset": preset, "subject": str(subject),
                    "subject_kind": kind, **_machine(dev), "backends": names, "warmup": warmup,
                    "repeats": repeats, "config": _config_json(cfg)}
    counter = OpCallCounter()
    with _work_dir(work_dir) as work, counter.active():
        trainers: dict[str, Trainer] = {}
        setup_s = {}
        for b in names:
            t = time.perf_counter()
            trainers[b] = Trainer(subject, _fresh(work, f"model_{b}"), cfg, backend=b, progress=False,
                                  threads=threads, device=device)
            setup_s[b] = round(time.perf_counter() - t, 2)
        result["threads"] = trainers[names[0]].threads
        result["setup_s"] = setup_s
        result["stages"] = {s: _time_stage(s, trainers, counter, warmup, repeats, dev) for s in stages}
    result["process_cpu_s"] = round(time.process_time() - cpu0, 2)
    result["wall_s"] = round(time.perf_counter() - wall0, 2)
    result["load_avg_1min"] = {"start": load0, "end": _load()}
    return result


def _time_stage(stage: str, trainers: dict, counter: OpCallCounter, warmup: int, repeats: int,
                dev=None) -> dict:
    names = list(trainers)
    every = {b: tr.cfg.occ_update_every for b, tr in trainers.items()}
    for b, tr in trainers.items():
        for _ in range(warmup):
            tr.step(stage)
        tr.update_occupancy()  # the timed steps march a pruned grid, as after occ_warmup
    if dev is not None:
        _sync(dev)
    wall = {b: [] for b in names}
    cpu = {b: [] for b in names}
    occ = {b: [] for b in names}
    stats_acc = {b: {"samples_per_ray": 0.0, "loss": 0.0, "psnr": 0.0} for b in names}
    calls: dict[str, dict] = {b: {} for b in names}
    for r in range(repeats):
        for b in (names if r % 2 == 0 else names[::-1]):
            tr = trainers[b]
            before = counter.snapshot()
            t0, c0 = time.perf_counter(), time.process_time()
            stats = tr.step(stage)
            if dev is not None:
                _sync(dev)
            wall[b].append((time.perf_counter() - t0) * 1e3)
            cpu[b].append((time.process_time() - c0) * 1e3)
            _add_counts(calls[b], counter.since(before))
            for k in stats_acc[b]:
                stats_acc[b][k] += float(stats[k]) / repeats
            if tr.global_step % every[b] == 0:
                t0 = time.perf_counter()
                tr.update_occupancy()
                occ[b].append((time.perf_counter() - t0) * 1e3)
    entry: dict = {"planned_iters": getattr(trainers[names[0]].cfg, f"{stage}_iters"), "backends": {}}
    for b in names:
        step = _ms_stats(wall[b])
        occ_ms = round(statistics.median(occ[b]), 3) if occ[b] else None
        entry["backends"][b] = {
            "step_ms": step,
            "cpu_ms": {"median": round(statistics.median(cpu[b]), 3), "min": round(min(cpu[b]), 3)},
            "occupancy_update_ms": occ_ms,
            "occupancy_updates": len(occ[b]),
            "amortized_step_ms": round(step["median"] + (occ_ms or 0.0) / every[b], 3),
            "rays_per_s": round(trainers[b].cfg.rays_per_step / (step["median"] / 1e3), 1),
            **{k: round(v, 4) for k, v in stats_acc[b].items()},
            "op_calls": calls[b],
        }
    base = entry["backends"]["torch"]
    entry["ratio_vs_torch"] = {
        b: {"median": _ratio(base["step_ms"]["median"], e["step_ms"]["median"]),
            "min": _ratio(base["step_ms"]["min"], e["step_ms"]["min"]),
            "cpu_median": _ratio(base["cpu_ms"]["median"], e["cpu_ms"]["median"]),
            "amortized": _ratio(base["amortized_step_ms"], e["amortized_step_ms"])}
        for b, e in entry["backends"].items() if b != "torch"}
    return entry


# ----------------------------------------------------------------------------------------
# parity


def _split_iters(cfg, iters: int) -> dict[str, int]:
    """``iters`` steps over the training stages in the preset's proportions (head gets the
    rest)."""
    from synctalk.nerf.trainer import STAGES

    planned = {s: getattr(cfg, f"{s}_iters") for s in STAGES}
    total = sum(planned.values())
    out = {s: int(iters * n / total) for s, n in planned.items()}
    out["head"] = iters - sum(n for s, n in out.items() if s != "head")
    return out


def run_parity(subject=None, *, iters: int, preset: str = "demo", backends=("torch", "native"),
               threads: int | None = None, seed: int | None = None, size: int | None = None,
               rays: int | None = None, work_dir=None, face_landmarker=None,
               overrides: dict | None = None, device: str = "cpu") -> dict:
    """Train ``iters`` steps with each backend and compare the final val PSNRs (module
    docstring); returns the JSON-ready result."""
    from synctalk.nerf.trainer import train

    if iters < 1:
        raise InputError(f"--parity needs a positive number of steps, got {iters}")
    names = _check_backends(list(backends))
    dev = torch_device(device)
    subject, kind = _resolve_subject(subject, face_landmarker)
    base = _config(preset, subject, seed=seed, size=size, rays=rays, overrides=None)
    split = _split_iters(base, iters)
    changes = {**{f"{s}_iters": n for s, n in split.items()}, "val_every": 0, "ckpt_every": max(1, iters), **(overrides or {})}
    cfg = base.replace(**changes)
    wall0, cpu0, load0 = time.perf_counter(), time.process_time(), _load()
    result: dict = {"bench": "train", "mode": "parity", "preset": preset, "subject": str(subject),
                    "subject_kind": kind, **_machine(dev), "backends": names, "iters": iters,
                    "stages": dict(split),
                    "config": _config_json(cfg), "runs": {}}
    counter = OpCallCounter()
    with _work_dir(work_dir) as work, counter.active():
        for b in names:
            before = counter.snapshot()
            t, c, load = time.perf_counter(), time.process_time(), _load()
            res = train(subject, _fresh(work, f"model_{b}"), cfg, backend=b, progress=False, threads=threads,
                        device=device)
            result["runs"][b] = {
                "steps": res.steps, "val_psnr": round(res.val["val_psnr"], 4),
                "val_psnr_face": round(res.val["val_psnr_face"], 4),
                "val_psnr_mouth": round(res.val["val_psnr_mouth"], 4), "val_frames": res.val["val_frames"],
                "wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - c, 2),
                "load_avg_1min_start": load, "op_calls": counter.since(before)}
    ref = result["runs"]["torch"]
    result["difference_db"] = {}
    for b, run in result["runs"].items():
        if b == "torch":
            continue
        diff = {k: round(run[k] - ref[k], 4) for k in ("val_psnr", "val_psnr_face", "val_psnr_mouth")}
        diff["within_tolerance"] = bool(abs(diff["val_psnr"]) <= PARITY_TOLERANCE_DB
                                        and abs(diff["val_psnr_face"]) <= PARITY_TOLERANCE_DB)
        result["difference_db"][b] = diff
    result["tolerance_db"] = PARITY_TOLERANCE_DB
    result["process_cpu_s"] = round(time.process_time() - cpu0, 2)
    result["wall_s"] = round(time.perf_counter() - wall0, 2)
    result["load_avg_1min"] = {"start": load0, "end": _load()}
    return result


# ----------------------------------------------------------------------------------------
# table


def _table(result: dict) -> str:
    head = (f"synctalk bench train — preset {result['preset']}, {result['subject_kind']} subject "
            f"{result['subject']}, {result['device_name']}, torch {result['torch']}, load "
            f"{result['load_avg_1min']['start']} → {result['load_avg_1min']['end']}")
    lines = [head]
    if result["mode"] == "parity":
        lines.append(f"{result['iters']} steps {result['stages']}")
        lines.append(f"{'backend':<8} {'val PSNR':>9} {'face':>7} {'mouth':>7} {'wall s':>8} {'cpu s':>8}")
        for b, r in result["runs"].items():
            lines.append(f"{b:<8} {r['val_psnr']:>9.2f} {r['val_psnr_face']:>7.2f} {r['val_psnr_mouth']:>7.2f} "
                         f"{r['wall_s']:>8.1f} {r['cpu_s']:>8.1f}")
        for b, d in result["difference_db"].items():
            lines.append(f"{b} − torch: {d['val_psnr']:+.2f} dB full, {d['val_psnr_face']:+.2f} dB face "
                         f"({'within' if d['within_tolerance'] else 'OUTSIDE'} ±{result['tolerance_db']} dB)")
        return "\n".join(lines)
    lines.append(f"{result['threads']} thread(s), {result['repeats']} timed steps after {result['warmup']}; "
                 f"{result['config']['rays_per_step']} rays × ≤ {result['config']['samples_per_ray']} samples")
    lines.append(f"{'stage':<6} {'backend':<8} {'step med/min ms':>17} {'cpu med ms':>11} "
                 f"{'samples/ray':>12} {'speed-up':>9}")
    for stage, entry in result["stages"].items():
        for b, e in entry["backends"].items():
            ratio = entry["ratio_vs_torch"].get(b)
            speed = f"{ratio['median']:.2f}×" if ratio and ratio["median"] else ""
            lines.append(f"{stage:<6} {b:<8} {e['step_ms']['median']:>8.1f}/{e['step_ms']['min']:<8.1f} "
                         f"{e['cpu_ms']['median']:>11.1f} {e['samples_per_ray']:>12.2f} {speed:>9}")
    return "\n".join(lines)

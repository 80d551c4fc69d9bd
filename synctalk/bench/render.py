"""``synctalk bench render``: frame time of the head renderer, split into march / field /
composite, for every available backend on identical frames.

Two model sources:

* ``--model DIR`` — a trained model directory (``synctalk train``): frames are rendered with
  :meth:`~synctalk.nerf.inference.TalkingHead.render_frame` from the subject's own audio
  features and poses, so the time includes what lies behind the head (``torso``); the size is
  the model's.
* default — a **random-weight** model of ``--preset`` (default ``default``: the GPU preset,
  SyncTalk scale) at ``--size`` (default 512). Random weights give no head, so the bench sets
  one up with the same cost structure a trained head has: the occupancy grid holds a
  head-sized ellipsoid and the density output's bias is raised (+``DENSITY_BIAS``) so the
  ellipsoid is opaque and rays terminate early in it, as they do on a trained head. A fixed
  frontal camera sees the whole head box; each frame takes the next audio frame of a random
  feature sequence. The background is black and not timed.

Frames are rendered with the alive-ray inference loop (``--loop alive``, what ``synctalk
render`` uses), with every sample marched first (``packed``), or both in one run (``both``:
the packed entries are named ``BACKEND:packed``).

Per backend: ``frame_ms`` (median and min over ``--frames`` frames after ``--warmup``),
``fps`` (1000 / median), the medians of the ``march``/``field``/``composite`` (and ``torso``)
parts, rays marched and samples evaluated per frame; ``ratio_vs_torch`` for the others. CUDA
timings synchronise the device around every part. Numbers are printed, never asserted.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

from synctalk.cli import subcommand_parser_kwargs

#: Added to the density output's bias of a random-weight model (σ ≈ e^4 per box unit inside
#: the occupied ellipsoid: opaque after a fraction of the box, like a trained head).
DENSITY_BIAS = 4.0
#: Semi-axes (box units) of the occupied ellipsoid of a random-weight model.
HEAD_ELLIPSOID = (0.8, 0.45, 0.9)
#: Frontal camera of a random-weight model: distance (box units) and the share of the image
#: the box's width fills.
CAMERA_DISTANCE = 3.0
BOX_IMAGE_SHARE = 0.8
#: Blendshape inputs and audio feature size of a random-weight model (SyncTalk's: 7, AVE 512).
RANDOM_N_BS = 7
RANDOM_AUDIO_IN = 512


def register(actions) -> None:
    """Add ``bench render`` to the ``bench`` group."""
    p = actions.add_parser(
        "render", help="head render frame time (march / field / composite) per backend",
        description="Time whole-frame head renders of a trained model (--model) or of a "
                    "random-weight model of a preset, per backend, split into march, field "
                    "and composite.", **subcommand_parser_kwargs())
    p.add_argument("--model", default=None, help="trained model directory (default: random weights)")
    p.add_argument("--preset", default="default", help="preset of the random-weight model")
    p.add_argument("--size", type=int, default=512, help="frame side of the random-weight model (px)")
    p.add_argument("--frames", type=int, default=None,
                   help="timed frames (default: 100 on CUDA, 5 on the CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames first")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backends", default="", help="comma-separated backends (default: every available)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: the renderer's default, one on the CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and audio")
    p.add_argument("--loop", default="alive", choices=("alive", "packed", "both"),
                   help="inference loop: the alive-ray loop, every sample marched first, or both "
                        "(the packed one's entries are named BACKEND:packed)")
    p.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from synctalk.errors import InputError
    from synctalk.fsutil import write_json_atomic

    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames must be ≥ 1, got {args.frames}")
    if args.warmup < 0 or args.size < 16 or args.threads < 0:
        raise InputError("--warmup must be ≥ 0, --size ≥ 16 and --threads ≥ 0")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] or None
    result = run_bench(model=args.model, preset=args.preset, size=args.size, frames=args.frames,
                       warmup=args.warmup, device=args.device, backends=backends,
                       threads=args.threads or None, seed=args.seed, loop=args.loop)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


# ---------------------------------------------------------------------------- frame sources
class _RandomHead:
    """A random-weight model of a preset with a head-like occupancy (module docstring)."""

    def __init__(self, preset: str, size: int, device, seed: int) -> None:
        import torch

        from synctalk.nerf.config import load_preset
        from synctalk.nerf.model import TalkingHeadModel

        self.preset = preset
        self.cfg = load_preset(preset)
        self.size = size
        self.device = device
        model = TalkingHeadModel(self.cfg, 1, RANDOM_N_BS, RANDOM_AUDIO_IN, seed=seed)
        with torch.no_grad():
            model.head.density_net[-1].bias[0] += DENSITY_BIAS
            r = model.occ.occupied.shape[0]
            c = (torch.arange(r) + 0.5) / r * 2 - 1                  # cell centres in [-1, 1]
            gx, gy, gz = torch.meshgrid(c, c, c, indexing="ij")
            a, b, d = HEAD_ELLIPSOID
            # occupancy cells span the box: x, z ∈ [-1, 1], y ∈ [-0.5, 0.5]
            inside = (gx / a) ** 2 + (gy * 0.5 / b) ** 2 + (gz / d) ** 2 <= 1.0
            model.occ.occupied.copy_(inside)
        self.model = model.to(device).eval()
        gen = torch.Generator().manual_seed(seed)
        n_audio = 64
        k = model.audio_basis.shape[1]
        self.feats = torch.randn(n_audio, k, generator=gen).to(device)
        self.bs = torch.rand(RANDOM_N_BS, generator=gen).to(device)
        # frontal camera: box +y faces it; camera x → box x, camera y (down) → box z,
        # camera z (forward) → box −y
        self.cam_o = torch.tensor([[0.0, CAMERA_DISTANCE, 0.0]])
        self.cam_rot = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
        f = BOX_IMAGE_SHARE * size / 2 * (CAMERA_DISTANCE - 0.5)
        self.K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
        self.n_frames = n_audio

    def describe(self) -> dict:
        return {"source": "random", "preset": self.preset,
                "size": self.size, "infer_samples": self.cfg.infer_samples,
                "early_stop": self.cfg.early_stop, "density_bias": DENSITY_BIAS,
                "occupied_fraction": round(float(self.model.occ.occupied.float().mean()), 4),
                "grid": {"levels": self.cfg.grid_levels, "features": self.cfg.grid_features,
                         "resolution": [self.cfg.grid_base_res, self.cfg.grid_max_res],
                         "log2_hashmap": self.cfg.grid_log2_hashmap}}

    def frame(self, i: int, backend: str, timings: dict, loop: str) -> dict:
        import torch

        from synctalk.nerf.geometry import pixel_rays
        from synctalk.nerf.inference import frame_rect
        from synctalk.nerf.renderer import render_rays, render_rays_alive

        dev = self.device
        model = self.model
        model.set_backend(backend)
        t = i % self.n_frames
        with torch.no_grad():
            cond = model.head.frame_conditioning(self.feats, torch.tensor([t], device=dev),
                                                 self.bs[None], torch.zeros(1, dtype=torch.long, device=dev))
            x0, y0, x1, y1 = frame_rect(self.cam_o[0], self.cam_rot[0], self.K, self.size)
            ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
            xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
            o, d = pixel_rays(self.cam_o, self.cam_rot, self.K, xy)
            o, d = o.to(dev), d.to(dev)
            render = render_rays_alive if loop == "alive" else render_rays
            out = render(model.head, model.occ, o, d, cond, torch.zeros(len(o), 3, device=dev),
                         n_samples=self.cfg.infer_samples, early_stop=self.cfg.early_stop,
                         backend=backend, timings=timings)
        return {"rays": int(out["hit"].sum()), "samples": int(out["n_samples"])}


class _TrainedHead:
    """Frames of a trained model directory, from its subject's own audio and poses."""

    def __init__(self, model_dir: str, device: str, threads: int | None) -> None:
        from synctalk.nerf.inference import TalkingHead

        self.head = TalkingHead.load(model_dir, device=device, threads=threads)
        self.feats = self.head.subject_audio_features()
        self.size = self.head.size
        self.n_frames = min(len(self.feats), self.head.data.n_frames)

    def describe(self) -> dict:
        return {"source": "model", "model": str(self.head.model_dir), "size": self.size,
                "infer_samples": self.head.samples, "early_stop": self.head.early_stop}

    def frame(self, i: int, backend: str, timings: dict, loop: str) -> dict:
        head = self.head
        head.loop = loop
        head.backend = backend
        head.model.set_backend(backend)
        t = i % self.n_frames
        out = head.render_frame(self.feats, t, t)
        for k, v in out["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
        return {"rays": int((out["alpha"] > 0).sum()), "samples": None}


# ---------------------------------------------------------------------------- measuring
def run_bench(*, model: str | None = None, preset: str = "default", size: int = 512,
              frames: int | None = None, warmup: int = 3, device: str = "cpu",
              backends: list[str] | None = None, threads: int | None = None, seed: int = 0,
              loop: str = "alive") -> dict:
    """Measure (module docstring) and return the JSON-able result."""
    import torch

    from synctalk.device import torch_device
    from synctalk.errors import InputError
    from synctalk.nerf.model import DEFAULT_CPU_THREADS, torch_threads
    from synctalk.ops import backend as registry

    if loop not in ("alive", "packed", "both"):
        raise InputError(f"loop must be alive, packed or both, got {loop!r}")
    dev = torch_device(device)
    if frames is None:
        frames = 100 if dev.type == "cuda" else 5
    if threads is None and dev.type == "cpu":
        threads = DEFAULT_CPU_THREADS
    ops = ("triplane_encode", "march_rays", "composite")
    every = [b for b in registry.available(None) if all(b in registry.available(op) for op in ops)]
    names = ["torch"] + [b for b in every if b != "torch"]
    if backends:
        unknown = sorted(set(backends) - set(names))
        if unknown:
            raise InputError(f"backend(s) {', '.join(unknown)} not available here; available: "
                             f"{', '.join(names)}")
        names = [b for b in names if b in backends or b == "torch"]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch_threads(threads):
        source = _TrainedHead(model, device, threads) if model else _RandomHead(preset, size, dev, seed)
        result: dict = {
            "bench": "render", "device": dev.type,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "frames": frames,
            "warmup": warmup, "load_avg_1m": round(os.getloadavg()[0], 2),
            "model": source.describe(), "loop": loop, "backends": {}}
        loops = ("alive", "packed") if loop == "both" else (loop,)
        runs = [(b, lp) for lp in loops for b in names]
        for b, lp in runs:
            for i in range(warmup):
                source.frame(i, b, {}, lp)
            sync()
            totals, parts, rays, samples = [], {}, [], []
            for i in range(frames):
                timings: dict = {}
                t0 = time.perf_counter()
                info = source.frame(warmup + i, b, timings, lp)
                sync()
                totals.append((time.perf_counter() - t0) * 1e3)
                for k, v in timings.items():
                    parts.setdefault(k, []).append(v * 1e3)
                rays.append(info["rays"])
                if info["samples"] is not None:
                    samples.append(info["samples"])
            med = statistics.median(totals)
            entry = {"frame_ms": {"median": round(med, 3), "min": round(min(totals), 3)},
                     "fps": round(1000.0 / med, 2),
                     "parts_median_ms": {k: round(statistics.median(v), 3) for k, v in parts.items()},
                     "rays_per_frame": int(statistics.median(rays))}
            if samples:
                entry["samples_per_frame"] = int(statistics.median(samples))
            result["backends"][b if lp == loops[0] else f"{b}:{lp}"] = entry
    base = result["backends"]["torch"]["frame_ms"]
    result["ratio_vs_torch"] = {
        b: {"median": round(base["median"] / max(e["frame_ms"]["median"], 1e-9), 3),
            "min": round(base["min"] / max(e["frame_ms"]["min"], 1e-9), 3)}
        for b, e in result["backends"].items() if b != "torch"}
    return result


def _table(result: dict) -> str:
    m = result["model"]
    lines = [f"synctalk bench render — {result['device']} ({result['device_name']}), "
             f"{m['source']} model at {m['size']}², {result['frames']} frames, "
             f"{result['threads']} thread(s)",
             f"{'backend':<8} {'frame med/min ms':>18} {'fps':>8}   parts (median ms)"]
    for b, e in result["backends"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in e["parts_median_ms"].items())
        lines.append(f"{b:<8} {e['frame_ms']['median']:>9.1f}/{e['frame_ms']['min']:<8.1f} "
                     f"{e['fps']:>8.2f}   {parts}")
    for b, r in result["ratio_vs_torch"].items():
        lines.append(f"{b} vs torch: {r['median']:.2f}× (median), {r['min']:.2f}× (min)")
    return "\n".join(lines)

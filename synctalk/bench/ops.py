"""``synctalk bench ops``: per-op timings of every available backend on identical inputs.

For each hot op (:data:`synctalk.ops.OPS`, plus the ``march_rays+composite`` pipeline) and
each backend that implements it, the op runs ``--warmup`` times and is then timed
``--repeats`` times, reporting the median and minimum wall time in milliseconds (plus, on
CPU, ``cpu_median_ms``: the process CPU time, steadier on a shared machine):

* ``fwd`` — forward only, under ``torch.no_grad()`` (inference);
* ``fwd_bwd`` — forward with autograd and backward of a fixed random projection of the
  outputs (training), for the differentiable ops (grid encodings, compositing).

For every backend other than ``torch``, ``ratio_vs_torch`` gives the speed-up
``torch_time / backend_time`` (of the medians and of the minima) and ``max_abs_diff`` its
largest deviation from the torch outputs. Default shapes are the CPU demo's: 2048 rays ×
24 samples, a tri-plane of 10 levels × 2 features (16 → 512, 2^18 rows per level, so only
the finest level is hashed), a 3-D grid of the same levels, a 128³ occupancy grid over the
head box holding an ellipsoid. Timings are printed, never asserted.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Callable

from synctalk.cli import subcommand_parser_kwargs

#: Benchmarked entries: the dispatched ops and a march → composite pipeline.
BENCH_OPS: tuple[str, ...] = ("grid_encode", "triplane_encode", "ray_aabb", "march_rays", "composite",
                              "march_rays+composite")


def register(actions) -> None:
    """Add ``bench ops`` to the ``bench`` group."""
    parser = actions.add_parser(
        "ops", help="time every backend of each hot op (grid encode, march, composite)",
        description="Time the hot ops (synctalk.ops) of every available backend on identical, "
                    "demo-sized inputs: median/min over repeats, forward and forward+backward, "
                    "and each non-torch backend's speed-up over the torch reference.",
        **subcommand_parser_kwargs())
    parser.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--rays", type=int, default=2048, help="rays per batch")
    parser.add_argument("--samples", type=int, default=24, help="samples (intervals) per ray")
    parser.add_argument("--levels", type=int, default=10, help="grid levels")
    parser.add_argument("--features", type=int, default=2, help="features per level")
    parser.add_argument("--base-res", type=int, default=16, help="resolution of the coarsest level")
    parser.add_argument("--max-res", type=int, default=512, help="resolution of the finest level")
    parser.add_argument("--log2-hashmap-size", type=int, default=18, help="log2 rows per level at most")
    parser.add_argument("--grid-res", type=int, default=128, help="occupancy grid resolution R (R³ cells)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backends", default="", help="comma-separated backends (default: every available)")
    parser.add_argument("--ops", default="", help="comma-separated subset of: " + ", ".join(BENCH_OPS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    from synctalk.errors import InputError
    from synctalk.fsutil import write_json_atomic

    ops = [o.strip() for o in args.ops.split(",") if o.strip()] or list(BENCH_OPS)
    unknown = sorted(set(ops) - set(BENCH_OPS))
    if unknown:
        raise InputError(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(BENCH_OPS)}")
    if args.repeats < 1 or args.warmup < 0:
        raise InputError("--repeats must be ≥ 1 and --warmup ≥ 0")
    result = run_bench(ops=ops, backends=[b.strip() for b in args.backends.split(",") if b.strip()] or None,
                       rays=args.rays, samples=args.samples, levels=args.levels, features=args.features,
                       base_res=args.base_res, max_res=args.max_res, log2_hashmap_size=args.log2_hashmap_size,
                       grid_res=args.grid_res, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                       device=args.device, seed=args.seed)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


# ----------------------------------------------------------------------------------------
# inputs and timing


def _timeit(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None], cpu: bool) -> dict:
    """Wall-clock median/min in ms; on CPU also the median process CPU time (all threads),
    which a machine shared with other jobs inflates less than the wall clock."""
    for _ in range(warmup):
        fn()
    sync()
    times, cpu_times = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
    out = {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4)}
    if cpu:
        out["cpu_median_ms"] = round(statistics.median(cpu_times), 4)
    return out


def _inputs(rays: int, samples: int, levels: int, features: int, base_res: int, max_res: int,
            log2_hashmap_size: int, grid_res: int, device, seed: int) -> dict:
    """Identical inputs for every backend (deterministic in ``seed``)."""
    import torch

    from synctalk.ops import GridSpec, init_table, march_rays, ray_aabb

    gen = torch.Generator().manual_seed(seed)
    aabb = torch.tensor([-1.0, -0.5, -1.0, 1.0, 0.5, 1.0])
    # rays from a sphere of radius 3 towards random points of the box: every ray hits
    o = torch.randn(rays, 3, generator=gen)
    o = 3 * o / o.norm(dim=1, keepdim=True)
    target = (torch.rand(rays, 3, generator=gen) * 2 - 1) * 0.9 * aabb[3:]
    d = target - o
    d = d / d.norm(dim=1, keepdim=True)
    # occupancy: an ellipsoid filling the middle of the head box
    r = (torch.arange(grid_res) + 0.5) / grid_res * 2 - 1
    gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
    occupied = (gx / 0.8) ** 2 + (gy / 0.9) ** 2 + (gz / 0.8) ** 2 <= 1.0
    n_points = rays * samples
    spec3 = GridSpec(3, levels, features, base_res, max_res, log2_hashmap_size)
    spec2 = GridSpec(2, levels, features, base_res, max_res, log2_hashmap_size)
    x = torch.rand(n_points, 3, generator=gen)
    t = dict(aabb=aabb, rays_o=o, rays_d=d, occupied=occupied, x=x,
             table3=init_table(spec3, 0.1, gen), tables2=init_table(spec2, 0.1, gen, planes=3))
    t = {k: v.to(device) for k, v in t.items()}
    near, far = ray_aabb(t["rays_o"], t["rays_d"], t["aabb"], backend="torch")
    packed = march_rays(t["rays_o"], t["rays_d"], near, far, t["occupied"], t["aabb"], samples, backend="torch")
    S = packed.n_samples
    t.update(t_near=near, t_far=far, packed=packed, spec3=spec3, spec2=spec2,
             sigmas=(torch.rand(S, generator=gen) * 20).to(device), rgbs=torch.rand(S, 3, generator=gen).to(device),
             extras=torch.rand(S, 2, generator=gen).to(device))
    return t


def _cases(inp: dict, samples: int) -> dict[str, dict]:
    """Per op: ``run(backend) -> outputs``, its differentiable inputs, and a flattener."""
    import torch

    from synctalk.ops import composite, grid_encode, march_rays, ray_aabb, triplane_encode

    def comp_outputs(out):
        return [out["color"], out["opacity"], out["depth"], out["extras"], out["weights"]]

    def march(b):
        return march_rays(inp["rays_o"], inp["rays_d"], inp["t_near"], inp["t_far"], inp["occupied"],
                          inp["aabb"], samples, backend=b)

    def march_outputs(b):
        p = march(b)
        return [p.ray_indices.to(torch.float32), p.t_starts, p.t_ends, p.counts.to(torch.float32)]

    def march_composite(b, sigmas, rgbs, extras):
        packed = march(b)
        n = packed.n_samples
        return comp_outputs(composite(sigmas[:n], rgbs[:n], packed, extras=extras[:n], backend=b))

    return {
        "grid_encode": dict(run=lambda b, table: [grid_encode(inp["x"], table, inp["spec3"], backend=b)],
                            grads=["table3"]),
        "triplane_encode": dict(run=lambda b, tables: [triplane_encode(inp["x"], tables, inp["spec2"], backend=b)],
                                grads=["tables2"]),
        "ray_aabb": dict(run=lambda b: list(ray_aabb(inp["rays_o"], inp["rays_d"], inp["aabb"], backend=b)),
                         grads=[]),
        "march_rays": dict(run=march_outputs, grads=[]),
        "composite": dict(run=lambda b, sigmas, rgbs, extras: comp_outputs(
            composite(sigmas, rgbs, inp["packed"], extras=extras, backend=b)), grads=["sigmas", "rgbs", "extras"]),
        "march_rays+composite": dict(run=march_composite, grads=["sigmas", "rgbs", "extras"]),
    }


def _op_backends(op: str) -> list[str]:
    from synctalk.ops import available

    if op == "march_rays+composite":
        return [b for b in available("march_rays") if b in available("composite")]
    return available(op)


def run_bench(*, ops=BENCH_OPS, backends=None, rays=2048, samples=24, levels=10, features=2, base_res=16,
              max_res=512, log2_hashmap_size=18, grid_res=128, repeats=10, warmup=2, threads=0, device="cpu",
              seed=0) -> dict:
    """Run the benchmark and return the JSON-ready result (see the module docstring)."""
    import torch

    from synctalk.device import torch_device

    torch_device(device)
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _run(ops, backends, rays, samples, levels, features, base_res, max_res, log2_hashmap_size,
                    grid_res, repeats, warmup, device, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _run(ops, backends, rays, samples, levels, features, base_res, max_res, log2_hashmap_size, grid_res,
         repeats, warmup, device, seed) -> dict:
    import torch

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    on_cpu = dev.type == "cpu"
    inp = _inputs(rays, samples, levels, features, base_res, max_res, log2_hashmap_size, grid_res, dev, seed)
    cases = _cases(inp, samples)
    result = {
        "bench": "ops",
        "device": str(dev),
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": warmup,
        "shapes": {
            "rays": rays, "samples_per_ray": samples, "points": rays * samples,
            "packed_samples": inp["packed"].n_samples, "occupancy_grid": [grid_res] * 3,
            "grid3d": _spec_json(inp["spec3"]), "triplane": _spec_json(inp["spec2"]),
        },
        "ops": {},
    }
    for op in ops:
        case = cases[op]
        names = _op_backends(op)
        if backends:
            names = [b for b in names if b in backends or b == "torch"]
        grads = [inp[k] for k in case["grads"]]
        entry: dict = {"backends": {}}
        outputs = {}
        for b in names:
            with torch.no_grad():
                res = {"fwd": _timeit(lambda: case["run"](b, *grads), repeats, warmup, sync, on_cpu)}
                outputs[b] = [o.detach().float() for o in case["run"](b, *grads)]
            if grads:
                leaves = [g.detach().clone().requires_grad_() for g in grads]
                gen = torch.Generator().manual_seed(seed + 1)       # the same loss for every backend
                proj = [torch.randn(o.shape, generator=gen).to(dev) for o in outputs[b]]

                def fwd_bwd():
                    for leaf in leaves:
                        leaf.grad = None
                    outs = case["run"](b, *leaves)
                    loss = sum((o.float() * p).sum() for o, p in zip(outs, proj))
                    loss.backward()

                res["fwd_bwd"] = _timeit(fwd_bwd, repeats, warmup, sync, on_cpu)
            entry["backends"][b] = res
        others = [b for b in names if b != "torch"]
        if others and "torch" in entry["backends"]:
            base = entry["backends"]["torch"]
            entry["ratio_vs_torch"] = {}
            for b in others:
                ratios = {}
                for mode, t in entry["backends"][b].items():
                    ratios[mode] = {"median": round(base[mode]["median_ms"] / max(t["median_ms"], 1e-9), 3),
                                    "min": round(base[mode]["min_ms"] / max(t["min_ms"], 1e-9), 3)}
                diff = max((float((a - c).abs().max()) if a.numel() and a.shape == c.shape else
                            (0.0 if a.shape == c.shape else float("inf")))
                           for a, c in zip(outputs[b], outputs["torch"]))
                ratios["max_abs_diff"] = diff
                entry["ratio_vs_torch"][b] = ratios
        result["ops"][op] = entry
    return result


def _spec_json(spec) -> dict:
    return {"dim": spec.dim, "levels": spec.n_levels, "features": spec.n_features,
            "resolutions": list(spec.resolutions), "hashed": list(spec.hashed),
            "log2_hashmap_size": spec.log2_hashmap_size, "rows": spec.n_params}


def _table(result: dict) -> str:
    lines = [f"synctalk bench ops — {result['device']} ({result['device_name']}), torch {result['torch']}, "
             f"{result['threads']} thread(s), {result['shapes']['rays']} rays × "
             f"{result['shapes']['samples_per_ray']} samples, {result['shapes']['packed_samples']} packed samples",
             f"{'op':<22} {'backend':<8} {'fwd med/min ms':>18} {'fwd+bwd med/min ms':>22} {'speed-up':>10}"]
    for op, entry in result["ops"].items():
        for b, res in entry["backends"].items():
            fwd = f"{res['fwd']['median_ms']:.2f}/{res['fwd']['min_ms']:.2f}"
            fb = f"{res['fwd_bwd']['median_ms']:.2f}/{res['fwd_bwd']['min_ms']:.2f}" if "fwd_bwd" in res else "-"
            ratio = entry.get("ratio_vs_torch", {}).get(b)
            speed = f"{ratio['fwd']['median']:.2f}×" if ratio else ""
            lines.append(f"{op:<22} {b:<8} {fwd:>18} {fb:>22} {speed:>10}")
    return "\n".join(lines)

"""The ``"native"`` backend of the hot ops: the ``cuda_ext/`` kernels, built on first use.

What it is: the per-element math of every op lives once in ``cuda_ext/include/synctalk/*.h``
(``__host__ __device__`` inline functions); thin OpenMP loops (``cuda_ext/cpu/*.cpp``) and
thin CUDA kernels (``cuda_ext/cuda/*.cu``) call it; ``cuda_ext/bindings.cpp`` exposes them
to Python. This module builds that extension with :func:`torch.utils.cpp_extension.load`,
registers autograd-aware implementations in :mod:`synctalk.ops.backend`, and reports its
state (``synctalk doctor``, ``synctalk native status``).

Build:

* **Lazy and cached.** Nothing is compiled at install time (unless
  ``SYNCTALK_BUILD_NATIVE=1``, see ``setup.py``). The first op call that resolves the
  ``"native"`` backend (``backend="auto"`` or ``"native"``) builds into
  ``<cache_dir()>/native/<tag>`` (``$SYNCTALK_CACHE_DIR`` or ``$XDG_CACHE_HOME/synctalk``
  or ``~/.cache/synctalk``; ``$SYNCTALK_NATIVE_DIR`` replaces ``<cache_dir()>/native``),
  where ``<tag>`` hashes the sources, the flags and the torch/Python versions; later
  processes load the cached library in about a second.
  It prints once, on stderr, what it builds and why.
* **CPU always, CUDA when possible.** g++ ``-O3 -fopenmp`` (portable: the vectorised
  float32 loops exist in baseline / AVX2 / AVX-512 variants chosen at run time, see
  ``cuda_ext/README.md``); the ``.cu`` files are added only when torch is a CUDA build, a
  GPU is visible and nvcc is found (``CUDA_HOME``).
* **Never fatal.** A failed build logs a warning once and the ops keep running on the
  torch reference (``backend="auto"``); ``backend="native"`` then raises
  :class:`~synctalk.errors.InputError` saying why. ``SYNCTALK_NATIVE=0`` disables the
  backend altogether.

Calling conventions of the native implementations (same signatures and results as the
torch reference, see each op's docstring):

* Inputs are made contiguous (a copy when they are not); floating dtypes other than
  float32/float64 are computed in float32 (fp16 grid tables are read as fp16). Tensors
  on different devices, or integer tensors where floats are expected, raise
  :class:`~synctalk.errors.InputError`.
* ``march_next`` and ``composite_step`` (the alive-ray loop, :mod:`synctalk.ops.alive`) are
  inference ops, never differentiable (neither is their reference); they update the loop's
  state tensors in place, so those must already be contiguous in one float dtype (the
  public functions check it).
* ``ray_aabb`` and ``march_rays`` are not differentiable natively: when grad mode is on
  and a ray input requires grad they run the torch reference instead (sampling positions
  are normally constants). ``composite`` returns gradients for ``sigmas``, ``rgbs``,
  ``extras`` and ``bg`` (not for the sample intervals), first order only.
* CUDA tensors with a CPU-only build run the torch reference (with a one-time warning).
* Large CPU outputs of the grid encodings (≥ 1 MB: the features, the table gradient) come
  from a cache of freed buffers kept by the extension (at most 8 buffers and
  ``$SYNCTALK_NATIVE_BUFFER_CACHE_MB``, default 256 MB; 0 turns it off), so a training
  step does not page-fault fresh memory for them (``cuda_ext/README.md``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from synctalk.errors import InputError, SyncTalkError
from synctalk.ops import backend as _backend
from synctalk.ops.density import check_dilation
from synctalk.ops.grid import TRIPLANE_AXES, GridSpec
from synctalk.ops.raymarch import PackedSamples

log = logging.getLogger(__name__)

#: Version of the binding interface; part of the build tag so a changed Python side never
#: loads an old library.
ABI_VERSION = 5

#: C++ flags of the CPU build: no fused multiply-add contraction, so sample positions
#: round exactly like the torch reference; no floating-point trap semantics (results are
#: unchanged; it lets g++ vectorise loops with clamps, whose comparisons could trap).
#: Portable on purpose (no -march): instruction sets beyond the baseline are used only
#: through run-time dispatch (``cuda_ext/cpu/plane_cpu.cpp``), so one cached build
#: serves every x86-64 CPU.
CPU_CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math")
CPU_LDFLAGS = ("-fopenmp",)
CUDA_CFLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr")

_DISABLE_VALUES = {"0", "off", "false", "no"}


def _build_root() -> Path:
    from synctalk.models import cache_dir

    explicit = os.environ.get("SYNCTALK_NATIVE_DIR")
    return Path(explicit).expanduser() if explicit else cache_dir() / "native"


#: Where builds go: ``$SYNCTALK_NATIVE_DIR``, else ``<cache_dir()>/native``. Fixed when this
#: module is imported, so one process always uses one build (a test that points
#: ``SYNCTALK_CACHE_DIR`` elsewhere for model files does not trigger a second compile).
BUILD_ROOT: Path = _build_root()


class NativeBuildError(SyncTalkError):
    """The native extension could not be built or loaded (compiler, ninja, sources)."""


# ----------------------------------------------------------------------------------------
# sources and build configuration


def source_dir() -> Path | None:
    """Directory holding ``bindings.cpp`` and ``include/``: ``synctalk/_cuda_ext`` in an
    installed wheel, else ``cuda_ext/`` beside the package (a checkout or editable install);
    None when neither exists."""
    here = Path(__file__).resolve().parent.parent  # synctalk/
    for candidate in (here / "_cuda_ext", here.parent / "cuda_ext"):
        if (candidate / "bindings.cpp").is_file() and (candidate / "include").is_dir():
            return candidate
    return None


def disabled() -> bool:
    """True when ``SYNCTALK_NATIVE`` is 0/off/false/no (the backend is not registered)."""
    return os.environ.get("SYNCTALK_NATIVE", "").strip().lower() in _DISABLE_VALUES


def _cuda_wanted() -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why (not)."""
    if os.environ.get("SYNCTALK_NATIVE_CUDA", "").strip().lower() in _DISABLE_VALUES:
        return False, "SYNCTALK_NATIVE_CUDA=0"
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}"


@dataclass
class BuildConfig:
    """Everything that determines one build of the extension.

    Attributes:
        name: Python module name (``synctalk_native_<tag>``).
        build_dir: where the objects and the library go.
        sources: C++ (and CUDA) sources compiled.
        include_dir: ``cuda_ext/include``.
        cuda: whether the CUDA kernels are compiled in.
        cuda_reason: why (not), one line.
        tag: hash of sources, flags and versions.
    """

    name: str
    build_dir: Path
    sources: list[Path]
    include_dir: Path
    cuda: bool
    cuda_reason: str
    tag: str
    cflags: list[str] = field(default_factory=list)

    @property
    def library(self) -> Path:
        """The shared library ``load`` produces (``<build_dir>/<name>.so``)."""
        suffix = ".pyd" if sys.platform == "win32" else ".so"
        return self.build_dir / f"{self.name}{suffix}"


def build_config() -> BuildConfig:
    """The build for this machine and these sources (computes the tag; builds nothing).

    Raises:
        NativeBuildError: the ``cuda_ext`` sources are not found.
    """
    src = source_dir()
    if src is None:
        raise NativeBuildError("the cuda_ext sources are not part of this installation "
                               "(reinstall synctalk from a checkout or a wheel that ships them)")
    cuda, cuda_reason = _cuda_wanted()
    sources = [src / "bindings.cpp", *sorted((src / "cpu").glob("*.cpp"))]
    if cuda:
        sources += sorted((src / "cuda").glob("*.cu"))
    hashed = sorted({*sources, *(src / "include").rglob("*.h"), *(src / "include").rglob("*.inc")})
    cflags = [*CPU_CFLAGS] + (["-DSYNCTALK_WITH_CUDA"] if cuda else [])
    digest = hashlib.sha256()
    for path in hashed:
        digest.update(path.relative_to(src).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(repr((ABI_VERSION, cflags, CPU_LDFLAGS, CUDA_CFLAGS if cuda else None, torch.__version__,
                        torch.version.cuda, platform.python_version(), platform.machine())).encode())
    tag = ("cuda-" if cuda else "cpu-") + digest.hexdigest()[:16]
    return BuildConfig(name=f"synctalk_native_{tag.replace('-', '_')}", build_dir=BUILD_ROOT / tag,
                       sources=sources, include_dir=src / "include", cuda=cuda, cuda_reason=cuda_reason,
                       tag=tag, cflags=cflags)


# ----------------------------------------------------------------------------------------
# build / load

_LOCK = threading.RLock()
_MODULE: ModuleType | None = None
_ERROR: str | None = None
_CUDA_FALLBACK_WARNED = False


def _toolchain_problem() -> str | None:
    """Why a build cannot even start (no C++ compiler / ninja), or None."""
    from torch.utils.cpp_extension import is_ninja_available

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None:
        return f"no C++ compiler found ({cxx!r} / g++ not on PATH): install g++"
    if not is_ninja_available():
        return "ninja is not installed: pip install ninja (or apt-get install ninja-build)"
    return None


def load(*, force: bool = False, verbose: bool = False) -> ModuleType:
    """The compiled extension module, building it first when needed (once per process).

    Args:
        force: delete the cached build and compile again.
        verbose: show the compiler commands and output.

    Returns:
        The extension module (functions listed in ``cuda_ext/bindings.cpp``).

    Raises:
        NativeBuildError: disabled, no sources, no toolchain, or the compile failed; the
            message says why and what to do.
    """
    global _MODULE, _ERROR
    module = _MODULE
    if module is not None and not force:  # the common case, without the lock
        return module
    with _LOCK:
        if _MODULE is not None and not force:
            return _MODULE
        cfg = build_config()
        problem = _toolchain_problem()
        if problem is not None:
            _ERROR = problem
            raise NativeBuildError(problem)
        cached = cfg.library.is_file()
        if force and cfg.build_dir.exists():
            shutil.rmtree(cfg.build_dir)
            cached = False
        cfg.build_dir.mkdir(parents=True, exist_ok=True)
        if not cached:
            what = "C++/OpenMP CPU kernels" + (" + CUDA kernels" if cfg.cuda else "")
            why = "rebuild requested" if force else "no build of these sources yet"
            print(f"synctalk: building the native ops ({what}; CUDA: {cfg.cuda_reason}) into "
                  f"{cfg.build_dir} — {why}; takes 1–3 minutes, once", file=sys.stderr, flush=True)
        start = time.monotonic()
        from torch.utils.cpp_extension import load as cpp_load

        try:
            module = cpp_load(
                name=cfg.name, sources=[str(s) for s in cfg.sources],
                extra_include_paths=[str(cfg.include_dir)], extra_cflags=list(cfg.cflags),
                extra_ldflags=list(CPU_LDFLAGS),
                extra_cuda_cflags=list(CUDA_CFLAGS) + ["-DSYNCTALK_WITH_CUDA"] if cfg.cuda else None,
                build_directory=str(cfg.build_dir), verbose=verbose, with_cuda=cfg.cuda)
        except Exception as e:  # compiler errors arrive as RuntimeError/OSError/CalledProcessError
            _ERROR = f"build failed in {cfg.build_dir}: {type(e).__name__}: {_tail(str(e))}"
            raise NativeBuildError(_ERROR) from e
        if not cached:
            print(f"synctalk: native ops built in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        _MODULE, _ERROR = module, None
        return module


def _tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a compiler log (the error is at the end)."""
    parts = text.strip().splitlines()
    return "\n".join(parts[-lines:])


def is_loaded() -> bool:
    """Whether the extension is loaded in this process."""
    return _MODULE is not None


def native_status() -> dict:
    """The state of the native backend, without building anything.

    Returns:
        dict with ``state`` (``"loaded"``, ``"cached"`` — built, loads on first use,
        ``"not built"``, ``"failed"``, ``"disabled"`` or ``"unavailable"``), ``detail``
        (one line), ``cuda`` (whether the CUDA kernels are, or would be, compiled in),
        ``cuda_reason`` and ``build_dir``.
    """
    if disabled():
        return {"state": "disabled", "detail": "SYNCTALK_NATIVE=0: every op runs the torch reference",
                "cuda": False, "cuda_reason": "", "build_dir": None}
    try:
        cfg = build_config()
    except NativeBuildError as e:
        return {"state": "unavailable", "detail": str(e), "cuda": False, "cuda_reason": "", "build_dir": None}
    base = {"cuda": cfg.cuda, "cuda_reason": cfg.cuda_reason, "build_dir": str(cfg.build_dir)}
    kind = "CPU + CUDA" if cfg.cuda else "CPU"
    if _MODULE is not None:
        return {**base, "state": "loaded", "detail": f"loaded ({kind}) from {cfg.build_dir}"}
    if _ERROR is not None:
        return {**base, "state": "failed", "detail": _ERROR.splitlines()[0]}
    if cfg.library.is_file():
        return {**base, "state": "cached", "detail": f"built ({kind}), loads on first use from {cfg.build_dir}"}
    problem = _toolchain_problem()
    if problem is not None:
        return {**base, "state": "unavailable", "detail": problem}
    return {**base, "state": "not built",
            "detail": f"builds ({kind}) on first use, or now with `synctalk native build` ({cfg.cuda_reason})"}


# ----------------------------------------------------------------------------------------
# input handling


def _same_device(op: str, **tensors: Tensor | None) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise InputError(f"{op}: all tensors must be on one device, got {listing} — move them with .to(device)")
    return next(iter(devices.values()))


def _require_float(op: str, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise InputError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 when any tensor is float64, else float32 (fp16/bf16 compute in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _prep(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``t`` in ``dtype``, contiguous (``t`` itself when it already is: the common case,
    checked without a dispatcher call)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


def _plain_f32(*tensors: Tensor | None) -> bool:
    """Whether every given tensor (None skipped) is contiguous float32 on the CPU — what
    training passes, needing no conversion: the ops then skip the general checks (the
    bindings still check every tensor)."""
    for t in tensors:
        if t is not None and (t.dtype is not torch.float32 or not t.is_cpu or not t.is_contiguous()):
            return False
    return True


def _cuda_unsupported(device: torch.device) -> bool:
    """True (and warn once) when CUDA tensors meet a CPU-only build."""
    global _CUDA_FALLBACK_WARNED
    if device.type != "cuda" or load().with_cuda:
        return False
    if not _CUDA_FALLBACK_WARNED:
        _CUDA_FALLBACK_WARNED = True
        log.warning("ops: the native ops were built without CUDA (%s); CUDA tensors use the torch reference",
                    build_config().cuda_reason)
    return True


# ----------------------------------------------------------------------------------------
# grid encoding


def _level_args(spec: GridSpec) -> tuple:
    return (list(spec.resolutions), list(spec.hashed), list(spec.offsets), spec.log2_hashmap_size)


class _GridEncodeFn(torch.autograd.Function):
    """Autograd wrapper of the grid kernels: ``(x [N, in_dim], tables [P, rows, F]) ->
    [N, P·L·F]``."""

    @staticmethod
    def forward(ctx, x: Tensor, tables: Tensor, levels: tuple, axes: list[list[int]]) -> Tensor:
        ctx.levels, ctx.axes = levels, axes
        ctx.save_for_backward(x, tables)
        return load().grid_encode_forward(x, tables, *levels, axes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, tables = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table, grad_x = load().grid_encode_backward(
            x, tables, _prep(grad_out, x.dtype), *ctx.levels, ctx.axes, need_table, need_x)
        if grad_table is not None and grad_table.dtype != tables.dtype:
            grad_table = grad_table.to(tables.dtype)
        return grad_x, grad_table, None, None


def _encode(op: str, x: Tensor, tables: Tensor, spec: GridSpec, axes: list[list[int]], reference) -> Tensor:
    _require_float(op, x=x, table=tables)
    device = _same_device(op, x=x, table=tables)
    if _cuda_unsupported(device):
        return reference()
    dtype = _compute_dtype(x, tables)
    table_dtype = tables.dtype if (dtype == torch.float32 and tables.dtype == torch.float16) else dtype
    return _GridEncodeFn.apply(_prep(x, dtype), _prep(tables, table_dtype), _level_args(spec), axes)


def grid_encode(x: Tensor, table: Tensor, spec: GridSpec) -> Tensor:
    """Native :func:`synctalk.ops.grid_encode`: ``x [N, dim]``, ``table [n_params, F]``
    (float32, float16 or float64) → ``[N, L·F]`` float32 (float64 for float64 inputs)."""
    from synctalk.ops.grid import _grid_encode_torch

    return _encode("grid_encode", x, table.unsqueeze(0), spec, [list(range(spec.dim))],
                   lambda: _grid_encode_torch(x, table, spec))


def triplane_encode(xyz: Tensor, tables: Tensor, spec: GridSpec) -> Tensor:
    """Native :func:`synctalk.ops.triplane_encode`: ``xyz [N, 3]``, ``tables [3, n_params, F]``
    → ``[N, 3·L·F]`` (planes (x,y), (y,z), (x,z))."""
    from synctalk.ops.grid import _triplane_encode_torch

    return _encode("triplane_encode", xyz, tables, spec, [list(a) for a in TRIPLANE_AXES],
                   lambda: _triplane_encode_torch(xyz, tables, spec))


# ----------------------------------------------------------------------------------------
# ray marching


def _rays_need_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _ray_dtype(op: str, rays_o: Tensor, rays_d: Tensor, **others: Tensor) -> torch.dtype:
    _require_float(op, rays_o=rays_o, rays_d=rays_d, **others)
    for name, t in {"rays_d": rays_d, **others}.items():
        if t.dtype != rays_o.dtype:
            raise InputError(f"{op}: {name} has dtype {t.dtype} but rays_o has {rays_o.dtype}; "
                             f"use one float dtype for the rays")
    if rays_o.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{op}: rays must be float32 or float64, got {rays_o.dtype}")
    return rays_o.dtype


def ray_aabb(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, near: float) -> tuple[Tensor, Tensor]:
    """Native :func:`synctalk.ops.ray_aabb` (same results, bit for bit)."""
    from synctalk.ops.raymarch import _ray_aabb_torch

    dtype = _ray_dtype("ray_aabb", rays_o, rays_d)
    device = _same_device("ray_aabb", rays_o=rays_o, rays_d=rays_d)
    if _rays_need_grad(rays_o, rays_d) or _cuda_unsupported(device):
        return _ray_aabb_torch(rays_o, rays_d, aabb, near)
    box = aabb.to(device=device, dtype=dtype).contiguous()
    t_near, t_far = load().ray_aabb(rays_o.contiguous(), rays_d.contiguous(), box, float(near))
    return t_near, t_far


_OCCUPANCY_CACHE: tuple | None = None  # (weakref to the grid, its version, its bitfield)


def _occupancy_args(occupied: Tensor | None, device: torch.device
                    ) -> tuple[Tensor | None, Tensor | None, int]:
    """The marching kernels' occupancy arguments ``(occupied, bits, bits_res)``: none without
    a grid; on the CPU the cached bitfield of the ``[res]³`` grid and its resolution; on CUDA
    the bool grid itself."""
    if occupied is None:
        return None, None, 0
    if device.type == "cpu":
        return None, _occupancy_bits(occupied), occupied.shape[0]
    return _prep(occupied, torch.bool), None, 0


def _occupancy_bits(occupied: Tensor) -> Tensor:
    """The CPU occupancy grid as a bitfield (``pack_bitfield``, 1 bit per cell: 8× less
    memory for the marching kernel to miss in), cached for the last grid seen — a grid
    typically serves many batches between updates. The cache holds only while it is the
    same tensor object with the same version counter (every in-place torch op on it or
    on a view of it bumps the counter), so updated or new grids are packed again."""
    global _OCCUPANCY_CACHE
    cached = _OCCUPANCY_CACHE
    if cached is not None and cached[0]() is occupied and cached[1] == occupied._version:
        return cached[2]
    bits = load().pack_bitfield(_prep(occupied, torch.bool).reshape(-1))
    _OCCUPANCY_CACHE = (weakref.ref(occupied), occupied._version, bits)
    return bits


def march_rays(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, occupied: Tensor | None,
               aabb: Tensor, n_samples: int, perturb: bool, generator: torch.Generator | None) -> PackedSamples:
    """Native :func:`synctalk.ops.march_rays`: identical samples to the torch reference,
    including the jitter (the uniform noise is drawn here exactly as the reference draws it,
    ``torch.rand((N, n_samples), generator=generator)``, and handed to the kernel)."""
    from synctalk.ops.raymarch import _march_rays_torch

    if (_plain_f32(rays_o, rays_d, t_near, t_far, aabb) and (occupied is None or occupied.is_cpu)
            and not _rays_need_grad(rays_o, rays_d, t_near, t_far)):
        dtype, device = torch.float32, rays_o.device  # the training case: nothing to convert
    else:
        dtype = _ray_dtype("march_rays", rays_o, rays_d, t_near=t_near, t_far=t_far)
        device = _same_device("march_rays", rays_o=rays_o, rays_d=rays_d, t_near=t_near, t_far=t_far,
                              occupied=occupied)
        if _rays_need_grad(rays_o, rays_d, t_near, t_far) or _cuda_unsupported(device):
            return _march_rays_torch(rays_o, rays_d, t_near, t_far, occupied, aabb, n_samples, perturb,
                                     generator)
    N = rays_o.shape[0]
    noise = None
    if perturb:
        noise = torch.rand((N, n_samples), generator=generator, device=device, dtype=dtype)
    occ, bits, bits_res = _occupancy_args(occupied, device)
    box = aabb.to(device=device, dtype=dtype).contiguous()
    ray_indices, t_starts, t_ends, t_pos, offsets, counts = load().march_rays(
        _prep(rays_o, dtype), _prep(rays_d, dtype), _prep(t_near, dtype), _prep(t_far, dtype), occ, box,
        int(n_samples), noise, bits, bits_res)
    return PackedSamples(ray_indices=ray_indices, t_starts=t_starts, t_ends=t_ends, offsets=offsets,
                         counts=counts, n_rays=N, t_pos=t_pos if perturb else None)


# ----------------------------------------------------------------------------------------
# compositing


def _check_packing(samples: PackedSamples, device: torch.device) -> None:
    """Offsets/counts must describe contiguous per-ray runs inside the S samples (the
    kernels index with them); checked on CPU tensors, where it costs no device sync."""
    if samples.offsets.shape != (samples.n_rays,) or samples.counts.shape != (samples.n_rays,):
        raise InputError(f"composite: samples.offsets/counts must have shape [{samples.n_rays}], got "
                         f"{list(samples.offsets.shape)} and {list(samples.counts.shape)}")
    if device.type == "cpu" and samples.n_rays:
        offsets = _prep(samples.offsets, torch.int64)
        counts = _prep(samples.counts, torch.int64)
        if not load().packing_ok(offsets, counts, samples.n_samples):
            raise InputError("composite: samples.offsets/counts point outside the packed samples")


def composite(sigmas: Tensor, rgbs: Tensor, samples: PackedSamples, extras: Tensor | None,
              bg: Tensor | None) -> dict[str, Tensor]:
    """Native :func:`synctalk.ops.composite` (same keys and values, differentiable w.r.t.
    ``sigmas``, ``rgbs``, ``extras`` and ``bg``, first order: the autograd function is the
    extension's ``composite``, in C++)."""
    from synctalk.ops.composite import _composite_torch

    offsets, counts = samples.offsets, samples.counts
    if (_plain_f32(sigmas, rgbs, extras, bg, samples.t_starts, samples.t_ends)
            and (bg is None or bg.dim() == 2) and offsets.dtype is torch.int64
            and counts.dtype is torch.int64 and offsets.is_cpu and counts.is_cpu
            and offsets.is_contiguous() and counts.is_contiguous()):
        # The training case (float32 CPU tensors): no conversions, only the packing check.
        N = samples.n_rays
        if offsets.shape != (N,) or counts.shape != (N,):
            _check_packing(samples, offsets.device)  # raises the shape error
        if N and not load().packing_ok(offsets, counts, samples.n_samples):
            raise InputError("composite: samples.offsets/counts point outside the packed samples")
        weights, trans, alphas, opacity, depth, color, extras_out = load().composite(
            sigmas, rgbs, samples.t_starts, samples.t_ends, offsets, counts, extras, bg)
        result = {"weights": weights, "transmittance": trans, "alphas": alphas, "opacity": opacity,
                  "depth": depth, "color": color}
        if extras is not None:
            result["extras"] = extras_out
        return result

    op = "composite"
    _require_float(op, sigmas=sigmas, rgbs=rgbs, extras=extras, bg=bg)
    device = _same_device(op, sigmas=sigmas, rgbs=rgbs, extras=extras, bg=bg, t_starts=samples.t_starts,
                          offsets=samples.offsets)
    if _cuda_unsupported(device):
        return _composite_torch(sigmas, rgbs, samples, extras, bg)
    _check_packing(samples, device)
    out_dtype = torch.promote_types(torch.promote_types(sigmas.dtype, rgbs.dtype),
                                    extras.dtype if extras is not None else sigmas.dtype)
    dtype = _compute_dtype(sigmas, rgbs, extras, bg)
    N, C = samples.n_rays, rgbs.shape[1]
    if bg is not None and bg.dim() == 1:
        bg = bg.expand(N, C)
    outs = load().composite(
        _prep(sigmas, dtype), _prep(rgbs, dtype), _prep(samples.t_starts, dtype), _prep(samples.t_ends, dtype),
        _prep(samples.offsets, torch.int64), _prep(samples.counts, torch.int64), _prep(extras, dtype),
        _prep(bg, dtype))
    weights, trans, alphas, opacity, depth, color, extras_out = outs
    result = {"weights": weights, "transmittance": trans, "alphas": alphas, "opacity": opacity,
              "depth": depth, "color": color}
    if extras is not None:
        result["extras"] = extras_out
    if out_dtype not in (torch.float32, torch.float64):
        result = {key: value.to(out_dtype) for key, value in result.items()}
    return result


# ----------------------------------------------------------------------------------------
# the alive-ray loop


def march_next(rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, next_index: Tensor,
               alive: Tensor, occupied: Tensor | None, aabb: Tensor, n_samples: int, k: int):
    """Native :func:`synctalk.ops.alive.march_next`: the same samples bit for bit (those of
    ``march_rays``), ``next_index`` updated in place. Returns a
    :class:`~synctalk.ops.alive.StepSamples`."""
    from synctalk.ops.alive import StepSamples, _march_next_torch

    dtype = _ray_dtype("march_next", rays_o, rays_d, t_near=t_near, t_far=t_far)
    device = _same_device("march_next", rays_o=rays_o, rays_d=rays_d, t_near=t_near, t_far=t_far,
                          next_index=next_index, alive=alive, occupied=occupied)
    if _cuda_unsupported(device):
        return _march_next_torch(rays_o, rays_d, t_near, t_far, next_index, alive, occupied, aabb, n_samples, k)
    occ, bits, bits_res = _occupancy_args(occupied, device)
    box = aabb.to(device=device, dtype=dtype).contiguous()
    t_starts, t_ends, count = load().march_next(
        _prep(rays_o, dtype), _prep(rays_d, dtype), _prep(t_near, dtype), _prep(t_far, dtype), next_index,
        _prep(alive, torch.int64), occ, box, int(n_samples), int(k), bits, bits_res)
    return StepSamples(t_starts=t_starts, t_ends=t_ends, count=count)


def composite_step(sigmas: Tensor, rgbs: Tensor | None, samples, alive: Tensor, state, early_stop: float,
                   extras: Tensor | None) -> Tensor:
    """Native :func:`synctalk.ops.alive.composite_step` (same weights and state updates to
    fp32 round-off; the per-sample inputs are computed in the state's dtype)."""
    from synctalk.ops.alive import _composite_step_torch

    device = _same_device("composite_step", sigmas=sigmas, rgbs=rgbs, extras=extras,
                          t_starts=samples.t_starts, t_ends=samples.t_ends, count=samples.count, alive=alive,
                          transmittance=state.transmittance)
    if _cuda_unsupported(device):
        return _composite_step_torch(sigmas, rgbs, samples, alive, state, early_stop, extras)
    dtype = state.transmittance.dtype
    return load().composite_step(
        _prep(sigmas, dtype), _prep(rgbs, dtype), _prep(samples.t_starts, dtype), _prep(samples.t_ends, dtype),
        _prep(samples.count, torch.int64), _prep(alive, torch.int64), _prep(extras, dtype), state.transmittance,
        state.opacity, state.depth, state.color, state.extras if extras is not None else None, float(early_stop))


# ----------------------------------------------------------------------------------------
# density-grid helpers (not dispatched ops; the native counterparts of synctalk.ops.density)


def morton3(ix: Tensor, iy: Tensor, iz: Tensor) -> Tensor:
    """Native :func:`synctalk.ops.density.morton3` for coordinates in ``[0, 1024)``
    (``int64`` tensors of one shape) → int64 codes."""
    ix, iy, iz = (torch.as_tensor(v).to(torch.int64).contiguous() for v in (ix, iy, iz))
    _same_device("morton3", ix=ix, iy=iy, iz=iz)
    if ix.shape != iy.shape or ix.shape != iz.shape:
        raise InputError(f"morton3: ix, iy, iz must have one shape, got {list(ix.shape)}, "
                         f"{list(iy.shape)}, {list(iz.shape)}")
    for v in (ix, iy, iz):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1024):
            raise InputError("morton3 (native): coordinates must be in [0, 1024)")
    return load().morton3_encode(ix, iy, iz)


def morton3_decode(codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Native :func:`synctalk.ops.density.morton3_decode` for codes below ``2^30``."""
    codes = torch.as_tensor(codes).to(torch.int64).contiguous()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << 30):
        raise InputError("morton3_decode (native): codes must be in [0, 2^30)")
    ix, iy, iz = load().morton3_decode(codes)
    return ix, iy, iz


def pack_bitfield(occupied: Tensor) -> Tensor:
    """Native :func:`synctalk.ops.density.pack_bitfield`: bool tensor (read in C order) →
    ``[ceil(n / 8)]`` uint8, element ``8j + k`` in bit ``k`` of byte ``j``."""
    return load().pack_bitfield(occupied.reshape(-1).to(torch.bool).contiguous())


def dilate_occupancy(occupied: Tensor, radius: int = 1) -> Tensor:
    """Native :func:`synctalk.ops.density.dilate_occupancy` (same arguments, same result)."""
    return load().dilate_grid(occupied.contiguous(), check_dilation(occupied, radius))


def unpack_bitfield(bits: Tensor, n: int | None = None) -> Tensor:
    """Native :func:`synctalk.ops.density.unpack_bitfield`: ``[B]`` uint8 → ``[n]`` bool
    (``n`` defaults to ``8·B``)."""
    if bits.dtype != torch.uint8 or bits.dim() != 1:
        raise InputError(f"bitfield must be a 1-D uint8 tensor, got {bits.dtype} {list(bits.shape)}")
    n = 8 * bits.numel() if n is None else int(n)
    if not 0 <= n <= 8 * bits.numel():
        raise InputError(f"bitfield of {bits.numel()} bytes holds {8 * bits.numel()} bits, not {n}")
    return load().unpack_bitfield(bits.contiguous(), n)


# ----------------------------------------------------------------------------------------
# registration

#: The dispatched ops this backend implements.
IMPLEMENTATIONS = {
    "grid_encode": grid_encode,
    "triplane_encode": triplane_encode,
    "ray_aabb": ray_aabb,
    "march_rays": march_rays,
    "composite": composite,
    "march_next": march_next,
    "composite_step": composite_step,
}


def register() -> None:
    """Build/load the extension and register every op under ``"native"``.

    Raises:
        NativeBuildError: when the extension cannot be built (the backend registry turns
            this into a one-time warning and falls back to the torch reference).
    """
    load()
    for op, fn in IMPLEMENTATIONS.items():
        _backend.register_backend(op, "native", fn)


if not disabled():
    _backend.register_loader("native", register)

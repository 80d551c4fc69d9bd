"""``synctalk doctor``: report what this installation and machine can run.

Exit status 0 when the CPU pipeline can run (torch, mediapipe, OpenCV and ffmpeg work),
1 otherwise. Missing model files are warnings (``synctalk models fetch`` gets them);
doctor itself never downloads or changes anything.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from synctalk.cli import subcommand_parser_kwargs

#: Free space below which a disk check warns, in bytes.
LOW_DISK_BYTES = 1 << 30


@dataclasses.dataclass
class Check:
    """One line of the report.

    Attributes:
        name: what was checked, e.g. ``"torch"``.
        status: ``"ok"``, ``"info"`` (not needed on CPU), ``"warn"`` (works, with a
            caveat) or ``"fail"`` (the CPU pipeline cannot run).
        detail: one human-readable line.
        data: machine-readable values for ``--json`` (versions, paths, bytes).
    """

    name: str
    status: str
    detail: str
    data: dict = dataclasses.field(default_factory=dict)


def register(subparsers) -> None:
    """Add ``doctor`` to the CLI."""
    parser = subparsers.add_parser(
        "doctor", help="check the installation: versions, devices, model files, ffmpeg, disk",
        description="Report Python/torch/CUDA/native-ops/MediaPipe/OpenCV versions, model "
                    "files, ffmpeg and free disk space. Exits 0 when the CPU pipeline can "
                    "run, 1 otherwise. Never downloads anything.",
        **subcommand_parser_kwargs())
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_doctor)


def run_checks() -> list[Check]:
    """Run every check, in report order."""
    torch_check, torch = _import_check("torch", "torch", "pip install torch")
    mediapipe_check, _ = _import_check("mediapipe", "mediapipe", "pip install mediapipe")
    opencv_check, _ = _import_check("opencv", "cv2", "pip install opencv-python-headless")
    return [_python_check(), torch_check, _cuda_check(torch), _native_ops_check(),
            mediapipe_check, opencv_check, _ffmpeg_check(), *_model_checks(), *_disk_checks()]


def _python_check() -> Check:
    version = platform.python_version()
    ok = sys.version_info >= (3, 10)
    detail = f"{version} ({sys.executable})" + ("" if ok else " — synctalk needs Python ≥ 3.10")
    return Check("python", "ok" if ok else "fail", detail,
                 {"version": version, "executable": sys.executable})


def _import_check(name: str, module: str, fix: str):
    """Import ``module``; return ``(Check, module or None)``."""
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # a broken install can raise more than ImportError
        return Check(name, "fail", f"cannot import {module}: {e} — {fix}"), None
    version = getattr(mod, "__version__", "unknown")
    return Check(name, "ok", version, {"version": version}), mod


def _cuda_check(torch) -> Check:
    if torch is None:
        return Check("cuda", "info", "unknown: torch is not importable", {"available": False})
    if not torch.cuda.is_available():
        return Check("cuda", "info", "not available: everything runs on the CPU",
                     {"available": False})
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("cuda", "ok", f"{', '.join(names)} (CUDA {torch.version.cuda})",
                 {"available": True, "devices": names, "cuda_version": torch.version.cuda})


def _native_ops_check() -> Check:
    """State of the native ops (never builds them): ok when built, info otherwise (the
    torch reference runs everything), warn when a build failed in this process."""
    try:
        from synctalk.ops.native import native_status
    except Exception as e:  # torch missing or broken: the torch check reports it
        return Check("native ops", "info", f"unknown: {e}", {"state": "unknown"})
    status = native_status()
    level = {"loaded": "ok", "cached": "ok", "failed": "warn"}.get(status["state"], "info")
    return Check("native ops", level, f"{status['state']}: {status['detail']}", status)


def _ffmpeg_check() -> Check:
    try:
        from synctalk.media import ffmpeg_exe

        exe = ffmpeg_exe()
        proc = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    except (ImportError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        return Check("ffmpeg", "fail", f"not usable: {e} — pip install imageio-ffmpeg")
    if proc.returncode != 0 or not proc.stdout:
        return Check("ffmpeg", "fail", f"{exe} -version failed (exit {proc.returncode})",
                     {"path": exe})
    version_line = proc.stdout.splitlines()[0]
    return Check("ffmpeg", "ok", f"{exe} — {version_line}",
                 {"path": exe, "version": version_line})


def _model_checks() -> list[Check]:
    from synctalk.models import MODELS, model_status

    checks = []
    for spec in MODELS.values():
        status = model_status(spec)
        data = {"path": str(status.path), "source": status.source, "state": status.state}
        name = f"model {spec.name}"
        if status.state == "ok":
            checks.append(Check(name, "ok", f"{status.path} (sha256 ok, from {status.source})",
                                data))
            continue
        fix = ("run `synctalk models fetch`" if status.source == "cache"
               else f"fix or unset {spec.env_var}")
        checks.append(Check(name, "warn", f"{status.state}: {status.path} — {fix}", data))
    return checks


def _disk_checks() -> list[Check]:
    from synctalk.models import cache_dir

    checks = []
    for label, path in (("cache dir", cache_dir()), ("current dir", Path.cwd())):
        existing = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        status = "ok" if free >= LOW_DISK_BYTES else "warn"
        checks.append(Check(f"disk: {label}", status, f"{free / 2**30:.1f} GiB free at {path}",
                            {"path": str(path), "free_bytes": free}))
    return checks


def _doctor(args) -> int:
    checks = run_checks()
    failures = [c for c in checks if c.status == "fail"]
    warnings = [c for c in checks if c.status == "warn"]
    if args.json:
        report = {"ready": not failures,
                  "failures": [c.name for c in failures],
                  "warnings": [c.name for c in warnings],
                  "checks": [dataclasses.asdict(c) for c in checks]}
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_table(checks)
        if failures:
            print("\nCPU pipeline: NOT ready — fix these:")
            for c in failures:
                print(f"  - {c.name}: {c.detail}")
        else:
            print(f"\nCPU pipeline: ready ({len(warnings)} warning(s))")
    return 1 if failures else 0


def _print_table(checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    print(f"{'CHECK'.ljust(width)}  STATUS  DETAIL")
    for c in checks:
        print(f"{c.name.ljust(width)}  {c.status.ljust(6)}  {c.detail}")

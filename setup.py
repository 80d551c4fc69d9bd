"""Install shim. All metadata lives in pyproject.toml.

Installing never compiles anything by default: the native ops in ``cuda_ext/`` are built
lazily on first use (see ``synctalk.ops.native``). Two additions to the standard build:

* wheels carry the ``cuda_ext/`` sources as ``synctalk/_cuda_ext`` so an installed
  package can build them (an editable install uses ``cuda_ext/`` in the checkout);
* ``SYNCTALK_BUILD_NATIVE=1 pip install ...`` also compiles them into the user cache
  right away, with the environment's Python; a failure is reported and never fails the
  install.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
NATIVE_SOURCES = ROOT / "cuda_ext"
NATIVE_SUFFIXES = {".h", ".inc", ".cpp", ".cu", ".cuh"}


class BuildPy(build_py):
    """``build_py`` that ships the native sources and optionally prebuilds them."""

    def run(self):
        super().run()
        if NATIVE_SOURCES.is_dir() and not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "synctalk" / "_cuda_ext"
            for src in NATIVE_SOURCES.rglob("*"):
                if src.is_file() and src.suffix in NATIVE_SUFFIXES:
                    dst = target / src.relative_to(NATIVE_SOURCES)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
        if os.environ.get("SYNCTALK_BUILD_NATIVE") == "1":
            _prebuild_native()


def _prebuild_native() -> None:
    """Compile the native ops with the installing environment's Python (outside pip's
    isolated build environment, which has no torch); warn on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from synctalk.ops.native import load; load()")
    print("SYNCTALK_BUILD_NATIVE=1: building the native ops now", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env)
    if proc.returncode != 0:
        print("warning: the native ops did not build (exit status "
              f"{proc.returncode}); synctalk will use the torch reference ops — "
              "`synctalk native build --verbose` shows why", file=sys.stderr)


setup(cmdclass={"build_py": BuildPy})

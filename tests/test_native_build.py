"""Building and loading the native ops: compiler checks of the sources, the loader's
fallback when a build fails, and the ``synctalk native`` command."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from synctalk.cli import main
from synctalk.errors import InputError
from synctalk.ops import backend
from synctalk.ops import native

SOURCES = native.source_dir()


def _compile(cmd: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
    return cmd, subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _run_all(cmds: list[list[str]]) -> None:
    """Run the compiler commands two at a time; fail with every error found."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_compile, cmds))
    errors = [f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}" for cmd, proc in results if proc.returncode]
    assert not errors, "\n\n".join(errors)


def test_sources_are_found():
    assert SOURCES is not None and (SOURCES / "bindings.cpp").is_file()
    assert sorted(p.name for p in (SOURCES / "cpu").glob("*.cpp")) == [
        "alive_cpu.cpp", "composite_cpu.cpp", "density_cpu.cpp", "grid_cpu.cpp", "plane_cpu.cpp", "raymarch_cpu.cpp"]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpu_sources_compile_cleanly_without_torch_or_cuda():
    """The CPU loops and the shared headers are plain C++17: no warnings with -Wall -Wextra."""
    cmds = [["g++", "-fsyntax-only", "-std=c++17", "-fopenmp", "-Wall", "-Wextra", "-Werror",
             f"-I{SOURCES / 'include'}", str(src)] for src in sorted((SOURCES / "cpu").glob("*.cpp"))]
    _run_all(cmds)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """Syntax/type check of the CUDA kernels (they include no torch header): device code for
    sm_80, host pass with -Wall -Wextra, every warning an error. Needs no GPU."""
    cmds = [["nvcc", "-c", "--std=c++17", "-arch=sm_80", f"-I{SOURCES / 'include'}",
             "-Xcompiler", "-Wall,-Wextra", "--Werror", "all-warnings", str(src),
             "-o", str(tmp_path / (src.stem + ".o"))] for src in sorted((SOURCES / "cuda").glob("*.cu"))]
    assert len(cmds) == 5
    _run_all(cmds)


def test_build_config_tag_tracks_the_sources(tmp_path, monkeypatch):
    copy = tmp_path / "cuda_ext"
    shutil.copytree(SOURCES, copy)
    monkeypatch.setattr(native, "source_dir", lambda: copy)
    first = native.build_config()
    assert first.build_dir.parent == native.BUILD_ROOT and first.tag.startswith("cpu-")
    assert str(copy / "bindings.cpp") in map(str, first.sources)
    assert native.build_config().tag == first.tag
    header = copy / "include" / "synctalk" / "grid.h"
    header.write_text(header.read_text() + "\n// changed\n")
    assert native.build_config().tag != first.tag


@pytest.fixture
def isolated_loader(monkeypatch, tmp_path):
    """The loader with no module loaded and builds under tmp_path; the backend registry
    without the native implementations (restored afterwards)."""
    monkeypatch.setattr(native, "_MODULE", None)
    monkeypatch.setattr(native, "_ERROR", None)
    monkeypatch.setattr(native, "BUILD_ROOT", tmp_path / "native")
    registry = {op: {k: v for k, v in impls.items() if k != "native"} for op, impls in backend._REGISTRY.items()}
    monkeypatch.setattr(backend, "_REGISTRY", registry)
    monkeypatch.setattr(backend, "_LOADERS", {"native": native.register})
    monkeypatch.setattr(backend, "_LOADER_ERRORS", {})
    return tmp_path


def test_a_failed_build_falls_back_to_torch_with_a_warning(isolated_loader, monkeypatch, caplog):
    """A compile error is a warning: auto runs the torch reference; native says why."""
    broken = isolated_loader / "broken"
    (broken / "include").mkdir(parents=True)
    (broken / "cpu").mkdir()
    (broken / "bindings.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(native, "source_dir", lambda: broken)
    with caplog.at_level(logging.WARNING, logger="synctalk.ops.backend"):
        fn = backend.resolve("grid_encode", "auto")
    assert fn is backend._REGISTRY["grid_encode"]["torch"]
    assert "could not be loaded" in caplog.text and "build failed" in caplog.text
    status = native.native_status()
    assert status["state"] == "failed" and "build failed" in status["detail"]
    with pytest.raises(InputError, match="not available.*build failed"):
        backend.resolve("composite", "native")


def test_missing_toolchain_is_reported_without_compiling(isolated_loader, monkeypatch):
    monkeypatch.setattr(native, "_toolchain_problem", lambda: "no C++ compiler found: install g++")
    assert native.native_status()["state"] == "unavailable"
    with pytest.raises(native.NativeBuildError, match="install g\\+\\+"):
        native.load()
    assert backend.available("march_rays") == ["torch"]


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("SYNCTALK_NATIVE", "0")
    status = native.native_status()
    assert status["state"] == "disabled" and "SYNCTALK_NATIVE=0" in status["detail"]
    assert main(["native", "build"]) == 1


def test_missing_sources_are_reported(monkeypatch):
    monkeypatch.setattr(native, "source_dir", lambda: None)
    status = native.native_status()
    assert status["state"] == "unavailable" and "cuda_ext sources" in status["detail"]


def test_native_cli_build_and_status(capsys):
    if native._toolchain_problem() is not None:
        pytest.skip(f"cannot build the native ops here: {native._toolchain_problem()}")
    assert main(["native", "build"]) == 0
    out = capsys.readouterr().out
    assert "native ops: loaded (CPU" in out and "CUDA kernels: " in out
    assert main(["native", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "loaded" and Path(status["build_dir"]).is_dir()
    assert Path(native.build_config().library).is_file()

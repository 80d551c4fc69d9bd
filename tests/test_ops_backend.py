"""Backend dispatch of the hot ops (synctalk.ops.backend)."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from synctalk.errors import InputError
from synctalk.ops import OPS, GridSpec, available, chosen, grid_encode, init_table, resolve
from synctalk.ops import backend as be


@pytest.fixture
def registry():
    """A torch-only registry for the test (doubles get registered); the real one is restored
    afterwards, native backend and loaders included."""
    saved = copy.copy({op: dict(impls) for op, impls in be._REGISTRY.items()})
    loaders, errors = dict(be._LOADERS), dict(be._LOADER_ERRORS)
    for impls in be._REGISTRY.values():
        for name in [n for n in impls if n != "torch"]:
            del impls[name]
    be._LOADERS.clear()
    be._LOADER_ERRORS.clear()
    yield be
    be._REGISTRY.clear()
    be._REGISTRY.update(saved)
    be._LOADERS.clear()
    be._LOADERS.update(loaders)
    be._LOADER_ERRORS.clear()
    be._LOADER_ERRORS.update(errors)


def test_torch_reference_registered_for_every_op():
    for op in OPS:
        assert "torch" in available(op)
    assert "torch" in available()
    assert set(chosen("torch").values()) == {"torch"}


def test_unknown_backend_names_the_available_ones():
    spec = GridSpec(2, 1, 1, 4, 4, 8)
    with pytest.raises(InputError) as e:
        grid_encode(torch.rand(3, 2), init_table(spec), spec, backend="cuda-magic")
    msg = str(e.value)
    assert "cuda-magic" in msg and "torch" in msg and "auto" in msg
    with pytest.raises(InputError, match="unknown op"):
        resolve("no_such_op")


def test_auto_prefers_native_then_falls_back(registry):
    spec = GridSpec(2, 1, 1, 4, 4, 8)
    calls = []

    def fake_native(x, table, spec):
        calls.append(x.shape)
        return torch.zeros(x.shape[0], spec.out_dim)

    registry.register_backend("grid_encode", "native", fake_native)
    assert available("grid_encode")[:2] == ["native", "torch"]
    assert "native" in available()
    out = grid_encode(torch.rand(5, 2), init_table(spec, scale=1.0), spec)
    assert calls == [torch.Size([5, 2])] and out.abs().sum() == 0
    assert chosen()["grid_encode"] == "native" and chosen()["composite"] == "torch"
    torch_out = grid_encode(torch.rand(5, 2), init_table(spec, scale=1.0), spec, backend="torch")
    assert torch_out.abs().sum() > 0 and len(calls) == 1
    registry.unregister_backend("grid_encode", "native")
    assert resolve("grid_encode") is resolve("grid_encode", "torch")
    with pytest.raises(InputError):
        registry.unregister_backend("grid_encode", "torch")


def test_lazy_loader_runs_once_and_a_failure_falls_back_with_a_warning(registry, caplog):
    runs = []

    def broken():
        runs.append(1)
        raise RuntimeError("g++ not found")

    registry.register_loader("native", broken)
    with caplog.at_level(logging.WARNING, logger="synctalk.ops.backend"):
        fn = resolve("composite")
        resolve("composite")
    assert fn is resolve("composite", "torch") and runs == [1]
    assert "g++ not found" in caplog.text and "g++ not found" in registry.loader_error("native")
    with pytest.raises(InputError, match="g\\+\\+ not found"):
        resolve("composite", "native")

    def good():
        registry.register_backend("ray_aabb", "native", lambda *a: "native-result")

    registry.register_loader("native", good)
    assert resolve("ray_aabb", "native")() == "native-result"
    assert resolve("ray_aabb")() == "native-result"


def test_reserved_and_unknown_registrations_are_rejected(registry):
    with pytest.raises(InputError):
        registry.register_backend("grid_encode", "auto", lambda: None)
    with pytest.raises(InputError):
        registry.register_backend("not_an_op", "native", lambda: None)

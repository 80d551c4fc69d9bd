"""Backend registry of the hot ops: one public function per op, several implementations.

Every hot op (``grid_encode``, ``triplane_encode``, ``ray_aabb``, ``march_rays``,
``composite``, and the alive-ray loop's ``march_next`` and ``composite_step``) is a public
function in :mod:`synctalk.ops` with a ``backend: str = "auto"`` keyword. The function looks
its implementation up here with :func:`resolve` and calls it with the same positional/keyword
arguments minus ``backend``.

* ``"torch"`` — the pure-PyTorch reference, registered by the op modules on import; always
  present, differentiable by autograd, the oracle for tests.
* ``"native"`` — the C++/OpenMP + CUDA kernels of ``cuda_ext/`` (registered by their loader).
* anything else (``"tcnn"``, ``"nerfacc"``) — optional adapters to third-party libraries.

``"auto"`` picks the first of :data:`AUTO_ORDER` registered for the op (``native`` when
built, else ``torch``). A backend may be registered *lazily*: :func:`register_loader` stores a
callable that is run once, the first time that backend is asked for (explicitly or through
``"auto"``); it registers implementations with :func:`register_backend` or raises, in which
case a warning is logged once and ``"auto"`` falls back to the next backend. An unknown or
unregistered backend raises :class:`~synctalk.errors.InputError` naming the available ones.
"""
from __future__ import annotations

import logging
from typing import Callable

from synctalk.errors import InputError

log = logging.getLogger(__name__)

#: Names of the dispatched ops, in documentation order.
OPS: tuple[str, ...] = ("grid_encode", "triplane_encode", "ray_aabb", "march_rays", "composite", "march_next",
                        "composite_step")

#: Preference order of ``backend="auto"`` (fastest first); ``torch`` is always last.
AUTO_ORDER: tuple[str, ...] = ("native", "torch")

_REGISTRY: dict[str, dict[str, Callable]] = {op: {} for op in OPS}
_LOADERS: dict[str, Callable[[], None]] = {}
_LOADER_ERRORS: dict[str, str] = {}
_AUTO_LOGGED: set[tuple[str, str]] = set()


def register_backend(op_name: str, backend_name: str, fn: Callable) -> None:
    """Register ``fn`` as the ``backend_name`` implementation of ``op_name``.

    Args:
        op_name: one of :data:`OPS`.
        backend_name: e.g. ``"torch"``, ``"native"``; ``"auto"`` is reserved.
        fn: callable taking the op's arguments without ``backend``. Registering again
            replaces the previous implementation (a rebuilt extension, a test double).
    """
    if op_name not in _REGISTRY:
        raise InputError(f"unknown op {op_name!r}; ops are: {', '.join(OPS)}")
    if backend_name == "auto" or not backend_name:
        raise InputError(f"invalid backend name {backend_name!r}: 'auto' is reserved")
    _REGISTRY[op_name][backend_name] = fn


def unregister_backend(op_name: str, backend_name: str) -> None:
    """Remove a registered implementation (no error when absent). ``torch`` cannot be removed."""
    if backend_name == "torch":
        raise InputError("the torch reference backend cannot be unregistered")
    _REGISTRY.get(op_name, {}).pop(backend_name, None)


def register_loader(backend_name: str, loader: Callable[[], None]) -> None:
    """Register a lazy loader for ``backend_name``, run once when that backend is first needed.

    The loader registers the backend's implementations with :func:`register_backend`; if it
    raises, the error is logged once as a warning, the backend stays unavailable and
    ``"auto"`` falls back to the next backend in :data:`AUTO_ORDER`.
    """
    _LOADERS[backend_name] = loader
    _LOADER_ERRORS.pop(backend_name, None)


def loader_error(backend_name: str) -> str | None:
    """The message of the failed lazy load of ``backend_name``, or None (not tried / loaded)."""
    return _LOADER_ERRORS.get(backend_name)


def _run_loader(backend_name: str) -> None:
    loader = _LOADERS.pop(backend_name, None)
    if loader is None:
        return
    try:
        loader()
    except Exception as e:  # a failed native build must never crash a user's run
        _LOADER_ERRORS[backend_name] = f"{type(e).__name__}: {e}"
        log.warning("ops: backend %r could not be loaded (%s); using the next available backend",
                    backend_name, _LOADER_ERRORS[backend_name])


def _check_op(op_name: str) -> dict[str, Callable]:
    try:
        return _REGISTRY[op_name]
    except KeyError:
        raise InputError(f"unknown op {op_name!r}; ops are: {', '.join(OPS)}") from None


def available(op_name: str | None = None) -> list[str]:
    """Backends that can run ``op_name`` now (loading lazy backends first).

    Args:
        op_name: one of :data:`OPS`, or None for every backend that implements at least one op.

    Returns:
        Backend names in :data:`AUTO_ORDER` preference order (``"torch"`` last among them),
        then any others alphabetically. Never empty: ``"torch"`` is always there.
    """
    for name in list(_LOADERS):
        _run_loader(name)
    if op_name is None:
        names = set().union(*(_REGISTRY[op] for op in OPS))
    else:
        names = set(_check_op(op_name))
    ordered = [b for b in AUTO_ORDER if b in names]
    return ordered + sorted(names - set(AUTO_ORDER))


def resolve(op_name: str, backend: str = "auto") -> Callable:
    """The implementation of ``op_name`` for ``backend``.

    Args:
        op_name: one of :data:`OPS`.
        backend: ``"auto"`` (first of :data:`AUTO_ORDER` that is registered) or a name
            from :func:`available`.

    Raises:
        InputError: unknown op, or a backend that is not available for this op; the
            message lists the available backends.
    """
    impls = _check_op(op_name)
    if backend == "auto":
        for name in AUTO_ORDER:
            if name not in impls and name in _LOADERS:
                _run_loader(name)
            if name in impls:
                if (op_name, name) not in _AUTO_LOGGED:
                    _AUTO_LOGGED.add((op_name, name))
                    log.debug("ops: %s uses backend %r (auto)", op_name, name)
                return impls[name]
        raise InputError(f"no backend registered for op {op_name!r}")  # torch missing: a bug
    if backend not in impls and backend in _LOADERS:
        _run_loader(backend)
    try:
        return impls[backend]
    except KeyError:
        why = f" ({_LOADER_ERRORS[backend]})" if backend in _LOADER_ERRORS else ""
        raise InputError(
            f"backend {backend!r} is not available for op {op_name!r}{why}; available: "
            f"{', '.join(['auto'] + available(op_name))}") from None


def chosen(backend: str = "auto") -> dict[str, str]:
    """Which backend each op runs with for ``backend`` (``{"grid_encode": "torch", ...}``);
    for logging the choice at the start of a run. Raises like :func:`resolve`."""
    out = {}
    for op in OPS:
        fn = resolve(op, backend)
        out[op] = next(name for name, f in _REGISTRY[op].items() if f is fn)
    return out

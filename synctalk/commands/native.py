"""``synctalk native build|status``: build the native ops now, or show their state.

The native ops (``cuda_ext/``) otherwise build lazily the first time an op runs with
``--backend auto|native``; see :mod:`synctalk.ops.native`.
"""
from __future__ import annotations

import json

from synctalk.cli import group_parser_kwargs, subcommand_parser_kwargs


def register(subparsers) -> None:
    """Add ``native`` with its ``build`` and ``status`` actions to the CLI."""
    parser = subparsers.add_parser(
        "native", help="build the native (C++/OpenMP, CUDA) ops or show their state",
        description="The hot ops (grid encoding, ray marching, compositing) have native "
                    "kernels in cuda_ext/ that build on first use into the user cache "
                    "(SYNCTALK_CACHE_DIR, else $XDG_CACHE_HOME/synctalk, else ~/.cache/synctalk). "
                    "SYNCTALK_NATIVE=0 turns them off.",
        **group_parser_kwargs())
    actions = parser.add_subparsers(dest="native_action", metavar="ACTION")
    actions.required = True

    build = actions.add_parser(
        "build", help="compile the native ops now (no-op when the cached build is current)",
        description="Compile cuda_ext/ for this machine (CPU with g++/OpenMP; CUDA too when "
                    "torch is a CUDA build, a GPU is visible and nvcc is found) and load it.",
        **subcommand_parser_kwargs())
    build.add_argument("--force", action="store_true", help="delete the cached build and compile again")
    build.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    build.set_defaults(func=_build)

    status = actions.add_parser(
        "status", help="show whether the native ops are built, where, and with CUDA or not",
        description="Report the native backend's state without building anything.",
        **subcommand_parser_kwargs())
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)


def _build(args) -> int:
    import time

    from synctalk.ops import native

    if native.disabled():
        print("native ops are disabled (SYNCTALK_NATIVE=0); unset it to build them")
        return 1
    start = time.monotonic()
    module = native.load(force=args.force, verbose=args.verbose)
    status = native.native_status()
    print(f"native ops: {status['detail']} ({time.monotonic() - start:.1f} s)")
    print(f"CUDA kernels: {'yes' if module.with_cuda else 'no'} ({status['cuda_reason']})")
    return 0


def _status(args) -> int:
    from synctalk.ops import native

    status = native.native_status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"state: {status['state']}")
        print(f"detail: {status['detail']}")
        if status["build_dir"]:
            print(f"build dir: {status['build_dir']}")
    return 0

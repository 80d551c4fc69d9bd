"""``synctalk bench …``: benchmarks that print JSON (ratios measured in one run).

Each benchmark lives in its own module under :mod:`synctalk.bench` and exposes
``register(actions)`` (adds its parser, with ``subcommand_parser_kwargs()``, and sets
``func``). Benchmarks never assert timings; they report them.
"""
from __future__ import annotations

import importlib

from synctalk.cli import group_parser_kwargs

#: Modules under ``synctalk.bench`` registered as ``synctalk bench NAME``.
BENCH_MODULES: tuple[str, ...] = ("prep", "ave", "ops", "render", "train")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks (JSON output): " + ", ".join(BENCH_MODULES),
        description="Measure speed and quality of a part of the system and print the numbers.",
        **group_parser_kwargs())
    actions = parser.add_subparsers(dest="bench_action", metavar="BENCH")
    actions.required = True
    for name in BENCH_MODULES:
        importlib.import_module(f"synctalk.bench.{name}").register(actions)

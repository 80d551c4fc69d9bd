"""The ``synctalk`` command line.

Each subcommand lives in its own module under :mod:`synctalk.commands` and exposes
``register(subparsers)``; heavy imports happen inside the handlers so ``--help`` is fast.
Every subcommand accepts ``-c/--config FILE.yaml`` (keys are option names without the
leading dashes) and ``SYNCTALK_<OPTION>`` environment variables, e.g.
``SYNCTALK_FACE_LANDMARKER=/path/face_landmarker.task``. Precedence: command line >
environment > config file > defaults.
"""
from __future__ import annotations

import logging
import sys

import configargparse

from synctalk import __version__
from synctalk.errors import SyncTalkError

#: Modules under ``synctalk.commands`` registered as subcommands, in ``--help`` order.
COMMAND_MODULES = ("demo", "synth", "prep", "train", "render", "eval", "doctor", "models", "ave", "bench",
                   "native")


class ConfigFileParser(configargparse.YAMLConfigFileParser):
    """YAML config files whose keys are option names with dashes or underscores
    (``motion_scale: 0.5`` and ``motion-scale: 0.5`` both set ``--motion-scale``)."""

    def parse(self, stream):
        return {key.replace("_", "-"): value for key, value in super().parse(stream).items()}


def subcommand_parser_kwargs() -> dict:
    """Keyword arguments every subcommand parser is created with (config + env support)."""
    return dict(
        config_file_parser_class=ConfigFileParser,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="YAML config file (see configs/); keys are option names",
        auto_env_var_prefix="SYNCTALK_",
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )


def group_parser_kwargs() -> dict:
    """Keyword arguments of a parser that only dispatches to nested actions
    (``synctalk models fetch``): no config file or environment options at that level,
    or a ``-c`` read there would turn the action's config keys into unknown options."""
    return dict(formatter_class=configargparse.ArgumentDefaultsHelpFormatter)


def build_parser() -> configargparse.ArgParser:
    import importlib

    parser = configargparse.ArgParser(
        prog="synctalk",
        description="Turn a few minutes of talking-head video into a model that speaks new audio.",
    )
    parser.add_argument("--version", action="version", version=f"synctalk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"synctalk.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        rc = args.func(args)
    except SyncTalkError as e:
        print(f"synctalk {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"synctalk {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

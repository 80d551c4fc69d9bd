"""The ``synctalk`` command line: help, version, config files, environment, user errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from synctalk import __version__
from synctalk.cli import COMMAND_MODULES, build_parser, main


def test_help_lists_only_registered_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMAND_MODULES:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: synctalk" in capsys.readouterr().out


def test_config_file_then_env_then_command_line(tmp_path, monkeypatch):
    cfg = tmp_path / "preset.yaml"
    cfg.write_text("size: 128\nseconds: 3\nseed: 5\n")
    parser = build_parser()
    args = parser.parse_args(["synth", "-c", str(cfg), "--out", "x"])
    assert (args.size, args.seconds, args.seed) == (128, 3.0, 5)
    monkeypatch.setenv("SYNCTALK_SEED", "9")
    args = build_parser().parse_args(["synth", "-c", str(cfg), "--out", "x"])
    assert args.seed == 9  # environment beats the config file
    args = build_parser().parse_args(["synth", "-c", str(cfg), "--out", "x", "--seed", "11"])
    assert args.seed == 11  # the command line beats both


def test_config_keys_may_use_underscores(tmp_path):
    cfg = tmp_path / "preset.yaml"
    cfg.write_text("motion_scale: 0.25\nface-landmarker: /x.task\n")
    args = build_parser().parse_args(["synth", "-c", str(cfg), "--out", "x"])
    assert args.motion_scale == 0.25 and args.face_landmarker == "/x.task"


def test_user_error_is_one_line_exit_2_no_traceback(tmp_path):
    """A missing input path through the installed entry point: one line on stderr, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "synctalk.cli", "synth", "--out", str(tmp_path / "o"),
                           "--audio", str(tmp_path / "missing.wav")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "missing.wav" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2

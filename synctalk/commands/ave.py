"""``synctalk ave ACTION``: the audio-visual encoder (AVE).

Actions are added by ``_register_<action>`` functions below, one per action.
"""
from __future__ import annotations

from synctalk.cli import group_parser_kwargs, subcommand_parser_kwargs


def register(subparsers) -> None:
    """Add ``ave`` and its actions (``import``) to the CLI."""
    parser = subparsers.add_parser(
        "ave", help="audio-visual lip-sync encoder: import pretrained checkpoints",
        description="Manage the audio-visual encoder (AVE) whose audio embeddings drive the "
                    "talking head.",
        **group_parser_kwargs())
    actions = parser.add_subparsers(dest="ave_action", metavar="ACTION")
    actions.required = True
    _register_import(actions)


def _register_import(actions) -> None:
    parser = actions.add_parser(
        "import", help="convert a SyncTalk or Wav2Lip lip-sync expert checkpoint to an AVE file",
        description="Read SyncTalk's audio_visual_encoder.pth (audio branch only) or Wav2Lip's "
                    "lipsync_expert.pth (audio and face branches), check every key and shape, "
                    "and write a synctalk-ave/1 file. Prints the detected format, whether the "
                    "face branch is present and the encoder identity.",
        **subcommand_parser_kwargs())
    parser.add_argument("file", metavar="FILE", help="checkpoint to import (.pth)")
    parser.add_argument("--out", metavar="AVE.pt", required=True,
                        help="AVE file to write (replaced atomically if it exists)")
    parser.set_defaults(func=_import)


def _import(args) -> int:
    from synctalk.audio.ave import save_ave
    from synctalk.audio.checkpoint import SOURCE_FORMATS, import_checkpoint

    model, meta = import_checkpoint(args.file)
    save_ave(args.out, model, meta, with_face=meta["has_face"])
    face = "yes" if meta["has_face"] else "no (audio branch only; face branch randomly initialised)"
    print(f"format: {SOURCE_FORMATS[meta['source_format']]} (audio layout {meta['audio_layout']})")
    print(f"face branch: {face}")
    print(f"identity: {model.identity()}")
    print(f"wrote {args.out}")
    return 0

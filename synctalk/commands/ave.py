"""``synctalk ave ACTION``: the audio-visual encoder (AVE).

Actions are added by ``_register_<action>`` functions below, one per action.
"""
from __future__ import annotations

import json

from synctalk.cli import group_parser_kwargs, subcommand_parser_kwargs


def register(subparsers) -> None:
    """Add ``ave`` and its actions (``import``, ``train``, ``score``, ``features``) to the CLI."""
    parser = subparsers.add_parser(
        "ave", help="audio-visual lip-sync encoder: import, train, score sync, audio features",
        description="Manage the audio-visual encoder (AVE) whose audio embeddings drive the "
                    "talking head.",
        **group_parser_kwargs())
    actions = parser.add_subparsers(dest="ave_action", metavar="ACTION")
    actions.required = True
    _register_import(actions)
    _register_train(actions)
    _register_score(actions)
    _register_features(actions)


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


def _add_data_options(parser) -> None:
    parser.add_argument("--face-landmarker", metavar="PATH", default=None,
                        help="MediaPipe face_landmarker.task for tracking videos (default: "
                             "$SYNCTALK_FACE_LANDMARKER, the cache, or a download)")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="where mouth crops of videos are cached (default: "
                             "<synctalk cache>/ave_clips)")


def _add_device_options(parser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default). On a busy machine 1 "
                             "is often much faster than several")


def _setup_threads(args) -> None:
    if args.threads < 0:
        from synctalk.errors import InputError

        raise InputError(f"--threads must be ≥ 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _register_train(actions) -> None:
    from synctalk.audio.train import TrainConfig

    d = TrainConfig()
    parser = actions.add_parser(
        "train", help="train an AVE (lip-sync expert) on talking-head videos or subjects",
        description="Train the audio-visual encoder as a SyncNet/Wav2Lip-style lip-sync expert: "
                    "BCE on the clamped cosine similarity of audio and mouth embeddings for "
                    "in-sync and shifted (≥ 5 frames) pairs. DATA are videos, prepared subject "
                    "directories, or folders searched recursively for both (e.g. an LRS2-style "
                    "root/<speaker>/<clip>.mp4). The last --val-fraction of every clip is held "
                    "out; the best model on it is kept in --out. See docs/ave.md.",
        **subcommand_parser_kwargs())
    parser.add_argument("data", nargs="+", metavar="DATA", help="videos, subject dirs or folders")
    parser.add_argument("--out", metavar="AVE.pt", required=True,
                        help="AVE file to write (also AVE.pt.ckpt, AVE.pt.log.jsonl)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction,
                        help="held-out share (0: none; the last model is kept)")
    parser.add_argument("--val-split", choices=("tail", "clips"), default=d.val_split,
                        help="hold out the tail of every clip, or whole clips (many short clips)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this much training time (summed over resumes)")
    parser.add_argument("--epochs", type=float, default=None, help="stop after this many epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="pairs per step (even; half in sync)")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--width", type=float, default=d.width,
                        help="channel multiplier of the AVE in (0, 1]; 1 = the SyncTalk/Wav2Lip "
                             "size. Embeddings are 512-d at any width")
    parser.add_argument("--max-shift", type=int, default=d.max_shift,
                        help="largest audio shift (frames) of a negative pair (≥ 5)")
    parser.add_argument("--group-size", type=int, default=d.group_size,
                        help="rows of a batch drawn from one clip (even; their cross pairs are "
                             "extra off-sync negatives)")
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help="steps between evaluations and checkpoints (0: once per epoch)")
    parser.add_argument("--no-augment", action="store_true", help="no data augmentation")
    parser.add_argument("--min-shift", type=int, default=d.min_shift,
                        help="smallest audio shift (frames) of a training negative")
    parser.add_argument("--ema", type=float, default=d.ema,
                        help="evaluate and save an exponential moving average of the weights "
                             "with this decay; 0 = the raw weights")
    parser.add_argument("--keep", choices=("best", "last"), default=d.keep,
                        help="save the best model (on the selection slice if any, else on the "
                             "held-out part), or the final one")
    parser.add_argument("--select-fraction", type=float, default=d.select_fraction,
                        help="end share of each training part set aside to choose the best "
                             "model on, so the held-out figures stay unbiased (0: none)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default=d.clock,
                        help="what --minutes measures: elapsed time or this process's CPU time")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", action="store_true", help="continue from AVE.pt.ckpt")
    parser.add_argument("--prep-workers", type=int, default=1,
                        help="processes preparing (tracking/cropping) uncached videos")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_options(parser)
    _add_device_options(parser)
    parser.set_defaults(func=_train)


def _train(args) -> int:
    from synctalk.audio.dataset import find_clips, load_clips
    from synctalk.audio.train import TrainConfig, train

    _setup_threads(args)
    cfg = TrainConfig(width=args.width, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, epochs=args.epochs, minutes=args.minutes,
                      max_steps=args.max_steps, val_fraction=args.val_fraction,
                      val_split=args.val_split,
                      max_shift=args.max_shift, group_size=args.group_size, seed=args.seed,
                      device=args.device,
                      eval_every=args.eval_every, augment=not args.no_augment,
                      ema=args.ema, keep=args.keep, clock=args.clock,
                      min_shift=args.min_shift, select_fraction=args.select_fraction)
    clips = load_clips(find_clips(args.data), cache_dir=args.cache_dir,
                       face_landmarker=args.face_landmarker, workers=args.prep_workers)
    summary = train(clips, args.out, cfg, resume=args.resume, progress=not args.no_progress)
    if cfg.keep == "best":
        kept_step, kept = summary["best"]["step"], summary["best"]["metrics"] or {}
    else:
        kept_step, kept = summary["steps"], summary["last"] or {}
    print(f"trained {summary['steps']} steps ({summary['epochs']:.1f} epochs) in "
          f"{summary['train_s'] / 60:.1f} min ({summary['s_per_epoch']:.1f} s/epoch)")
    if kept:
        print(f"held-out (step {kept_step}): sync accuracy {kept['sync_acc']:.3f}, "
              f"offset within ±1 frame: {kept['offset_acc_1s']:.3f} (1 s windows), "
              f"{kept['offset_acc_2s']:.3f} (2 s windows)")
    print(f"wrote {args.out}")
    return 0


def _register_score(actions) -> None:
    parser = actions.add_parser(
        "score", help="measure audio-visual offset and sync confidence of a video or subject",
        description="Compare every frame's mouth with the audio shifted by −15 … +15 frames "
                    "(SyncNet-style LSE): prints the offset (frames; + means the audio lags the "
                    "video) and the confidence (median − minimum of the mean embedding distance "
                    "over shifts). Needs an AVE with a trained face branch.",
        **subcommand_parser_kwargs())
    parser.add_argument("input", metavar="VIDEO_OR_SUBJECT", help="video file or subject directory")
    parser.add_argument("--ave", metavar="AVE.pt", required=True, help="AVE file")
    parser.add_argument("--audio", metavar="WAV", default=None,
                        help="score against this audio instead of the clip's own "
                             "(any format ffmpeg reads; starts with frame 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_data_options(parser)
    _add_device_options(parser)
    parser.set_defaults(func=_score)


def _score(args) -> int:
    from synctalk.audio import mel as M
    from synctalk.audio.ave import load_ave
    from synctalk.audio.dataset import InputSpec, load_clip
    from synctalk.audio.score import sync_score
    from synctalk.errors import ModelFileError
    from synctalk.media import read_audio

    _setup_threads(args)
    ave, meta = load_ave(args.ave)
    if meta.get("has_face") is False:
        raise ModelFileError(f"{args.ave} has no trained face branch (audio-only import); "
                             "scoring needs a Wav2Lip expert or an AVE trained with "
                             "`synctalk ave train`.")
    clip = load_clip(args.input, cache_dir=args.cache_dir, face_landmarker=args.face_landmarker)
    mel = None
    if args.audio is not None:
        mel = M.melspectrogram(read_audio(args.audio, M.SAMPLE_RATE)).numpy()
    result = sync_score(clip, mel, None, ave, spec=InputSpec.from_meta(meta), device=args.device)
    result.update(input=str(args.input), ave=str(args.ave), audio=args.audio)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lag = "audio lags video" if result["offset_frames"] > 0 else (
            "audio leads video" if result["offset_frames"] < 0 else "in sync")
        print(f"offset: {result['offset_frames']:+d} frames "
              f"({1000 * result['offset_s']:+.0f} ms, {lag})")
        print(f"confidence: {result['confidence']:.3f} "
              f"(windowed {result['window_confidence']:.3f}), "
              f"min distance: {result['min_dist']:.3f}, frames: {result['frames_used']}")
    return 0


def _register_features(actions) -> None:
    parser = actions.add_parser(
        "features", help="compute (or reuse cached) per-frame audio features of a subject",
        description="Write SUBJECT/audio_features/<encoder-id>.npy: AVE audio embeddings "
                    "[N, 512] (--ave) or HuBERT/wav2vec2 hidden states [N, 2, D] (--audio-model, "
                    "a local transformers directory). The encoder id hashes the encoder's "
                    "weights, so a changed encoder or audio recomputes; an unchanged one is "
                    "reused.",
        **subcommand_parser_kwargs())
    parser.add_argument("subject", metavar="SUBJECT", help="prepared subject directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ave", metavar="AVE.pt", help="AVE file")
    which.add_argument("--audio-model", metavar="DIR",
                       help="local HuBERT/wav2vec2 directory (save_pretrained layout)")
    parser.add_argument("--hub", action="store_true",
                        help="allow --audio-model to be a Hugging Face Hub repo id (downloads it)")
    parser.add_argument("--force", action="store_true", help="recompute even if cached")
    _add_device_options(parser)
    parser.set_defaults(func=_features)


def _features(args) -> int:
    from synctalk.audio.ave import load_ave
    from synctalk.audio.features import load_hf_model, subject_features

    _setup_threads(args)
    if args.ave is not None:
        ave, meta = load_ave(args.ave)
        path, feats, cached = subject_features(args.subject, ave=ave, ave_meta=meta,
                                               force=args.force, device=args.device)
    else:
        hf = load_hf_model(args.audio_model, allow_hub=args.hub, device=args.device)
        path, feats, cached = subject_features(args.subject, hf=hf, force=args.force,
                                               device=args.device)
    print(f"{'cached' if cached else 'wrote'} {path} {list(feats.shape)}")
    return 0

"""The user tools of the CLI: `import-weights`, `predict`, `features`, `export`, `show-flow`.

`pipeline/cli.py` adds them with `add_subcommands(subparsers)` and runs them with `run(args, cfg)`.
Like the stages they take `--config` / `--set` (predict and features read `[eval]` for the views,
fusion and device, and compute flow with the checkpoints' flow settings, except the `[flow]` keys
given with `--set flow.KEY=...`; the other tools ignore them) and raise the packages' errors, which
the CLI prints as `error: ...` with exit status 2. `run` returns the exit status: predict and
features return 1 when some videos failed (each listed with why), 0 when all were done.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fusion.errors import FusionError
from pipeline.cli import path_arg
from pipeline.config import Config, load_config

HELP = {
    "import-weights": "import published P3D weights (.caffemodel, pseudo-3d-pytorch .pth.tar) as a checkpoint",
    "predict": "top-5 classes of videos under an RGB and/or flow checkpoint, and fused (--timeline: over time)",
    "features": "pool5 features of videos: one per video (the paper's protocol) to .npz/.parquet, or one per "
                "snippet (--stride) to a folder of .npy",
    "export": "export a checkpoint's stream to TorchScript and ONNX",
    "show-flow": "a contact sheet PNG of a stored video: RGB frames over colour-coded flow at a fixed scale",
}
COMMANDS = tuple(HELP)
FORMATS = ("torchscript", "onnx")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path_arg, default=None,
                        help="TOML config file (configs/*.toml); its [flow] and [eval] sections apply")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set eval.clips=20 --set flow.size=340x256")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add the tools to the CLI's subparsers (dest "stage")."""
    p = subparsers.add_parser("import-weights", help=HELP["import-weights"], description=HELP["import-weights"])
    p.add_argument("src", type=path_arg, help="a .caffemodel, or a pseudo-3d-pytorch checkpoint (.pth.tar)")
    p.add_argument("--out", type=path_arg, required=True, help="checkpoint to write (e.g. weights/p3d_rgb.pt)")
    p.add_argument("--source", choices=("auto", "caffe", "pseudo3d"), default="auto",
                   help="format of SRC (default: from its name, else its first bytes)")
    p.add_argument("--arch", default=None, help="our builder (default: from the blocks in SRC)")
    p.add_argument("--classes", type=path_arg, default=None,
                   help="class names, one per line in the model's output order (default class_000, ...)")
    p.add_argument("--fc-layer", default=None, help="Caffe classifier layer (default: the one named fc*)")
    p.add_argument("--force", action="store_true", help="overwrite an --out that exists")
    _config_args(p)

    p = subparsers.add_parser("predict", help=HELP["predict"], description=HELP["predict"])
    p.add_argument("videos", type=path_arg, nargs="+", metavar="VIDEO",
                   help="video files (.mp4, .avi, .mkv, .gif, ...), frame folders (img_00001.jpg, ...), "
                        "directories of them, or list files (one path per line, or an mmaction2 list)")
    p.add_argument("--rgb", type=path_arg, default=None, help="RGB stream checkpoint")
    p.add_argument("--flow", type=path_arg, default=None, help="flow stream checkpoint")
    p.add_argument("--top", type=int, default=5, help="classes shown per stream (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars on stderr (they are off anyway when stderr is not a terminal)")
    p.add_argument("--timeline", action="store_true",
                   help="also the scores of every snippet: OUT/<id>.timeline.csv, .json and a .png picture")
    p.add_argument("--stride", type=int, default=None,
                   help="--timeline: frames between snippet starts, at least 1 (default: the clip length)")
    p.add_argument("--out", type=path_arg, default=None, help="--timeline: folder (default ./timeline)")
    p.add_argument("--force", action="store_true", help="--timeline: overwrite timeline files that exist")
    _config_args(p)

    p = subparsers.add_parser("features", help=HELP["features"], description=HELP["features"])
    p.add_argument("videos", type=path_arg, nargs="+", metavar="VIDEOS",
                   help="video files, frame folders, directories of them, or list files (one path per line, "
                        "or an mmaction2 list); ids are paths relative to the directory or list given")
    p.add_argument("--rgb", type=path_arg, default=None, help="RGB stream checkpoint")
    p.add_argument("--flow", type=path_arg, default=None, help="flow stream checkpoint")
    p.add_argument("--out", type=path_arg, required=True,
                   help="per video: a .npz or .parquet file (needs pyarrow); with --stride: a folder")
    # None, not 0: `--stride 0` is refused as a stride, not taken for its absence (per-video features)
    p.add_argument("--stride", type=int, default=None,
                   help="per-snippet features: a snippet (one clip) every STRIDE frames, OUT/<id>.npy [T, D]")
    p.add_argument("--window", type=int, default=None,
                   help="--stride: frames per snippet; must be the streams' clip length (the default)")
    p.add_argument("--mirror", action="store_true", help="--stride: average each snippet with its mirror")
    p.add_argument("--normalised", action="store_true",
                   help="--stride: each stream's rows signed-square-rooted and L2-normalised")
    from pipeline.cli import _shard  # the flow stage's --shard grammar

    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="--stride: this process's part of the videos (the I-th of N, 0-based); shards and "
                        "other processes may share one --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing output (a folder of other settings included) and recompute")
    _config_args(p)

    p = subparsers.add_parser("export", help=HELP["export"], description=HELP["export"])
    p.add_argument("checkpoint", type=path_arg, help="a stream checkpoint (trained or imported)")
    p.add_argument("--out", type=path_arg, required=True, help="directory for the exported files")
    p.add_argument("--format", dest="formats", choices=(*FORMATS, "all"), action="append", default=None,
                   help="torchscript, onnx or all (default all; repeatable)")
    p.add_argument("--output", choices=("logits", "features"), default="logits",
                   help="what the exported graph returns: class logits or pool5 features")
    p.add_argument("--clip-len", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--crop", type=int, default=None, help="clip height and width (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="overwrite exports that already exist")
    _config_args(p)

    p = subparsers.add_parser("show-flow", help=HELP["show-flow"], description=HELP["show-flow"])
    p.add_argument("video_id", metavar="VIDEO_ID", help="a video of the flow store (e.g. ApplyEyeMakeup/v_..._g08_c01)")
    p.add_argument("--out", type=path_arg, default=None,
                   help="PNG to write (default work_dir/show-flow/<id, '/' as '__'>.png)")
    p.add_argument("--frames", type=int, default=6, help="evenly spaced frames shown, 1 to 50 (default 6)")
    p.add_argument("--force", action="store_true", help="replace an existing PNG")
    p.add_argument("--max-flow", type=float, default=None,
                   help="px per frame shown at full saturation (default: a quarter of the store's bound)")
    _config_args(p)


def _checkpoints(args: argparse.Namespace) -> dict[str, Path]:
    return {name: path for name, path in (("rgb", args.rgb), ("flow", args.flow)) if path is not None}


def explicit_flow_keys(overrides: list[str]) -> list[str]:
    """The `[flow]` keys given with --set: these override the checkpoints' flow settings."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("flow."):
            keys.append(key.removeprefix("flow."))
    return keys


def run(args: argparse.Namespace, cfg: Config | None = None) -> int:
    """Run the tool named by `args.stage`; `cfg` is the loaded config (loaded here when None).
    Returns the exit status: 1 when predict or features failed on some videos, else 0."""
    if args.stage == "import-weights":
        from streams.importers import import_weights

        import_weights(args.src, args.out, source=args.source, arch=args.arch, classes=args.classes,
                       fc_layer=args.fc_layer, force=args.force)
    elif args.stage == "export":
        from streams.export import export_checkpoint

        formats = FORMATS if not args.formats or "all" in args.formats else tuple(dict.fromkeys(args.formats))
        export_checkpoint(args.checkpoint, args.out, formats, args.output, args.clip_len, args.crop, force=args.force)
    elif args.stage == "show-flow":
        from pipeline.stages import show_flow_stage

        show_flow_stage(cfg or load_config(args.config, args.overrides), args.video_id, out=args.out,
                        frames=args.frames, max_flow=args.max_flow, force=args.force)
    elif args.stage in ("predict", "features"):
        cfg = cfg or load_config(args.config, args.overrides)
        explicit = explicit_flow_keys(args.overrides)
        progress = False if args.no_progress else None
        if args.stage == "predict":
            from fusion.predict import Timeline, run_predict

            if not args.timeline and (args.stride is not None or args.out is not None or args.force):
                raise FusionError("--stride, --out and --force are for the scores over time: give --timeline too "
                                  "(predict alone writes no file)")
            timeline = Timeline(args.out or Path("timeline"), args.stride, args.force) if args.timeline else None
            predictions = run_predict(args.videos, _checkpoints(args), cfg.flow, cfg.eval, args.top, args.json,
                                      progress=progress, explicit_flow=explicit, timeline=timeline)
            return 1 if any(p.error for p in predictions) else 0
        if (args.stride is not None or args.window is not None or args.mirror or args.normalised
                or args.shard != (0, 1)):
            if args.stride is None:
                raise FusionError("--window, --mirror, --normalised and --shard are for per-snippet features: "
                                  "give --stride too")
            from fusion.snippet_features import extract_snippet_features

            summary = extract_snippet_features(args.videos, _checkpoints(args), args.out, cfg.flow, cfg.eval,
                                               stride=args.stride, window=args.window, mirror=args.mirror,
                                               normalised=args.normalised, shard=args.shard, force=args.force,
                                               explicit_flow=explicit, progress=progress)
            return 1 if summary.failures else 0
        from fusion.extract import extract_features

        result = extract_features(args.videos, _checkpoints(args), args.out, cfg.flow, cfg.eval, force=args.force,
                                  explicit_flow=explicit, progress=progress)
        return 1 if result.failed else 0
    else:
        raise ValueError(f"not a tool: {args.stage!r}")
    return 0

"""`python -m pipeline <stage> --config FILE [--set key=value ...]`: wires arguments to stages."""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from p3dbase.cluster import clear_stop, note_stop
from p3dbase.errors import P3DError, brief, refusal
from p3dbase.runlog import run_log


def path_arg(text: str) -> Path:
    """A path argument of the CLI. An empty one is refused: Path("") is the current folder, where
    `export --out ""` wrote its files without a word."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: name a file or folder (\".\" for this one)")
    return Path(text)


STAGE_HELP = {
    "synth": "generate the SynthActions benchmark (videos, splits, ground-truth flow)",
    "flow": "decode videos, compute TV-L1 flow, write the frame + flow store",
    "verify": "read every finished video of the flow store and check its checksums; the next `flow` redoes "
              "the damaged ones (exit status 1 when any)",
    "train": "train one P3D stream (--stream rgb|flow) on the stored frames or flow",
    "eval": "video-level testing, two-stream fusion, features + linear SVM, report",
    "transfer": "frozen stream features + linear classifiers on other benchmarks (UCF101, ActivityNet, ASLAN, "
                "scenes), one report beside the paper's",
}

REPORT_HELP = ("rebuild report.html of every evaluation and transfer report under WORK_DIR from the files "
               "those runs wrote")
CONFIG_HELP = "print the resolved settings as TOML, every key with its default and its comment"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path_arg, default=None,
                        help="TOML config file (configs/*.toml); defaults when omitted")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set flow.bound=20 (repeatable)")


def _add_run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=None, metavar="NAME",
                        help="a named run: outputs under work_dir/runs/NAME/ (sets train.run; flow is shared)")


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    synth = stages.add_parser("synth", help=STAGE_HELP["synth"], description=STAGE_HELP["synth"])
    _add_config_args(synth)
    synth.add_argument("--force", action="store_true",
                       help="regenerate everything (needed when the [synth] settings changed)")
    evaluate = stages.add_parser("eval", help=STAGE_HELP["eval"], description=STAGE_HELP["eval"])
    _add_config_args(evaluate)
    evaluate.add_argument("--rgb", type=path_arg, default=None,
                          help="RGB checkpoint to score (a file, imported weights, or a run folder: its last.pt)")
    evaluate.add_argument("--flow", type=path_arg, default=None, help="flow checkpoint to score (as --rgb)")
    evaluate.add_argument("--out", type=path_arg, default=None,
                          help="report folder (default: the run's eval folder; with --rgb/--flow beside the "
                               "checkpoint, eval-<name>, never make eval's report)")
    evaluate.add_argument("--allow-trained", action="store_true",
                          help="score test videos a checkpoint was trained on (a checkpoint of another split), or "
                               "choose the fusion rule and C on held-out videos it was trained on, instead of "
                               "refusing; the report says how many")
    _add_run_arg(evaluate)
    config = stages.add_parser("config", help=CONFIG_HELP, description=CONFIG_HELP)
    _add_config_args(config)
    config.add_argument("--markdown", action="store_true",
                        help="print the reference of every key's default as Markdown (docs/config.md)")

    flow = stages.add_parser("flow", help=STAGE_HELP["flow"], description=STAGE_HELP["flow"])
    _add_config_args(flow)
    flow.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                      help="process only videos i, i+n, i+2n, ... (e.g. $SLURM_ARRAY_TASK_ID/N)")
    flow.add_argument("--force", action="store_true", help="redo videos that are already complete")
    flow.add_argument("--strict", action="store_true", help="exit non-zero when any video failed")

    verify = stages.add_parser("verify", help=STAGE_HELP["verify"], description=STAGE_HELP["verify"])
    _add_config_args(verify)

    train = stages.add_parser("train", help=STAGE_HELP["train"], description=STAGE_HELP["train"])
    _add_config_args(train)
    train.add_argument("--stream", choices=("rgb", "flow"), required=True, help="which stream to train")
    _add_run_arg(train)

    transfer = stages.add_parser("transfer", help=STAGE_HELP["transfer"], description=STAGE_HELP["transfer"])
    _add_config_args(transfer)
    transfer.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                          help="compute flow and features of videos i, i+n, ... only, no report (then run "
                               "without --shard)")

    page = stages.add_parser("report", help=REPORT_HELP, description=REPORT_HELP)
    page.add_argument("work_dir", type=path_arg, metavar="WORK_DIR",
                      help="a work_dir, a run folder or one report folder (eval/, eval/split1/, transfer/)")
    page.set_defaults(config=None, overrides=[])

    from pipeline import tools_cli  # import-weights, predict, features, export
    tools_cli.add_subcommands(stages)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, a batch system's time limit, `kill`), raised where Ctrl-C's KeyboardInterrupt
    is, so that a stage stops the same way: workers stopped, the manifest written, temporaries removed."""


def _on_signals() -> dict[int, Any]:
    """Turn SIGTERM into Terminated in this process, and make a first Ctrl-C the only one: the
    cleanup it starts (workers stopped, the manifest written, temporaries removed) is not cut short
    by a second one (a second Ctrl-C inside loky's shutdown left its semaphores and a traceback).
    Returns the handlers replaced, to put back."""
    main_pid = os.getpid()

    def terminated(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked helper (the stat child, a DataLoader worker): end quietly
            os._exit(128 + signum)
        raise note_stop(Terminated())  # noted: worker pools that see the group's signal first stop as this

    def interrupted(signum: int, frame: Any) -> None:
        if os.getpid() == main_pid:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise note_stop(KeyboardInterrupt())
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return {}
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminated)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (nohup, &)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupted)
    return previous


# How torch's allocators and oneDNN say they ran out (CPU: DefaultCPUAllocator; CUDA: OutOfMemoryError).
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "could not create a primitive", "std::bad_alloc")


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` says the process ran out of memory (not a bug: a setting or the machine)."""
    return isinstance(err, MemoryError) or any(s in str(err).lower() for s in OUT_OF_MEMORY)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the block and take them after it, where their handlers raise: an
    exception raised inside a C++ extension's import (torch's, through pybind11) is no KeyboardInterrupt
    but `terminate called ...` and a core dump."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = contextlib.ExitStack()
    previous = _on_signals()
    try:
        # Imported here so that `--help` answers at once, without loading torch; inside the `try`, so
        # that Ctrl-C during the imports is the one line too.
        from pipeline import config_reference, stages, tools_cli
        from pipeline.config import load_config

        if args.stage != "config":
            with signals_held():  # Ctrl-C inside torch's import aborted the interpreter (pybind11): taken after it
                import torch  # noqa: F401

        cfg = load_config(args.config, args.overrides, run=getattr(args, "run", None))
        log.enter_context(stage_log(args, cfg, sys.argv[1:] if argv is None else argv))
        if args.stage in tools_cli.COMMANDS:
            return tools_cli.run(args, cfg)  # 1 when predict or features failed on some videos
        elif args.stage == "config":
            config_reference.run(args, cfg)
        elif args.stage == "synth":
            stages.synth_stage(cfg, force=args.force)
        elif args.stage == "flow":
            stages.flow_stage(cfg, shard=args.shard, force=args.force, strict=args.strict)
        elif args.stage == "verify":
            return 1 if stages.verify_stage(cfg).damaged else 0
        elif args.stage == "train":
            stages.train_stage(cfg, args.stream)
        elif args.stage == "eval":
            checkpoints = {name: path for name, path in (("rgb", args.rgb), ("flow", args.flow)) if path}
            stages.eval_stage(cfg, checkpoints or None, allow_trained=args.allow_trained, out=args.out)
        elif args.stage == "transfer":
            stages.transfer_stage(cfg, shard=args.shard)
        elif args.stage == "report":
            stages.report_stage(args.work_dir)
    except P3DError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the system refused (a disk filled, a file vanished): one line all the same
        if os.environ.get("P3D_TRACEBACK"):
            raise
        print(f"error: {refusal(err)} (P3D_TRACEBACK=1 shows where)", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # RuntimeError: torch's allocators (CPU, CUDA) say it so
        if not out_of_memory(err):
            raise
        said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: out of memory ({brief(said, 200)}): lower train.batch_size, eval.batch_views or the jobs "
              "and workers, or free memory; then re-run the same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        # predict --timeline refuses the timeline files it wrote so far: its re-run redoes them all
        again = ("re-run it with --force to score every video again" if getattr(args, "timeline", False)
                 else "re-run the same command to resume")
        print(f"{how}: {again}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        log.close()  # after the error line: the log ends with it
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        clear_stop()
    return 0


def run_program(argv: list[str] | None = None) -> NoReturn:
    """`python -m pipeline`: main(), then the interpreter's exit. main has said what happened by then;
    what is left is joining the worker pools (loky's atexit join, bounded: it ends its workers), where a
    second Ctrl-C printed loky's traceback. So during the exit Ctrl-C is ignored (the exit is what it
    asks for), and SIGTERM ends the process at once with main's status."""
    status = main(argv)

    def exit_now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe: nothing more can be said anyway
                stream.flush()
        os._exit(status)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, exit_now)
    sys.exit(status)


LOGGED = ("synth", "flow", "train", "eval", "transfer")


def _eval_folder(args: argparse.Namespace, cfg) -> Path:
    """Where `eval` reports (its log goes beside): given checkpoints never report into `make eval`'s folder."""
    from pipeline import stages

    checkpoints = {name: path for name, path in (("rgb", args.rgb), ("flow", args.flow)) if path}
    return stages.eval_out_dir(cfg, checkpoints, args.out)


def stage_log(args: argparse.Namespace, cfg, argv: list[str]) -> contextlib.AbstractContextManager:
    """The stage's own log beside its output (p3dbase.runlog): `<out>/<stage>.log`, appended; none for
    the tools, for the processes of torchrun but rank 0, or where the output folder cannot be made or
    written (the stage then says why)."""
    from pipeline import stages

    if args.stage not in LOGGED or int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    if args.stage == "synth":
        from pipeline.synth.generate import foreign_folder

        if not cfg.dataset.root or foreign_folder(Path(cfg.dataset.root)):  # refused by the stage: no log there
            return contextlib.nullcontext()
        folder = Path(cfg.dataset.root)
    else:
        folder = {"flow": lambda: stages.flow_dir(cfg), "train": lambda: stages.run_dir(cfg) / "train" / args.stream,
                  "eval": lambda: _eval_folder(args, cfg),
                  "transfer": lambda: stages.transfer_dir(cfg)}[args.stage]()
        if args.stage == "eval" and stages.not_a_report_folder(folder):  # refused by the stage: no log there
            return contextlib.nullcontext()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return contextlib.nullcontext()
    if not os.access(folder, os.W_OK | os.X_OK):  # a read-only store: read stages need no log there
        return contextlib.nullcontext()
    index, count = getattr(args, "shard", (0, 1))
    name = args.stage + (f"-shard-{index}-of-{count}" if count > 1 else "") + ".log"
    return run_log(folder / name, " ".join(["python -m pipeline", *map(shlex.quote, argv)]))

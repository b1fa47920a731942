"""The ``ntulm`` command. Each stage registers its subcommands from a module in this package
(``register(subparsers)``); this module configures logging and turns every
:class:`~ntulm.errors.NTULMError` into a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

# OpenMP threads that spin while waiting collapse on a busy machine (a fine-tuning step took
# 10x longer with one other process running); sleeping waiters cost little when it is idle.
# Set before torch is imported (the command modules import it); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ntulm import __version__
from ntulm.errors import ConfigError, NTULMError

if TYPE_CHECKING:
    from ntulm.posts.config import ReaderConfig

# Subcommand modules, in the order of the data flow.
COMMAND_MODULES = (
    "ntulm.cli.graph",
    "ntulm.cli.kge",
    "ntulm.cli.lm",
    "ntulm.cli.run",
    "ntulm.cli.evaluate",
    "ntulm.cli.quickstart",
)

log = logging.getLogger("ntulm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntulm",
        description="NTULM: post embeddings enriched with non-textual units (author, hashtags, ...).",
    )
    parser.add_argument("--version", action="version", version=f"ntulm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="warnings only, no progress bars (bars are shown only on a terminal anyway)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for subparser in sub.choices.values():  # -v / -q also after the subcommand
        subparser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
        subparser.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="warnings only, no progress bars",
        )
    return parser


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and trailing ``key=value`` overrides, shared by every stage command."""
    p.add_argument("--config", help="YAML config file for this stage")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def add_nproc_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--nproc N``: run the command as N processes under ``torchrun`` (one machine)."""
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help=f"{what} with N processes on this machine, started by torchrun (gloo on CPU); "
        "for several machines run `torchrun ... -m ntulm COMMAND ...` yourself (docs/scale.md)",
    )


def relaunch_under_torchrun(args: argparse.Namespace) -> int | None:
    """With ``--nproc N > 1`` outside torchrun: run this same command line as N processes under
    ``torchrun --standalone`` and return its exit status; else None (run in this process)."""
    if args.nproc < 1:
        raise ConfigError(f"--nproc: {args.nproc} is not a positive number of processes")
    if args.nproc == 1 or "WORLD_SIZE" in os.environ:
        return None
    import subprocess

    argv, skip = [], False
    for a in args.argv:  # the command line less --nproc N (each rank is one process)
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "ntulm",
        *argv,
    ]
    log.info("starting %d processes: %s", args.nproc, " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def add_posts_args(
    p: argparse.ArgumentParser,
    required: bool = True,
    help: str = "post files or directories (gzip ok)",  # noqa: A002 - argparse's name
) -> None:
    """``--posts PATH...`` and the reader flags, shared by every command that reads posts: each
    flag sets a key of :class:`~ntulm.posts.config.ReaderConfig` (also ``read.KEY=VALUE``)."""
    from ntulm.posts.config import DUPLICATES, ENGINES
    from ntulm.posts.formats import REGISTRY

    g = p.add_argument_group(
        "reading posts",
        "the reader settings (docs/posts.md): each flag sets read.KEY, which a command with "
        "key=value overrides also takes as read.KEY=VALUE (and build-graph, ntu-stats, evaluate "
        "from its config's read section); a flag wins",
    )
    g.add_argument("--posts", nargs="+", required=required, metavar="PATH", help=help)
    g.add_argument(
        "--format", choices=("auto", *REGISTRY), help="input format (default: detect per file)"
    )
    g.add_argument("--strict", action="store_true", help="fail on the first bad record (exit 2)")
    g.add_argument(
        "--columns",
        metavar="MAPPING",
        help="CSV/TSV/Parquet posts: field=column pairs, e.g. text=content,author=user,id=tweet_id"
        ",party=party (other names become labels), or a preset: ira (docs/posts.md)",
    )
    g.add_argument(
        "--labels",
        action="append",
        metavar="FILE",
        help="side table of labels joined onto the posts by author (id or handle) in its first "
        "column; repeatable; the config's 'read.labels' key has all options (docs/posts.md)",
    )
    g.add_argument(
        "--max-text-chars", type=int, metavar="N", help="reject longer texts (default 10000)"
    )
    g.add_argument(
        "--duplicates",
        choices=DUPLICATES,
        help="posts repeating an earlier post's id: keep the first (default), error, keep-all",
    )
    g.add_argument(
        "--reader", choices=ENGINES, help="reader engine (default fast; python: the reference)"
    )
    g.add_argument(
        "--no-quarantine",
        action="store_true",
        help="do not write rejected records to rejected.jsonl (they are still counted)",
    )


def read_overrides(args: argparse.Namespace) -> list[str]:
    """The reader flags of :func:`add_posts_args` as ``read.KEY=VALUE`` overrides (put after a
    command's own overrides, so that a flag wins)."""
    out = []
    if getattr(args, "format", None):
        out.append(f"read.format={args.format}")
    if getattr(args, "strict", False):
        out.append("read.strict=true")
    if getattr(args, "columns", None):
        out.append(f"read.columns={json.dumps(args.columns)}")
    if getattr(args, "labels", None):
        out.append(f"read.labels={json.dumps([{'path': f} for f in args.labels])}")
    if getattr(args, "max_text_chars", None) is not None:
        out.append(f"read.max_text_chars={args.max_text_chars}")
    if getattr(args, "duplicates", None):
        out.append(f"read.duplicates={args.duplicates}")
    if getattr(args, "reader", None):
        out.append(f"read.engine={args.reader}")
    if getattr(args, "no_quarantine", False):
        out.append("read.quarantine=false")
    return out


def reader_config(args: argparse.Namespace) -> tuple[ReaderConfig, list[str]]:
    """For a command whose own config has no ``read`` section (``finetune``, ``embed``): its
    :class:`~ntulm.posts.config.ReaderConfig` from the ``read.*`` overrides and the reader flags,
    and the command's other overrides."""
    from ntulm.posts.config import ReaderConfig

    own, read = [], []
    for item in [*getattr(args, "overrides", []), *read_overrides(args)]:
        (read if item.startswith("read.") else own).append(item)
    cfg = ReaderConfig.from_sources(None, [item.removeprefix("read.") for item in read])
    return cfg, own


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Progress bars of ntulm (``args.progress``) and of the libraries it calls: with
    ``enabled=False`` transformers' bars (loading and writing checkpoints) are off too, through
    the switch transformers and huggingface_hub read when imported (they are imported lazily,
    after this) and, if already imported, their functions; restored afterwards."""
    if enabled:
        yield
        return
    key = "HF_HUB_DISABLE_PROGRESS_BARS"
    old = os.environ.get(key)
    os.environ[key] = "1"
    hf = sys.modules.get("transformers.utils.logging")
    was_on = hf.is_progress_bar_enabled() if hf is not None else old is None
    if hf is not None:
        hf.disable_progress_bar()
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old
        hf = sys.modules.get("transformers.utils.logging")
        if hf is not None and was_on:
            with warnings.catch_warnings():  # huggingface_hub keeps its own off: it read the env
                warnings.simplefilter("ignore")
                hf.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for relaunch_under_torchrun
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # Bars only on a terminal: written to a file or a pipe they are carriage returns and cursor
    # escape codes between the log lines. -q: no bars anywhere, ours or transformers'.
    args.progress = not args.quiet and sys.stderr.isatty()
    try:
        with progress_bars(args.progress):
            return int(args.func(args) or 0)
    except NTULMError as exc:
        print(f"ntulm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"ntulm {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"ntulm {args.command}: error: out of memory", file=sys.stderr)
        return 3
    except OSError as exc:  # e.g. an output directory that cannot be written, a full disk
        print(f"ntulm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line; -v shows the traceback
        if args.verbose:
            raise
        print(
            f"ntulm {args.command}: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback; please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

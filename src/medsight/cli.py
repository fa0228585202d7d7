"""The ``medsight`` command. Thin: parses arguments, calls the library, prints where results went."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import pkgutil
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medsight import __version__
from medsight.errors import MedsightError

#: Subcommands listed first in ``--help``; any other module of ``medsight.commands`` follows.
FIRST = ("train", "evaluate", "predict")

log = logging.getLogger("medsight")

#: Libraries whose INFO lines can carry identifiers (highdicom logs the UIDs of the datasets it copies from)
#: or drown our progress; only their warnings reach the console.
QUIET_LOGGERS = ("highdicom", "pydicom", "onnx_ir", "onnxscript", "torch", "monai", "PIL", "matplotlib")


def command_names() -> list[str]:
    """Every subcommand module in ``medsight.commands`` (each exposes ``register``)."""
    import medsight.commands as package

    found = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    return [n for n in FIRST if n in found] + [n for n in found if n not in FIRST]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered by its own module."""
    parser = argparse.ArgumentParser(
        prog="medsight",
        description="Train, audit, explain and deploy medical imaging models.",
    )
    parser.add_argument("--version", action="version", version=f"medsight {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors and results")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        module = importlib.import_module(f"medsight.commands.{name}")
        module.register(sub)
    return parser


def _not_root_chatter(record: logging.LogRecord) -> bool:
    """Drop what a library logs through the root logger itself below WARNING (MONAI's detector announces "Running
    ATSS Matching ..." with ``logging.info`` each time one is built); medsight logs through named loggers."""
    return record.levelno >= logging.WARNING or record.name != "root"


def configure_logging(quiet: bool) -> None:
    """Messages to stderr, INFO and up (WARNING with ``--quiet``), without the libraries' chatter."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if _not_root_chatter not in handler.filters:
            handler.addFilter(_not_root_chatter)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 partial failure, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _never_fail_on_names()
    _stop_cleanly_on_sigterm()
    configure_logging(args.quiet)
    if not args.debug:
        # pydicom warns about what it meets in a broken file, with a line of its own source, before medsight names
        # the file and the problem in one line; --debug keeps the library's words
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        logging.getLogger("pydicom").setLevel(logging.ERROR)  # it logs the same words as it warns
    for warning in _setting_warnings():
        log.warning("warning: %s", warning)
    try:
        with _progress_bars_off() if args.quiet else contextlib.nullcontext():
            status = args.func(args)
    except MedsightError as exc:
        if args.debug:
            raise
        print(f"medsight {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsight: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("medsight: stopped (SIGTERM or SIGHUP); nothing half-written was left", file=sys.stderr)
        return 143  # 128 + SIGTERM
    except BrokenPipeError:
        # the reader closed the pipe (``medsight info DIR | head``): stop quietly as Unix tools do, and send what is
        # still buffered nowhere so that the interpreter's last flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool stopped by a closed pipe
    except (OSError, RuntimeError) as exc:
        problem = _storage_problem(exc)
        if problem is None or args.debug:
            raise
        print(f"medsight {args.command}: error: {problem}", file=sys.stderr)
        return 2
    return int(status or 0)


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    """``--quiet`` ("only print errors and results"): no progress bar, whatever a call site asked for. tqdm has no
    switch that overrides an explicit ``disable=False`` once it is imported, so its constructor is wrapped for the
    command's run and restored after (``main`` is also called in-process, by tests and notebooks)."""
    from tqdm import std

    original = std.tqdm.__init__

    def quiet(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = quiet  # type: ignore[method-assign]
    try:
        yield
    finally:
        std.tqdm.__init__ = original  # type: ignore[method-assign]


#: Errors of the disk or file system rather than of medsight: said in one line, like bad input.
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
REFUSED = {errno.EACCES, errno.EPERM}
#: What creating a folder under a cache that is a file, or in a read-only place, raises.
UNUSABLE_CACHE = FULL | REFUSED | {errno.ENOTDIR, errno.EEXIST}
KEPT = "nothing half-written was left and an earlier output there is unchanged"


def _setting_warnings() -> list[str]:
    from medsight.config import setting_warnings

    return setting_warnings()


def _storage_problem(exc: BaseException) -> str | None:
    """The one line for a full disk, a read-only or forbidden folder or an unusable cache folder (outputs are written
    in a temporary place and renamed, so an earlier output at the same place is intact), or None for any other error
    (a bug: traceback). torch.save reports a full disk as a RuntimeError of its zip writer, without an errno."""
    from medsight.config import CACHE_ENV, cache_root

    if isinstance(exc, RuntimeError):
        if not _from_torch_writer(exc):
            return None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"could not write a model file ({first}); is the disk full? {KEPT}"
    if not isinstance(exc, OSError):
        return None
    where = str(exc.filename or "")
    words = exc.strerror or str(exc)
    if where and exc.errno in UNUSABLE_CACHE and _inside(Path(where), cache_root()):
        return f"{CACHE_ENV}={cache_root()} cannot be used ({where}: {words}): set it to a folder this user can write"
    if exc.errno in FULL:
        return f"{where + ': ' if where else ''}{words}; {KEPT}"
    if exc.errno in REFUSED:
        return f"{where + ': ' if where else ''}{words}"
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path, folder = path.expanduser().absolute(), folder.expanduser().absolute()
    except (OSError, RuntimeError):
        return False
    return path == folder or folder in path.parents


def _from_torch_writer(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside ``torch.save`` (not ``torch.load``: a damaged file is another problem)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "save" and code.co_filename.replace("\\", "/").endswith("torch/serialization.py"):
            return True
        tb = tb.tb_next
    return False


class Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler) as an exception, so that the temporary output folders and
    files unwind as after Ctrl-C instead of staying behind as hidden ``.NAME.XXXX.tmp`` folders. A BaseException:
    no ``except Exception`` on the way swallows it."""


def _stop_cleanly_on_sigterm() -> None:
    """Raise :class:`Terminated` in this process on SIGTERM or SIGHUP; processes forked from it (pool workers, which
    their parent stops with SIGTERM) keep the default and simply end. ``medsight serve`` installs its own handler."""
    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)  # a closed terminal or a dropped ssh session


def _never_fail_on_names() -> None:
    """Print any file name: one that is not valid in the locale's encoding (Latin-1 bytes from a Windows or CD
    export, held by Python as surrogates) is written with backslash escapes instead of ending the run with a
    UnicodeEncodeError after its results were written."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(errors="backslashreplace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

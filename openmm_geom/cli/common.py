"""What the command modules share: the standard options, the result writer, progress.

Nothing here (or in any command module's parser code) imports torch, OpenMM or numpy: the
parsers are built from the settings classes in :mod:`openmm_geom.workflows.config`, and each
handler imports its workflow when it runs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

__all__ = ["emit", "json_output", "stdout_is_fd1", "add_standard", "show_progress",
           "summary_text", "THREADS_HELP"]

THREADS_HELP = ("CPU threads for torch and OpenMM (default: $OPENMM_GEOM_THREADS, else all "
                "cores)")

_JSON_OUT = None  # the real stdout while a --json command runs with fd 1 sent to stderr


def emit(args, payload: dict, text: str) -> None:
    """Write a command's result: ``payload`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False) and _JSON_OUT is not None:
        _JSON_OUT.write(json.dumps(payload, indent=2, default=_plain) + "\n")
        _JSON_OUT.flush()
    else:
        print(json.dumps(payload, indent=2, default=_plain) if getattr(args, "json", False)
              else text)


def _plain(value):
    """JSON for numpy scalars and paths (anything else is a bug: TypeError)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def stdout_is_fd1() -> bool:
    """Whether ``sys.stdout`` is the process's file descriptor 1 (not captured)."""
    try:
        return sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # captured (pytest, notebooks): leave it be
        return False


@contextlib.contextmanager
def json_output():
    """Send file descriptor 1 to stderr, keeping the real stdout for the JSON document.

    Native libraries print to fd 1 behind Python's back (mdtraj's DCD plugin announces every
    file it opens), which would corrupt ``--json`` output meant for a pipe.
    """
    global _JSON_OUT
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        _JSON_OUT = os.fdopen(os.dup(saved), "w")
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if _JSON_OUT is not None:
            _JSON_OUT.close()
        _JSON_OUT = None


def add_standard(parser: argparse.ArgumentParser, handler, *, out: str = None,
                 out_required: bool = True, seed=None, threads=True,
                 progress: bool = True, resumable: bool = False) -> None:
    """The options most commands share, and the handler that runs the command.

    ``out`` is the help text of ``--out`` (None: no ``--out``); ``seed`` the default of
    ``--seed`` (None: no ``--seed``); ``threads`` True, False or the help text of
    ``--threads``; ``resumable`` says that running the same command again
    after an interruption continues the work (the Ctrl-C message says so).
    """
    if out is not None:
        parser.add_argument("--out", required=out_required, metavar="PATH",
                            help=out + (" (required)" if out_required else ""))
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, metavar="N",
                            help=f"random seed, an integer >= 0 (default: {seed})")
    if threads:
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help=THREADS_HELP if threads is True else threads)
    if progress:
        parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                            help="progress bars on stderr (default: only when stderr is a "
                                 "terminal)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON document on stdout")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of every error (as the top-level --debug)")
    parser.set_defaults(func=handler, resumable=resumable)


def add_cluster(parser: argparse.ArgumentParser) -> None:
    """``--cluster`` and ``--cluster-file``: run the command's independent tasks on Dask
    (:mod:`openmm_geom.parallel`); neither means in this process, one after the other."""
    parser.add_argument("--cluster", default=None, metavar="SPEC",
                        help="run the independent tasks on Dask: local:N (N worker processes "
                             "here, --threads threads each) or tcp://HOST:PORT (a running "
                             "scheduler); needs the `distributed` extra (default: in this "
                             "process)")
    parser.add_argument("--cluster-file", default=None, metavar="JSON",
                        help="the scheduler file of a running Dask scheduler (`dask scheduler "
                             "--scheduler-file`, dask-jobqueue) instead of --cluster "
                             "(default: none)")
    parser.add_argument("--cluster-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="give up on a scheduler (or local workers) that does not answer "
                             "within this time, before any output is written (default: 20)")


def show_progress(args) -> bool:
    """Whether this command draws progress bars (``--progress``/``--no-progress``, else only
    on a terminal; :func:`openmm_geom.progress.show_progress` decides)."""
    from ..progress import show_progress as decide

    return decide(getattr(args, "progress", None))


def summary_text(result: dict) -> str:
    """The scalar entries of a result, one ``key: value`` per line."""
    return "\n".join(f"{k}: {v}" for k, v in result.items()
                     if not isinstance(v, (dict, list, tuple)) and not hasattr(v, "shape"))

"""``openmm-geom``: the command line. One module per command group, thin handlers; the work
lives in :mod:`openmm_geom.workflows` (and :mod:`openmm_geom.data` for ``datagen``).

Exit codes (one error path, :func:`main`):

====  ==========================================================================================
0     done
1     a check failed (``check-export``, ``doctor``, ``cg evaluate --strict`` on unreliable
      metrics, ``cv export --check``), or an unexpected error (its traceback is printed)
2     unusable input: ``error: <message>`` on stderr (one line, maybe a ``hint:`` line), and
      nothing written; argparse's usage errors exit 2 too
130   interrupted (Ctrl-C): ``interrupted at <where>; run the same command again to resume``
====  ==========================================================================================

``--debug`` prints the traceback of every error. Building the parser imports neither torch
nor OpenMM (the settings classes live in :mod:`openmm_geom.workflows.config`), so ``--help``
is immediate; the package's OpenMM plugin is loaded once a command has been chosen.
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from . import cg, check, cv, datagen, demo, potential, signature
from .common import emit, json_output, stdout_is_fd1

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """The ``openmm-geom`` parser with every command (imports neither torch nor OpenMM)."""
    from ..version import __version__

    parser = argparse.ArgumentParser(
        prog="openmm-geom",
        description="Geometric deep-learning potentials and CVs inside OpenMM.",
        epilog="Exit codes: 0 done, 1 a check failed (or an unexpected error), 2 unusable "
               "input, 130 interrupted. Units: nm, ps (or fs where named), kJ/mol, K.")
    parser.add_argument("--version", action="version", version=f"openmm-geom {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (default: one error line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check.add_commands(sub)
    demo.add_commands(sub)
    datagen.add_commands(sub)
    cg.add_commands(sub)
    potential.add_commands(sub)
    signature.add_commands(sub)
    cv.add_commands(sub)
    return parser


def _known_errors() -> tuple:
    """The exceptions that mean unusable input (exit 2, one line) rather than a bug."""
    from ..errors import OpenMMGeomError

    known = [OpenMMGeomError, ValueError, OSError]
    openmm = sys.modules.get("openmm")
    if openmm is not None and hasattr(openmm, "OpenMMException"):
        known.append(openmm.OpenMMException)  # e.g. no platform of that name
    return tuple(known)


def _one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename}"  # "[Errno 2] ..." reads worse
    return text or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _run(args) -> int:
    from .. import native  # noqa: F401  (loads the TorchCVForce plugin, as `import openmm_geom`)
    from ..progress import reset_position

    reset_position()
    if getattr(args, "json", False) and stdout_is_fd1():
        with json_output():
            return args.func(args)
    return args.func(args)


def main(argv=None) -> int:
    """Run ``openmm-geom`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return _run(args)
        except KeyboardInterrupt:
            from ..progress import position

            if debug:
                traceback.print_exc()
            where = position()
            if getattr(args, "resumable", False):
                message = (f"interrupted{f' at {where}' if where else ''}; run the same command "
                           "again to resume")
            else:
                message = "interrupted"
            print(message, file=sys.stderr)
            return EXIT_INTERRUPTED
        except _known_errors() as error:
            if debug:
                traceback.print_exc()
            message = _one_line(error)
            if getattr(args, "json", False):
                payload = dict(getattr(args, "json_error", {}), error=message,
                               exit_code=EXIT_USAGE)
                try:
                    emit(args, payload, "")
                except OSError:  # stdout is gone: the message on stderr is what counts
                    pass
            print(f"error: {message}", file=sys.stderr)
            hint = getattr(error, "hint", None)
            if hint:
                print(f"hint: {' '.join(str(hint).split())}", file=sys.stderr)
            return EXIT_USAGE

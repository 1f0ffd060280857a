"""Independent tasks in this process or on a Dask cluster: one execution layer for every
workload that is a bag of long, independent jobs (trajectories, folds, replicas, trainings).

- :func:`parse_cluster` turns the command line's ``--cluster`` / ``--cluster-file`` into a
  :class:`ClusterSpec` (or None: run in this process, the serial behaviour) and refuses a bad
  value before anything runs;
- :class:`TaskRunner` (a context manager) starts or connects to the cluster on entry, so an
  unreachable scheduler is refused, within a timeout, before the command writes anything;
  :meth:`TaskRunner.run` runs ``function(*arguments)`` for each task and returns the results
  in task order, with one progress bar across tasks and one log file per task.

Clusters:

``local:N``
    a ``distributed.LocalCluster`` of N worker processes, ``threads`` threads each (default
    1), so that torch and OpenMM threads never oversubscribe the cores;
``tcp://HOST:PORT`` (or ``tls://``)
    an existing scheduler (``dask scheduler``, dask-jobqueue's ``SLURMCluster``, ...);
``--cluster-file scheduler.json``
    the file ``dask scheduler --scheduler-file`` writes.

Tasks must be resumable: a worker that dies (a node lost, a job killed) makes the scheduler
run its task again elsewhere (up to ``allowed_failures`` times), and the task continues from
its own checkpoint. Results are gathered in task order, so what a command writes does not
depend on which worker finished first.

Dask is an optional extra (``pip install openmm-geom[distributed]``); without it a cluster
option gives a :class:`~openmm_geom.errors.ClusterError` that names the extra. Nothing here
imports dask, torch or OpenMM until a cluster is opened.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from . import arguments as check
from .errors import ClusterError

__all__ = ["ClusterSpec", "parse_cluster", "TaskRunner", "Task", "EXTRA"]

EXTRA = "pip install 'openmm-geom[distributed]'"
_SCHEMES = ("tcp://", "tls://")


@dataclass(frozen=True)
class ClusterSpec:
    """Where tasks run: ``kind`` is ``local`` (``workers`` processes), ``address`` (an existing
    scheduler at ``address``) or ``file`` (its address read from ``path``); ``threads`` per
    worker process (local) and per task (every kind)."""

    kind: str
    workers: int = 0
    address: str = ""
    path: str = ""
    threads: int = 1

    def describe(self) -> str:
        if self.kind == "local":
            return f"local cluster of {self.workers} processes x {self.threads} thread(s)"
        if self.kind == "file":
            return f"Dask scheduler of {self.path}"
        return f"Dask scheduler at {self.address}"


@dataclass(frozen=True)
class Task:
    """One unit of work: ``name`` (unique; names its log file) and the arguments of the
    function :meth:`TaskRunner.run` calls."""

    name: str
    arguments: Tuple = ()


def parse_cluster(cluster: Optional[str], cluster_file: Optional[str] = None,
                  threads: Optional[int] = None) -> Optional[ClusterSpec]:
    """The cluster named on the command line, or None (run in this process).

    Parameters
    ----------
    cluster : str, optional
        ``local:N`` or a scheduler address ``tcp://HOST:PORT`` / ``tls://HOST:PORT``.
    cluster_file : str, optional
        A scheduler file (JSON with an ``address``), instead of ``cluster``.
    threads : int, optional
        Threads per task (and per local worker process); default 1.

    Raises
    ------
    ValueError
        A malformed value, both options, or a scheduler file that is missing or unreadable.
    """
    threads = 1 if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if cluster is not None and cluster_file is not None:
        raise ValueError("give --cluster or --cluster-file, not both")
    if cluster_file is not None:
        path = Path(cluster_file)
        _scheduler_address(path)  # refused now if missing or unreadable
        return ClusterSpec("file", path=str(path), threads=threads)
    if cluster is None:
        return None
    text = str(cluster).strip()
    if text.startswith("local:"):
        count = text[len("local:"):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--cluster local:N needs a number of worker processes N >= 1, "
                             f"got {cluster!r}")
        return ClusterSpec("local", workers=int(count), threads=threads)
    if text.startswith(_SCHEMES):
        host, _, port = text.split("://", 1)[1].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--cluster address must be tcp://HOST:PORT, got {cluster!r}")
        return ClusterSpec("address", address=text, threads=threads)
    raise ValueError(f"--cluster must be local:N or tcp://HOST:PORT, got {cluster!r}")


def _scheduler_address(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no scheduler file {path} (written by `dask scheduler "
                         "--scheduler-file FILE` or dask-jobqueue)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable scheduler file {path}: {error}") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"scheduler file {path} has no scheduler address")
    return address


def _import_distributed():
    try:
        import distributed
    except ImportError as error:
        raise ClusterError(f"a Dask cluster needs the optional extra: {EXTRA} ({error})") from None
    return distributed


_PROGRESS_TOPIC = "openmm-geom-task-progress"
_PROGRESS_SECONDS = 1.0


class _ProgressPublisher:
    """On a Dask worker: while a task runs, send how far its outermost progress bar got
    (:func:`openmm_geom.progress.completed_fraction`) to the client as worker events, at
    most once a second. Assumes one task at a time per worker process."""

    def __init__(self, name: str):
        import threading

        from distributed import get_worker

        from .progress import reset_position

        self.name, self.worker = name, get_worker()
        reset_position()  # the bars of an earlier task on this worker
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        from .progress import completed_fraction

        last = None
        while not self.stop.wait(_PROGRESS_SECONDS):
            fraction = completed_fraction()
            if fraction is not None and fraction != last:
                self.worker.log_event(_PROGRESS_TOPIC, {"task": self.name, "fraction": fraction})
                last = fraction

    def close(self):
        self.stop.set()
        self.thread.join()


def _publisher(name: str):
    try:
        return _ProgressPublisher(name)
    except (ImportError, ValueError):  # not on a Dask worker (get_worker raises ValueError)
        return None


def _run_task(function: Callable, arguments: tuple, name: str, threads: Optional[int],
              log_dir: Optional[str]):
    """On a worker (or here): set the threads (None: leave them), run the task, log start,
    end and errors."""
    from .threads import set_threads

    if threads is not None:
        set_threads(threads)
    log = None
    if log_dir is not None:
        log = open(Path(log_dir) / f"{name}.log", "a", encoding="utf-8")
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} start {name} on {socket.gethostname()} "
              f"pid {os.getpid()}, {threads or 'default'} thread(s)", file=log, flush=True)
    started = time.perf_counter()
    publisher = _publisher(name)  # None unless on a Dask worker
    try:
        result = function(*arguments)
    except BaseException:
        if log is not None:
            print(traceback.format_exc(), file=log, flush=True)
            log.close()
        raise
    finally:
        if publisher is not None:
            publisher.close()
    if log is not None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} done {name} in "
              f"{time.perf_counter() - started:.1f} s", file=log, flush=True)
        log.close()
    return result


class TaskRunner:
    """Runs tasks in this process (``spec`` None) or on the Dask cluster ``spec`` describes.

    Parameters
    ----------
    spec : ClusterSpec or None
        From :func:`parse_cluster`.
    threads : int, optional
        Threads per task when running in this process (None: as they are); a cluster's
        tasks use ``spec.threads``.
    timeout : float
        Seconds to wait for a scheduler (or a local cluster) before giving up.
    allowed_failures : int
        How often a task may lose its worker before the run fails.
    announce : bool
        Say on stderr, once the cluster is up, where the tasks run and where the Dask
        dashboard is (the command line does).

    Use as a context manager: the cluster starts (or is reached) on entry, which is where an
    unreachable scheduler is refused, and is closed on exit. Nested ``with`` blocks share
    the cluster of the outermost one.
    """

    def __init__(self, spec: Optional[ClusterSpec], threads: Optional[int] = None,
                 timeout: float = 20.0,
                 allowed_failures: int = 3, announce: bool = False):
        self.spec = spec
        self.announce = bool(announce)
        self.threads = spec.threads if spec is not None else (
            None if threads is None else check.count("threads", threads))
        self.timeout = check.number("cluster timeout", timeout)
        self.allowed_failures = int(allowed_failures)
        self.client = None
        self._cluster = None
        self._config = None
        self.task_progress: dict = {}  # task name -> last fraction done a worker reported
        self._depth = 0  # nested `with` blocks: the outermost starts and closes the cluster

    @property
    def dashboard(self) -> Optional[str]:
        """The Dask dashboard's address, when the cluster has one."""
        return getattr(self.client, "dashboard_link", None) if self.client is not None else None

    def __enter__(self) -> "TaskRunner":
        self._depth += 1
        if self.spec is None or self._depth > 1:  # nested use: the cluster is already up
            return self
        distributed = _import_distributed()
        import dask

        self._config = dask.config.set({"distributed.scheduler.allowed-failures":
                                        self.allowed_failures})
        self._config.__enter__()
        try:
            if self.spec.kind == "local":
                self._cluster = distributed.LocalCluster(
                    n_workers=self.spec.workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.ERROR)
                self.client = distributed.Client(self._cluster, timeout=self.timeout)
            else:
                address = (self.spec.address if self.spec.kind == "address"
                           else _scheduler_address(Path(self.spec.path)))
                self.client = distributed.Client(address, timeout=self.timeout)
        except (OSError, TimeoutError, RuntimeError) as error:  # RuntimeError: workers did not start
            self._depth = 0
            self.close()
            where = self.spec.describe()
            raise ClusterError(f"cannot reach the {where} within {self.timeout:g} s: {error}",
                               hint="start the scheduler first (`dask scheduler`), check the "
                                    "address, or run without --cluster") from None
        if self.announce:
            import sys

            dashboard = self.dashboard
            print(f"running on a {self.spec.describe()}"
                  + (f"; dashboard {dashboard}" if dashboard else ""), file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.close()

    def close(self) -> None:
        for thing in (self.client, self._cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a broken cluster must not mask errors
                    pass
        self.client, self._cluster = None, None
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None

    def shared(self, cls: type, *arguments):
        """One object ``cls(*arguments)`` that every task can call: here, the object itself;
        on a cluster, a Dask actor of it (held by one worker, one call at a time; its
        methods return futures, whose ``result()`` is the value). Tasks receive it as an
        argument. ``cls`` must be importable by name on the workers."""
        if self.client is None:
            return cls(*arguments)
        return self.client.submit(cls, *arguments, actor=True, pure=False).result()

    def run(self, function: Callable, tasks: Sequence[Task], *, log_dir=None,
            progress: bool = False, description: str = "tasks") -> list:
        """``function(*task.arguments)`` for every task; the results in task order.

        ``function`` must be importable by name on the workers (a module-level function).
        With ``log_dir`` each task appends to ``log_dir/NAME.log`` (start, end, traceback),
        on the worker's file system. The first task that fails raises its exception here
        (after the other tasks are cancelled).
        """
        from .progress import progress_bar

        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        logs = None if log_dir is None else str(log_dir)
        if logs is not None:
            Path(logs).mkdir(parents=True, exist_ok=True)
        bar = progress_bar(len(tasks), description, enabled=progress, unit="task")
        try:
            if self.client is None:
                results = []
                for task in tasks:
                    results.append(_run_task(function, tuple(task.arguments), task.name,
                                             self.threads, logs))
                    bar.update(1)
                return results
            return self._run_on_cluster(function, tasks, logs, bar)
        finally:
            bar.close()

    def _run_on_cluster(self, function, tasks, logs, bar) -> list:
        from distributed import wait

        def on_progress(event):
            _, message = event
            self.task_progress[message["task"]] = float(message["fraction"])

        self.client.subscribe_topic(_PROGRESS_TOPIC, on_progress)
        futures = {self.client.submit(_run_task, function, tuple(task.arguments), task.name,
                                      self.threads, logs, key=f"{task.name}-{id(self)}",
                                      pure=False): task.name
                   for task in tasks}
        pending = set(futures)
        try:
            while pending:
                try:
                    done, pending = wait(pending, timeout=_PROGRESS_SECONDS,
                                         return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                for future in done:
                    future.result()  # raises the task's exception
                    bar.update(1)
                running = [self.task_progress.get(futures[f], 0.0) for f in pending]
                if running:  # the slowest unfinished task's own progress
                    bar.set_postfix_str(f"slowest task {100 * min(running):.0f}%", refresh=False)
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            self.client.unsubscribe_topic(_PROGRESS_TOPIC)

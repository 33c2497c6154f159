"""Where the engine's independent tasks run: on this machine or on a Ray cluster.

An ``Executor`` maps one task function over a list of items (partitions: one window size of a
sweep) and returns the results in the items' order. Both executors run the same function on
the same items, so their results are identical; only where the work happens differs.

- ``LocalExecutor``: in this process (the default, as before executors existed), or in a pool
  of ``workers`` processes on this machine.
- ``RayExecutor``: tasks on a Ray runtime (``pip install 'tapewatch[ray]'``): the one already
  started in this process, a cluster at ``address`` (``auto``, ``ray://host:10001``), or a
  local one started for the run and stopped after it.

A task that raises is tried again, up to ``tries`` times in all; a partition that fails every
try is an error naming it, never a result with a hole. An ``EngineError`` raised by a task
(too few windows for the buffer, say) is the engine's answer about its inputs, the same on
every try: it is not retried and reaches the caller as it is.

Errors (``engine.errors``)::

    EngineError
    ├── InputError   --executor ray without Ray installed
    └── DataError    a partition failed every try, or no task finished in ``timeout`` seconds
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.config import EXECUTORS
from engine.errors import DataError, EngineError, InputError

__all__ = ["EXECUTORS", "TIMEOUT", "TRIES", "Executor", "LocalExecutor", "RayExecutor", "make"]

TRIES = 3  # tries per task in all: a crashed worker or a lost node costs a retry, not the run
TIMEOUT = 3600.0  # seconds without any task finishing before the run gives up
RAY_HINT = "--executor ray needs Ray, which is not installed: pip install 'tapewatch[ray]'"

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class _Refused:
    """A task's ``EngineError``, returned rather than raised so that no executor retries it."""

    error: EngineError


def _attempt(fn: Callable[[T], R], item: T) -> R | _Refused:
    """One try of ``fn(item)``; module level so that process pools and Ray can pickle it."""
    try:
        return fn(item)
    except EngineError as e:
        return _Refused(e)


def _failed(name: str, tries: int, error: BaseException) -> DataError:
    what = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return DataError(
        f"task {name} failed {tries} time{'s' if tries > 1 else ''} ({what}); "
        "no table without it: rerun, and report the error if it persists"
    )


class Executor:
    """Runs ``fn`` over items; a context manager that releases its workers at the end.
    ``spreads``: tasks run beside this process (a pool, a cluster), so splitting a job into
    more of them (a day of windows each) can use more cores than one process would."""

    tries: int = TRIES
    spreads: bool = False

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        name_of: Callable[[T], str],
        progress: Progress = _quiet,
        stage: str = "tasks",
    ) -> list[R]:
        """``[fn(item) for item in items]``, in order, each item tried up to ``tries`` times;
        ``progress(stage, done, total)`` after each finished task. DataError naming
        ``name_of(item)`` for an item that fails every try."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unwrap(result: Any) -> Any:
    if isinstance(result, _Refused):
        raise result.error
    return result


class LocalExecutor(Executor):
    """Tasks on this machine: in this process (``workers`` 1) or in a pool of processes."""

    def __init__(self, workers: int = 1, tries: int = TRIES):
        if workers < 1 or tries < 1:
            raise InputError(f"workers {workers} and tries {tries} must be at least 1")
        self.workers = workers
        self.tries = tries
        self.spreads = workers > 1
        self._pool: cf.ProcessPoolExecutor | None = None

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        name_of: Callable[[T], str],
        progress: Progress = _quiet,
        stage: str = "tasks",
    ) -> list[R]:
        if self.workers == 1:
            return self._in_process(fn, items, name_of, progress, stage)
        return self._in_pool(fn, items, name_of, progress, stage)

    def _in_process(self, fn, items, name_of, progress, stage) -> list:
        out = []
        progress(stage, 0, len(items))
        for item in items:
            for attempt in range(1, self.tries + 1):
                try:
                    result = _attempt(fn, item)
                    break
                except Exception as e:
                    if attempt == self.tries:
                        raise _failed(name_of(item), self.tries, e) from e
            out.append(_unwrap(result))
            progress(stage, len(out), len(items))
        return out

    def _in_pool(self, fn, items, name_of, progress, stage) -> list:
        got = _Outcomes(len(items), progress, stage)
        tries = dict.fromkeys(range(len(items)), 0)
        running: dict[cf.Future, int] = {}

        def submit(i: int) -> None:
            if self._pool is None:
                # spawn, not fork: Polars' and isotree's threads do not survive a fork
                ctx = multiprocessing.get_context("spawn")
                self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx)
            tries[i] += 1
            running[self._pool.submit(_attempt, fn, items[i])] = i

        for i in range(len(items)):
            submit(i)
        while running:
            done, _ = cf.wait(running, timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
            if not done:
                self.close()
                raise _stalled([name_of(items[i]) for i in running.values()])
            for future in done:
                i = running.pop(future)
                try:
                    value = future.result()
                except Exception as e:
                    if isinstance(e, cf.process.BrokenProcessPool):
                        self._drop_pool()  # a worker died: the next try gets a new pool
                    if tries[i] < self.tries:
                        submit(i)
                    else:
                        got.failed(i, _failed(name_of(items[i]), self.tries, e))
                    continue
                got.returned(i, value)
            error = got.first_failure()
            if error is not None:
                self.close()
                raise error
        return got.in_order()

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._drop_pool()


class _Outcomes:
    """What the tasks of one ``map`` gave, as they finish in any order: results, failures
    (a task's own ``EngineError`` or its retries exhausted), and progress."""

    def __init__(self, total: int, progress: Progress, stage: str):
        self.total, self.progress, self.stage = total, progress, stage
        self.results: dict[int, Any] = {}
        self.failures: dict[int, EngineError] = {}
        progress(stage, 0, total)

    def returned(self, i: int, value: Any) -> None:
        if isinstance(value, _Refused):
            self.failures[i] = value.error
            return
        self.results[i] = value
        self.progress(self.stage, len(self.results), self.total)

    def failed(self, i: int, error: EngineError) -> None:
        self.failures[i] = error

    def first_failure(self) -> EngineError | None:
        """The failure to report once every item before it has a result: the same one the
        in-process executor, which goes in order, would report (not whichever finished
        first)."""
        if not self.failures:
            return None
        first = min(self.failures)
        return self.failures[first] if all(j in self.results for j in range(first)) else None

    def in_order(self) -> list:
        return [self.results[i] for i in range(self.total)]


def _stalled(names: list[str]) -> DataError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return DataError(
        f"no task finished in {TIMEOUT:g} seconds; still running: {shown}; "
        "check the workers (ray status) and rerun"
    )


class RayExecutor(Executor):
    """Tasks on Ray: the runtime already started in this process, else ``ray.init(address)``
    (None: a local runtime for this run, stopped by ``close``). InputError when Ray is not
    installed, before any work."""

    def __init__(self, address: str | None = None, tries: int = TRIES, cpus_per_task: float = 1):
        try:
            import ray
        except ImportError:
            raise InputError(RAY_HINT) from None
        self.ray = ray
        self.address = address
        self.tries = tries
        self.spreads = True
        self.cpus_per_task = cpus_per_task
        self._started = False
        self._sigterm: Any = None  # the SIGTERM handler before ours
        self._signalled = 0  # the signal that ended the run

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,  # a worker's prints would land among the data on stdout
                logging_level=logging.WARNING,
            )
        except Exception as e:
            where = self.address or "a local Ray runtime"
            raise DataError(f"cannot start or reach {where}: {e}".splitlines()[0]) from None
        self._started = True
        # Ray's driver answers SIGTERM with a C++ stack dump and an abort (exit 134). Ours
        # unwinds instead: ``close`` shuts Ray down, and the exit code is 143, as for any
        # process ended by SIGTERM. Inside ``ray.wait`` an exception from a signal handler
        # comes out as another (KeyboardInterrupt, or SystemExit(1)), so the handler only
        # interrupts and notes the signal, and ``map`` turns whatever comes out into 143.
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, self._terminate)

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        name_of: Callable[[T], str],
        progress: Progress = _quiet,
        stage: str = "tasks",
    ) -> list[R]:
        self._connect()
        ray = self.ray
        task = ray.remote(
            num_cpus=self.cpus_per_task,
            max_retries=self.tries - 1,
            retry_exceptions=True,
            runtime_env={"env_vars": _worker_env()},
        )(_attempt)
        # Ray's driver prints its notices (a task failed and will be retried ...) to stdout,
        # from a thread: while tasks run, they go to stderr, away from the data.
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return self._run(task, fn, items, name_of, progress, stage)
        except BaseException:
            if self._signalled:
                raise SystemExit(128 + self._signalled) from None
            raise

    def _terminate(self, signum: int, frame: object) -> None:
        self._signalled = signum
        raise KeyboardInterrupt

    def _run(self, task, fn, items, name_of, progress, stage) -> list:
        ray = self.ray
        fn_ref = ray.put(fn)
        refs = [task.remote(fn_ref, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        got = _Outcomes(len(items), progress, stage)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=TIMEOUT)
            if not ready:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise _stalled([name_of(items[index[r]]) for r in pending])
            for ref in ready:
                i = index[ref]
                try:
                    value = ray.get(ref, timeout=TIMEOUT)
                except Exception as e:  # RayTaskError (the task's own error is its cause)
                    cause = getattr(e, "cause", None) or e
                    got.failed(i, _failed(name_of(items[i]), self.tries, cause))
                    continue
                got.returned(i, value)
            error = got.first_failure()
            if error is not None:
                for other in pending:
                    ray.cancel(other, force=True)
                raise error
        return got.in_order()

    def close(self) -> None:
        if self._started:
            self._started = False
            try:
                self.ray.shutdown()
            finally:
                if self._sigterm is not None:
                    signal.signal(signal.SIGTERM, self._sigterm)
                    self._sigterm = None


def _worker_env() -> dict[str, str]:
    """What a Ray worker must share with this process.

    - The thread counts of this process's BLAS. Ray sets a worker's ``OMP_NUM_THREADS`` to
      its task's CPUs (1), and OpenBLAS splits a long dot product between its threads: with
      another count its sums round differently (about 1e-13 relative on the verdict's
      effects), and the tables would not be the same bits. (On a node with fewer cores than
      tasks times threads, that oversubscribes its cores a little.)
    - The ``AWS_*`` variables, so that a task reads an ``s3://`` store from the endpoint
      and with the credentials this process checked (a cluster's workers do not have the
      driver's environment)."""
    import numpy  # noqa: F401  (loaded, so that their BLAS libraries are seen)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    n = str(max(counts, default=1))
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    return {**env, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def make(kind: str, ray_address: str | None = None, tries: int = TRIES) -> Executor:
    """The executor ``--executor`` names: ``local`` or ``ray`` (at ``ray_address``)."""
    if kind == "local":
        if ray_address:
            raise InputError(f"--ray-address {ray_address} needs --executor ray")
        return LocalExecutor(tries=tries)
    if kind == "ray":
        return RayExecutor(ray_address or None, tries=tries)
    raise InputError(f"--executor {kind!r} is not one of {', '.join(EXECUTORS)}")

"""Executors: a sweep on a real local Ray runtime gives the local executor's table, a task that
fails once is retried, and one that keeps failing is an error naming it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from conftest import UNIT
from synth import tape, write_store

from engine import pipeline
from engine.cli import main
from engine.executors import LocalExecutor, RayExecutor
from engine.model import ModelParams
from engine.pipeline import Settings, SizeTask, report_size, score_size

T0 = 1_723_075_200_000
SMALL = ["--buffer", "100", "--retrain-every", "50", "--trees", "20", "--reps", "50", "--jobs", "1"]
SIZES = [20_000, 30_000]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("executors")
    write_store(root, "SIMUSDT", tape(T0, 3 * 3600, 2, seed=11))
    write_store(root, "ETHUSDT", tape(T0, 3 * 3600, 1, seed=12))
    return root


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def settings(store: Path) -> Settings:
    return Settings(
        data_dir=store,
        symbol="SIMUSDT",
        model=ModelParams(buffer=100, retrain_every=50, trees=20),
        horizons=(("1m", 60_000),),
        jobs=1,
        reps=50,
    )


def sweep(*args: str, fmt: str = "json"):
    return CliRunner().invoke(main, ["sweep", *args, "--format", fmt], catch_exceptions=False)


def grid(store: Path) -> list[str]:
    return ["--data-dir", str(store), "--symbol", "simusdt", "--every", "20s,30s"]


def table(report) -> bytes:
    return orjson.dumps(report.as_dict())  # NaN as null: equal tables give equal bytes


@pytest.mark.ray
def test_ray_sweep_table_equals_the_local_one(ray_runtime, store):
    two = ["--data-dir", str(store), "--symbols", "simusdt,ethusdt", "--every", "20s,30s"]
    local = sweep(*two, "--horizons", "1m,5m", *SMALL)
    assert local.exit_code == 0, local.stderr
    on_ray = sweep(*two, "--horizons", "1m,5m", *SMALL, "--executor", "ray")
    assert on_ray.exit_code == 0, on_ray.stderr
    assert on_ray.stdout == local.stdout
    body = orjson.loads(on_ray.stdout)
    assert sorted({(r["symbol"], r["every"], r["horizon"]) for r in body["rows"]}) == [
        (sym, every, h) for sym in ("ETHUSDT", "SIMUSDT") for every in ("20s", "30s")
        for h in ("1m", "5m")
    ]  # fmt: skip
    assert set(body["flag_rate"]) == {"SIMUSDT 20s", "SIMUSDT 30s", "ETHUSDT 20s", "ETHUSDT 30s"}
    one = sweep(*grid(store), "--horizons", "1m,5m", *SMALL, "--executor", "ray")
    assert one.exit_code == 0 and set(orjson.loads(one.stdout)["flag_rate"]) == {"20s", "30s"}


@pytest.fixture(scope="module")
def long_store(tmp_path_factory) -> Path:
    """Two symbols over 20 hours: enough for the verdict's 12 h warm-up and then some."""
    root = tmp_path_factory.mktemp("executors-long")
    write_store(root, "SIMUSDT", tape(T0, 20 * 3600, 0.5, seed=21))
    write_store(root, "ETHUSDT", tape(T0, 20 * 3600, 0.3, seed=22))
    return root


@pytest.mark.ray
def test_ray_run_over_symbols_equals_the_local_one(ray_runtime, long_store, tmp_path):
    """Per-symbol verdicts and the pooled one, bit for bit: Ray's workers get this process's
    BLAS thread count (with one thread, OpenBLAS's dot products round differently)."""

    def run(where: str) -> dict:
        r = CliRunner().invoke(
            main,
            ["run", "--data-dir", str(long_store), "--symbols", "all", "--every", "20s",
             "--horizons", "1m,5m", "--no-plots", "--results", str(tmp_path / where), *SMALL,
             "--executor", where, "--format", "json"],
            catch_exceptions=False,
        )  # fmt: skip
        assert r.exit_code == 0, r.stderr
        body = orjson.loads(r.stdout)
        del body["results"], body["pooled"]["ledger_comparisons"]  # where, and the ledger's count
        return body

    local, on_ray = run("local"), run("ray")
    assert local["symbols"] == ["ETHUSDT", "SIMUSDT"]
    assert all(r["effect"] is not None for r in local["pooled"]["rows"])
    assert sum(r["p_hac"] is not None for r in local["rows"]) == 32
    assert on_ray == local
    for where in ("local", "ray"):
        for sym in ("ETHUSDT", "SIMUSDT"):
            assert (tmp_path / where / f"{sym}-20s" / "scores.parquet").exists()
        assert (tmp_path / where / "pooled-20s" / "evaluate.json").exists()


@pytest.mark.ray
@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_task_that_fails_once_is_retried(where, ray_runtime, store, tmp_path, monkeypatch):
    s = settings(store)
    expected = table(pipeline.sweep(s, SIZES))
    flag = tmp_path / "fail-once"
    flag.touch()

    def flaky(task: SizeTask):
        if task.settings.every_ms == 30_000 and flag.exists():
            flag.unlink()  # the first try removes it: the retry succeeds
            raise RuntimeError("worker lost")
        return (report_size if "score" in task.windows.columns else score_size)(task)

    # In this process a size is one task (score_size); on Ray its refits go in batches and
    # its horizon table is the size's task (report_size).
    monkeypatch.setattr(pipeline, "score_size", flaky)
    monkeypatch.setattr(pipeline, "report_size", flaky)
    executor = LocalExecutor() if where == "local" else RayExecutor()
    with executor:
        got = table(pipeline.sweep(s, SIZES, executor=executor))
    assert not flag.exists() and got == expected


@pytest.mark.ray
@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_task_that_keeps_failing_is_named(where, ray_runtime, store, tmp_path, monkeypatch):
    tries = tmp_path / "tries"
    tries.mkdir()

    def broken(task: SizeTask):
        if task.settings.every_ms == 30_000:
            (tries / str(len(list(tries.iterdir())))).touch()
            raise RuntimeError("disk on fire")
        return (report_size if "score" in task.windows.columns else score_size)(task)

    monkeypatch.setattr(pipeline, "score_size", broken)
    monkeypatch.setattr(pipeline, "report_size", broken)
    r = CliRunner().invoke(main, ["sweep", *grid(store), *SMALL, "--executor", where])
    assert (r.exit_code, r.stdout) == (1, ""), r.output
    error = (
        "Error: task SIMUSDT every 30s failed 3 times (RuntimeError: disk on fire); "
        "no table without it: rerun, and report the error if it persists"
    )
    lines = r.stderr.splitlines()
    if where == "local":
        assert lines == [error]
    else:  # Ray's own notices of the retries come before, on stderr
        assert lines[-1] == error and [x for x in lines if x.startswith("Error:")] == [error]
    assert len(list(tries.iterdir())) == 3


@pytest.mark.ray
def test_an_engine_error_in_a_task_is_not_retried_and_reads_as_locally(ray_runtime, store):
    args = [*grid(store), *SMALL, "--buffer", "800"]  # 540 windows of 20s: too few
    local = CliRunner().invoke(main, ["sweep", *args])
    on_ray = CliRunner().invoke(main, ["sweep", *args, "--executor", "ray"])
    assert (on_ray.exit_code, on_ray.stderr) == (local.exit_code, local.stderr)
    assert local.exit_code == 1 and local.stderr.startswith(
        "Error: SIMUSDT every 20s: fewer windows than the buffer: 540 scoreable windows"
    )


class Recording(LocalExecutor):
    """A process pool that notes which task functions it ran."""

    def __init__(self, workers: int):
        super().__init__(workers)
        self.ran: list[str] = []

    def map(self, fn, items, name_of, progress=None, stage="tasks"):
        self.ran.append(f"{fn.__name__} x{len(items)}")
        return super().map(fn, items, name_of, progress or (lambda *a: None), stage)


def test_a_process_pool_gives_the_in_process_results(store, monkeypatch):
    """A pool gets smaller tasks: a day of windows each, batches of refits, then a horizon
    table per size; the same table as one task per size in this process."""
    monkeypatch.setattr(pipeline, "REFITS_PER_TASK", 2)  # 20s: 9 refits, 30s: 6
    s = settings(store)
    with Recording(workers=2) as pool:
        assert table(pipeline.sweep(s, SIZES, executor=pool)) == table(pipeline.sweep(s, SIZES))
    assert pool.ran == ["build_span x1", "run_batch x8", "report_size x2"]  # 5 + 3 batches
    in_process = Recording(workers=1)
    pipeline.sweep(s, SIZES, executor=in_process)
    assert in_process.ran == ["score_size x2"]  # the scan runs here, reading ahead


def test_executor_ray_without_ray_is_one_line_with_the_install_hint(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    r = CliRunner().invoke(main, ["sweep", *grid(store), *SMALL, "--executor", "ray"])
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (
        "Error: --executor ray needs Ray, which is not installed: pip install 'tapewatch[ray]'\n"
    )
    r = CliRunner().invoke(main, ["sweep", *grid(store), "--ray-address", "auto"])
    assert (r.exit_code, r.stderr) == (1, "Error: --ray-address auto needs --executor ray\n")
    r = CliRunner().invoke(main, ["sweep", *grid(store)], env={"TAPEWATCH_ENGINE_EXECUTOR": "dask"})
    assert r.exit_code == 2 and "'dask' is not one of 'local', 'ray'" in r.stderr


def test_ray_workers_get_the_s3_settings_and_blas_threads(monkeypatch):
    """A cluster's workers do not have this process's environment: a task reading an s3://
    store must use the endpoint and credentials this process checked."""
    from engine.executors import _worker_env

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    env = _worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert env["AWS_ACCESS_KEY_ID"] == "key" and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] != ""


SLOW_TASKS = """
import time
from engine.executors import RayExecutor

def slow(x):
    time.sleep(60)
    return x

if __name__ == "__main__":
    with RayExecutor() as ex:
        ex.map(slow, [1, 2], str)
"""


@pytest.mark.ray
def test_sigterm_on_ray_shuts_ray_down_and_exits_143(tmp_path):
    """Ray's driver answers SIGTERM with a C++ stack dump and an abort, leaving its raylet
    behind for a while; the engine's executor unwinds instead: Ray shut down, exit 143."""
    import signal
    import subprocess
    import time

    (tmp_path / "slow.py").write_text(SLOW_TASKS)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    p = subprocess.Popen(
        [sys.executable, "slow.py"], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip

    def session() -> list[str]:
        ps = subprocess.run(["ps", "-e", "-o", "sid=,pid=,args="], capture_output=True, text=True)
        mine = [line.split(None, 2) for line in ps.stdout.splitlines()]
        return [a for sid, pid, a in mine if int(sid) == p.pid and int(pid) != p.pid]

    deadline = time.monotonic() + 60 * UNIT
    while not any("ray::_attempt" in a for a in session()):  # the tasks run in workers
        assert time.monotonic() < deadline and p.poll() is None, "no Ray task started"
        time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(30 * UNIT)
    assert (rc, time.monotonic() - t0 < 10 * UNIT) == (143, True)
    with p.stderr:
        assert "SIGTERM received" not in p.stderr.read().decode()
    time.sleep(3 * UNIT)
    assert session() == []  # raylet, GCS and the workers are gone

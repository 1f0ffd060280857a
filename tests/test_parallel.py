"""The execution layer (openmm_geom.parallel) and the first workload on it (datagen
--trajectories): serial = Dask bit for bit, a killed worker's task resumes, clear errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from openmm_geom.data import bundled
from openmm_geom.errors import ClusterError
from openmm_geom.parallel import ClusterSpec, Task, TaskRunner, parse_cluster

ALANINE = str(bundled("alanine-dipeptide.pdb"))
CLI = [sys.executable, "-m", "openmm_geom.cli"]
SHORT = ["--frames", "5", "--interval-ps", "0.01", "--equilibration-ps", "0.01", "--threads", "1"]


def run_cli(*args, expect=0, env=None, timeout=600):
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def assert_same_arrays(a, b):
    first, second = arrays(a), arrays(b)
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name].dtype == second[name].dtype, name
        assert np.array_equal(first[name], second[name]), name


def test_cluster_values_are_checked_before_anything_runs(tmp_path):
    assert parse_cluster(None) is None
    assert parse_cluster("local:3", threads=2) == ClusterSpec("local", workers=3, threads=2)
    assert parse_cluster("tcp://node7:8786").address == "tcp://node7:8786"
    for bad, match in (("local:0", "N >= 1"), ("local:x", "N >= 1"), ("tcp://node7", "HOST:PORT"),
                       ("slurm", "local:N or tcp://")):
        with pytest.raises(ValueError, match=match):
            parse_cluster(bad)
    with pytest.raises(ValueError, match="not both"):
        parse_cluster("local:2", str(tmp_path / "s.json"))
    with pytest.raises(ValueError, match="no scheduler file"):
        parse_cluster(None, str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="no scheduler address"):
        parse_cluster(None, str(tmp_path / "bad.json"))
    (tmp_path / "good.json").write_text(json.dumps({"address": "tcp://10.0.0.1:8786"}))
    assert parse_cluster(None, str(tmp_path / "good.json")).kind == "file"
    with pytest.raises(ValueError, match="threads must be >= 1"):
        parse_cluster("local:2", threads=0)


def _square(x):
    return x * x


def _fails(x):
    raise ValueError(f"task {x} refuses")


def test_serial_runner_keeps_task_order_logs_and_raises_the_task_error(tmp_path):
    with TaskRunner(None) as runner:
        assert runner.run(_square, [Task(f"t{k}", (k,)) for k in range(4)],
                          log_dir=tmp_path) == [0, 1, 4, 9]
        with pytest.raises(ValueError, match="task 1 refuses"):
            runner.run(_fails, [Task("bad", (1,))], log_dir=tmp_path)
        with pytest.raises(ValueError, match="unique"):
            runner.run(_square, [Task("a", (1,)), Task("a", (2,))])
    assert "done t3" in (tmp_path / "t3.log").read_text()
    assert "ValueError: task 1 refuses" in (tmp_path / "bad.log").read_text()


def test_unreachable_scheduler_is_refused_within_the_timeout_before_any_output(tmp_path):
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at "
                                           "tcp://127.0.0.1:9 within 2 s"):
        with TaskRunner(parse_cluster("tcp://127.0.0.1:9"), timeout=2):
            pass
    out = tmp_path / "ens"
    done = run_cli("datagen", ALANINE, "--trajectories", "2", *SHORT, "--out", out,
                   "--cluster", "tcp://127.0.0.1:9", "--cluster-timeout", "2", expect=2)
    assert "error: cannot reach the Dask scheduler" in done.stderr
    assert "hint: start the scheduler first" in done.stderr
    assert not out.exists()


def test_without_the_extra_a_cluster_names_it_and_writes_nothing(tmp_path):
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    out = tmp_path / "ens"
    done = run_cli("datagen", ALANINE, "--trajectories", "2", *SHORT, "--out", out,
                   "--cluster", "local:2", expect=2,
                   env={"PYTHONPATH": str(shadow.parent) + os.pathsep
                        + os.environ.get("PYTHONPATH", "")})
    assert "openmm-geom[distributed]" in done.stderr
    assert not out.exists()
    # serial runs do not need it
    run_cli("datagen", ALANINE, "--trajectories", "1", *SHORT, "--out", out,
            env={"PYTHONPATH": str(shadow.parent)})
    assert (out / "trajectory-000.npz").exists()


def test_bad_settings_are_refused_before_the_cluster_or_the_output(tmp_path):
    out = tmp_path / "ens"
    done = run_cli("datagen", ALANINE, "--trajectories", "2", "--frames", "0", "--out", out,
                   "--cluster", "local:2", expect=2)
    assert "n_frames must be a positive integer" in done.stderr
    assert "running on" not in done.stderr and not out.exists()
    done = run_cli("datagen", ALANINE, *SHORT, "--out", tmp_path / "one.npz",
                   "--cluster", "local:2", expect=2)
    assert "need --trajectories" in done.stderr


def test_datagen_trajectories_on_a_local_cluster_equal_the_serial_run(tmp_path):
    serial, local = tmp_path / "serial", tmp_path / "local"
    run_cli("datagen", ALANINE, "--trajectories", "3", *SHORT, "--seed", "5", "--out", serial)
    done = run_cli("datagen", ALANINE, "--trajectories", "3", *SHORT, "--seed", "5",
                   "--out", local, "--cluster", "local:2", "--json")
    result = json.loads(done.stdout)
    assert result["trajectories"] == 3 and result["frames"] == 15
    assert "local cluster of 2 processes" in result["ran_on"]
    assert "dashboard http" in done.stderr
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (serial, local)]
    assert [m["seed"] for m in manifests[1]["trajectories"]] == [5, 6, 7]
    for k in range(3):
        assert_same_arrays(serial / f"trajectory-{k:03d}.npz", local / f"trajectory-{k:03d}.npz")
    # the files themselves are identical too
    assert ([m["sha256"] for m in manifests[0]["trajectories"]]
            == [m["sha256"] for m in manifests[1]["trajectories"]])
    assert len({m["sha256"] for m in manifests[0]["trajectories"]}) == 3  # seeds differ
    logs = sorted(p.name for p in (local / "logs").iterdir())
    assert logs == ["trajectory-000.log", "trajectory-001.log", "trajectory-002.log"]


def _half_then_wait(name):
    from openmm_geom.progress import progress_bar

    bar = progress_bar(4, name, enabled=False)
    bar.update(2)
    time.sleep(3.5)  # the worker reports once a second
    return name


def test_a_cluster_run_reports_each_task_s_own_progress():
    """The tasks' progress bars reach the client (the overall bar shows the slowest task)."""
    with TaskRunner(parse_cluster("local:2")) as runner:
        assert runner.run(_half_then_wait, [Task(n, (n,)) for n in ("a", "b")]) == ["a", "b"]
    assert runner.task_progress == {"a": 0.5, "b": 0.5}


LONG = ["--frames", "400", "--interval-ps", "0.1", "--equilibration-ps", "0.01",
        "--checkpoint-every", "40", "--threads", "1"]


def test_a_killed_worker_task_resumes_from_its_checkpoint_and_loses_nothing(tmp_path):
    """A worker process killed in the middle of a trajectory: the scheduler runs the task
    again on a fresh worker, the run resumes from the trajectory's last chunk, and the files
    equal those of an uninterrupted run."""
    reference, faulty = tmp_path / "reference", tmp_path / "faulty"
    run_cli("datagen", ALANINE, "--trajectories", "2", *LONG, "--out", reference)
    process = subprocess.Popen([*CLI, "datagen", ALANINE, "--trajectories", "2", *LONG,
                                "--out", str(faulty), "--cluster", "local:2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunk = faulty / "trajectory-000.npz.partial" / "chunk_000000.npz"
    log = faulty / "logs" / "trajectory-000.log"
    deadline = time.monotonic() + 300
    while not chunk.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chunk.exists(), "the first chunk never appeared"
    pid = int(log.read_text().split(" pid ")[1].split(",")[0])
    os.kill(pid, signal.SIGKILL)  # the worker process running trajectory 0
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    starts = [line for line in log.read_text().splitlines() if " start " in line]
    assert len(starts) == 2 and str(pid) in starts[0] and str(pid) not in starts[1]
    for k in range(2):
        assert_same_arrays(reference / f"trajectory-{k:03d}.npz",
                           faulty / f"trajectory-{k:03d}.npz")


def test_cg_train_folds_on_a_local_cluster_equal_the_serial_run(tmp_path):
    """One fold per task: the trained ensemble is the same wherever the folds ran."""
    import torch

    data = tmp_path / "data"
    run_cli("datagen", ALANINE, "--trajectories", "1", "--frames", "60", "--interval-ps", "0.05",
            "--equilibration-ps", "0.01", "--threads", "1", "--out", data)
    tiny = ["--quick", "--epochs", "2", "--folds", "3", "--gap-frames", "2", "--features", "8",
            "--filters", "8", "--n-rbf", "8", "--output-hidden", "8", "--threads", "1",
            "--data", data / "trajectory-000.npz"]
    run_cli("cg", "train", *tiny, "--out", tmp_path / "serial")
    done = run_cli("cg", "train", *tiny, "--out", tmp_path / "local", "--cluster", "local:2")
    assert "running on a local cluster of 2 processes" in done.stderr
    histories = [json.loads((tmp_path / d / "training.json").read_text())
                 for d in ("serial", "local")]
    assert histories[0] == histories[1] and len(histories[0]) == 3
    from openmm_geom.training.checkpoints import load_cgschnet

    first, second = (load_cgschnet(tmp_path / d / "cg_model.pt")[0].state_dict()
                     for d in ("serial", "local"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in (tmp_path / "local" / "logs").iterdir()) == [
        "fold0.log", "fold1.log", "fold2.log"]


def test_signature_train_method_fold_tasks_equal_the_serial_run(tmp_path):
    """Every (method, fold) a task: the fold records and the summary equal a serial run's."""
    run_cli("signature", "generate-gene", "--out", tmp_path / "g.npz", "--trajectories", "6",
            "--test", "2", "--nodes", "12", "--frames", "40", "--no-progress")
    common = ["signature", "train", "--data", tmp_path / "g.npz", "--methods",
              "deep-signature,head-tail", "--epochs", "2", "--groups", "2", "--folds", "2",
              "--threads", "1", "--no-progress", "--json"]
    serial = json.loads(run_cli(*common, "--out", tmp_path / "serial").stdout)
    local = json.loads(run_cli(*common, "--out", tmp_path / "local",
                               "--cluster", "local:2").stdout)
    assert serial["accuracy"] == local["accuracy"] and serial["recall"] == local["recall"]
    for method in ("deep-signature", "head-tail"):
        for k in range(2):
            records = [json.loads((tmp_path / d / "folds" / method / f"fold{k}.json").read_text())
                       for d in ("serial", "local")]
            for record in records:
                record.pop("seconds", None)
            assert records[0] == records[1]
    assert len(list((tmp_path / "local" / "logs").iterdir())) == 4


def test_cg_simulate_replica_chunks_on_a_local_cluster_equal_the_serial_chunks(tmp_path):
    """Replica batches as tasks: the merged trajectory equals a serial run with the same
    chunks, and has the layout of an unsplit run."""
    from openmm_geom.simulate import read_trajectory

    data = tmp_path / "data"
    run_cli("datagen", ALANINE, "--trajectories", "1", "--frames", "40", "--interval-ps", "0.05",
            "--equilibration-ps", "0.01", "--threads", "1", "--out", data)
    npz = data / "trajectory-000.npz"
    run_cli("cg", "train", "--quick", "--epochs", "1", "--folds", "2", "--gap-frames", "2",
            "--features", "8", "--filters", "8", "--n-rbf", "8", "--output-hidden", "8",
            "--threads", "1", "--data", npz, "--out", tmp_path / "model")
    common = ["cg", "simulate", "--quick", "--model", tmp_path / "model" / "cg_model.pt",
              "--start", npz, "--replicas", "5", "--steps", "200", "--save-interval", "50",
              "--threads", "1", "--seed", "3"]
    run_cli(*common, "--replica-chunks", "2", "--out", tmp_path / "serial")
    done = run_cli(*common, "--replica-chunks", "2", "--out", tmp_path / "local",
                   "--cluster", "local:2", "--json")
    assert json.loads(done.stdout)["seeds"] == [3, 4]
    run_cli(*common, "--out", tmp_path / "whole")
    serial, local, whole = (read_trajectory(tmp_path / d / "cg_trajectory.h5")
                            for d in ("serial", "local", "whole"))
    for name in ("positions", "energies", "spread", "time", "step"):
        assert np.array_equal(getattr(serial, name), getattr(local, name)), name
        assert getattr(serial, name).shape == getattr(whole, name).shape, name
    assert serial.positions.shape[1] == 5
    # an unsplit run has the same frames and attributes (its random streams differ)
    assert np.array_equal(serial.step, whole.step)
    assert set(whole.attributes) <= set(serial.attributes)
    done = run_cli(*common, "--out", tmp_path / "bad", "--cluster", "local:2", expect=2)
    assert "--replica-chunks K >= 2" in done.stderr and not (tmp_path / "bad").exists()


def test_cv_bias_walkers_share_one_bias_on_a_local_cluster(tmp_path):
    # two metadynamics walkers as tasks on two worker processes, the shared depositions in a
    # Dask actor: both finish, the ledger holds every hill of both, each walker applied the
    # other's, and the analysis pools their frames
    from openmm_geom.openmm.walkers import DepositionLedger

    out = tmp_path / "walkers"
    done = run_cli("cv", "bias", "--pdb", ALANINE, "--mode", "phipsi", "--method", "metad",
                   "--deposit-ps", "0.1", "--exchange-ps", "0.2", "--walkers", "2",
                   "--picoseconds", "1", "--checkpoint-ps", "0.5", "--threads", "1",
                   "--cluster", "local:2", "--out", out, "--json", "--no-progress")
    summary = json.loads(done.stdout)
    assert summary["walkers"] == 2 and len(summary["per_walker"]) == 2
    ledger = DepositionLedger(3, out / "ledger.npz")
    assert sorted(map(tuple, ledger.origins())) == sorted(
        (w, s) for w in (0, 1) for s in range(50, 501, 50))
    received = []
    for i in (0, 1):
        exchanges = np.loadtxt(out / f"walker-{i}" / "exchanges.csv", delimiter=",",
                               skiprows=1, ndmin=2)
        assert exchanges[:, 1].sum() == 10  # its own hills, sent
        received.append(exchanges[:, 2].sum())
        assert (out / "logs" / f"walker-{i}.log").exists()
    # the walkers do not wait for each other: however they overlapped, the one that finished
    # last applied all 20 hills, and the other at least its own 10
    assert max(received) == 20 and sum(received) >= 30
    assert "running on a local cluster of 2 processes" in done.stderr

"""The experiment's jobs on a Dask cluster (``fmnist_experiment.py run --engine dask``, docs/cluster.md),
on a local cluster of two worker processes on 127.0.0.1. Skipped without Dask distributed (the
``cluster`` extra)."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import minitofe
from experiment_helpers import fashion_mnist, tiny_backbone

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# long enough that the kill lands well inside the run (~20 ms a step on a busy core), short enough for the
# default suite: a checkpoint every 5 steps
STEPS = 200
TIMEOUT = 240          # seconds for the whole run of the two jobs, the kill and the resume


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.01)


def _kill_worker_midway(out, seen):
    """Once the job in ``out`` has checkpointed a quarter of its steps, SIGKILL the worker process that
    runs it (named by the task's first line in ``attempts.jsonl``); note in ``seen`` its pids and a copy
    of the job's log as the kill left it."""
    import experiment_runners as runners
    ckpt = out / "checkpoint.npz"
    psutil = pytest.importorskip("psutil")             # a dependency of distributed
    try:
        _wait_for(lambda: ckpt.is_file() and runners.checkpoint_step(ckpt) >= STEPS // 4, TIMEOUT / 2,
                  f"checkpoint of step {STEPS // 4} in {out}")
        first = json.loads((out / "attempts.jsonl").read_text().splitlines()[0])
        os.kill(first["worker_pid"], signal.SIGKILL)
        train = psutil.Process(first["train_pid"])       # it dies with its worker (PR_SET_PDEATHSIG)
        _wait_for(lambda: not train.is_running() or train.status() == psutil.STATUS_ZOMBIE, 10,
                  "end of the orphaned training process")
        seen.update(first=first, log=(out / "log.jsonl").read_text().splitlines())
    except BaseException as e:                          # noqa: BLE001 — reported by the test
        seen["error"] = e


def _step_lines(lines, below=None):
    """The training-step lines of a ``log.jsonl`` (no ``eval`` lines), those of steps < ``below`` if given."""
    return [line for line in lines if '"eval"' not in line
            and (below is None or json.loads(line)["step"] < below)]


def _two_workers(kind):
    """A cluster of two worker processes (one thread each) on 127.0.0.1: a ``LocalCluster``, whose scheduler
    runs in this process, or a ``SubprocessCluster``, whose scheduler is a process of its own as on a real
    cluster (it unpickles the tasks without this process's ``sys.path``: ``client.upload_file``)."""
    import distributed
    if kind == "LocalCluster":
        return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None)
    from distributed.deploy.subprocess import SubprocessCluster
    return SubprocessCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, dashboard_address=None)


def _tiny_driver(tmp_path, monkeypatch):
    """The experiment driver (``fmnist_experiment``) on tiny Fashion-MNIST files and a tiny backbone, its
    records under ``tmp_path``."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    monkeypatch.setenv("MINITOFE_FASHION_MNIST", str(fashion_mnist(tmp_path / "fm")))
    backbone = tiny_backbone(tmp_path / "backbone.npz")
    for name, value in (("BACKBONE", backbone), ("BACKBONE_NPZ", backbone), ("BATCH", 16),
                        ("RECORDS", tmp_path / "records")):
        monkeypatch.setattr(X, name, value)
    return X


# the scheduler in a process of its own, as the cluster user runs it, in the default run; in this process
# (``LocalCluster``) with the slow tests: the same code, ~30 s more
@pytest.mark.parametrize("kind", [pytest.param("LocalCluster", marks=pytest.mark.slow), "SubprocessCluster"])
def test_a_job_whose_worker_is_killed_is_rescheduled_and_resumes_its_checkpoint(kind, tmp_path, monkeypatch):
    """Two tiny training jobs, the same job under two names, one task each on a two-worker cluster; the
    worker running the first is killed (SIGKILL) after it has checkpointed a quarter of its steps. The
    scheduler reschedules the task, which resumes the checkpoint (``--resume``; the steps logged before it
    are not redone); both jobs end with ``final.npz``, done in their records. The resumed job's final
    weights equal the uninterrupted one's bit for bit, as expected on one machine with one thread per job:
    the trainer's steps are functions of (seed, step) (``minitofe.train.loop``). Across machines of
    different BLAS builds they would only be close."""
    distributed = pytest.importorskip("distributed")
    X = _tiny_driver(tmp_path, monkeypatch)
    flags = ["--method", "tofe", "--budget", "0.5", "--seed", "0", "--steps", str(STEPS),
             "--checkpoint-every", "5", "--no-fast"]        # --no-fast: no Numba compiling in each process
    run_dir = tmp_path / "exp"
    killed, whole = run_dir / "search" / "killed", run_dir / "search" / "whole"
    seen, done = {}, threading.Event()
    with _two_workers(kind) as cluster, distributed.Client(cluster) as client:
        killer = threading.Thread(target=_kill_worker_midway, args=(killed, seen), daemon=True)
        killer.start()
        jobs = [("search", "killed", flags), ("search", "whole", flags)]
        driver = threading.Thread(target=lambda: (X.run_jobs(jobs, run_dir, 2, client), done.set()),
                                  daemon=True)
        driver.start()
        driver.join(TIMEOUT)
        killer.join(1)
        assert done.is_set(), f"the jobs did not end within {TIMEOUT} s"
        status = {name: json.loads(X.record_path(run_dir, "search", name).read_text())["status"]
                  for name in ("killed", "whole")}
        assert status == {"killed": "done", "whole": "done"}, status
        assert "error" not in seen, f"the kill failed: {seen.get('error')!r}"
        # the driver's main() reaches the same cluster by its address (no jobs left to run here)
        assert X.main(["run", "--phase", "remedy", "--engine", "dask", "--scheduler",
                       cluster.scheduler_address, "--run-dir", str(run_dir)]) == 0
    attempts = [json.loads(line) for line in (killed / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2, attempts                       # the killed try, and the rescheduled one
    assert attempts[0] == dict(seen["first"]) and not attempts[0]["resumed"]
    k = attempts[1]["from_step"]
    assert attempts[1]["resumed"] and STEPS // 4 <= k < STEPS and k % 5 == 0, attempts[1]   # midway
    assert attempts[1]["worker_pid"] != attempts[0]["worker_pid"]
    commands = [line for line in (killed / "stdout.log").read_text().splitlines() if "(worker pid" in line]
    assert ["--resume" in line for line in commands] == [False, True], commands
    # steps before the checkpoint were not redone: their log lines are the first try's, byte for byte
    # (each carries its own wall time), and every step is logged once
    log = (killed / "log.jsonl").read_text().splitlines()
    assert _step_lines(log, below=k) == _step_lines(seen["log"], below=k)
    assert [json.loads(line)["step"] for line in _step_lines(log)] == list(range(STEPS))
    whole_attempts = (whole / "attempts.jsonl").read_text().splitlines()
    assert [json.loads(line)["resumed"] for line in whole_attempts] == [False]
    a, b = minitofe.load_model(killed / "final.npz"), minitofe.load_model(whole / "final.npz")
    assert a.params.keys() == b.params.keys()
    assert all(np.array_equal(a.params[key], b.params[key]) for key in a.params)
    assert a.learned_keep_ratios == b.learned_keep_ratios
    times = json.loads((run_dir / "times.json").read_text())
    assert set(times) == {"search/killed", "search/whole"} and all(t > 0 for t in times.values())
    for name in ("killed", "whole"):
        record = json.loads(X.record_path(run_dir, "search", name).read_text())
        assert record["status"] == "done" and record["engine"] == "dask", record
        assert record["worker"] == socket.gethostname() and record["numpy"] == np.__version__


def test_an_unreachable_scheduler_is_named_and_the_run_exits_non_zero(tmp_path):
    """``--engine dask --scheduler ADDRESS`` with nothing listening there: a message naming the address
    and a non-zero exit, before any phase runs."""
    pytest.importorskip("distributed")
    with socket.socket() as s:                   # a port nothing listens on: bound, never listened
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        argv = ["run", "--phase", "search", "--engine", "dask", "--scheduler", address, "--run-dir",
                str(tmp_path / "exp")]
        code = (f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import experiment_runners as R; "
                f"R.CONNECT_TIMEOUT = 3; import fmnist_experiment as X; sys.exit(X.main({argv!r}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f"--scheduler {address}: no Dask scheduler" in out.stderr, out.stderr
    assert not (tmp_path / "exp" / "search").exists()            # nothing ran


def test_a_second_task_of_a_job_waits_for_the_first_then_finds_it_done(tmp_path, monkeypatch):
    """``run_job`` holds the job's lock while its try runs: a second task of the same job (a driver started
    again while its first task still runs) waits, and when the first has finished the job it runs nothing;
    a job not finished is run, its try noted in ``attempts.jsonl``. No Dask needed: the task is a plain
    function."""
    import fcntl
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import experiment_runners as runners
    out = tmp_path / "search" / "job"
    out.mkdir(parents=True)
    job = runners.Job("search/job", str(out), ("--version",), ("--version",))    # a command that ends at once
    results = []
    with open(out / "job.lock", "a") as lock:                           # the first task's, still running
        fcntl.flock(lock, fcntl.LOCK_EX)
        second = threading.Thread(target=lambda: results.append(runners.run_job(job, REPO, {})), daemon=True)
        second.start()
        second.join(1.0)
        assert second.is_alive() and not results                       # it waits
        (out / "final.npz").write_bytes(b"")                            # the first task finishes the job
    second.join(30)
    assert [r["returncode"] for r in results] == [0] and not (out / "attempts.jsonl").exists()
    (out / "final.npz").unlink()
    result = runners.run_job(job, REPO, runners.ONE_THREAD)
    attempts = (out / "attempts.jsonl").read_text().splitlines()
    assert result["returncode"] == 0 and len(attempts) == 1 and json.loads(attempts[0])["resumed"] is False
    assert "minitofe" in (out / "stdout.log").read_text().splitlines()[-1]      # the version line


def test_the_engine_and_the_scheduler_go_together(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fmnist_experiment as X
    for argv, message in ((["--engine", "dask"], "--engine dask needs --scheduler ADDRESS"),
                          (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler is for --engine dask")):
        with pytest.raises(SystemExit) as e:
            X.main(["run", *argv, "--run-dir", str(tmp_path)])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_local_pool_skips_a_job_another_process_holds_and_its_child_keeps_the_lock(tmp_path, monkeypatch,
                                                                                       capsys):
    """Two drivers on one run folder (the command started twice): a job whose ``job.lock`` is held is
    skipped, not run a second time beside the first; the job it runs keeps its lock in the training
    process, so a driver stopped mid-job does not free the job to a second driver. No Dask needed."""
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import experiment_runners as runners
    held, free = (runners.Job(f"search/{n}", str(tmp_path / n), ("--version",), ("--version",))
                  for n in ("held", "free"))
    ends, seen = [], {}

    def started(job):                         # while the child runs: another process cannot take the lock
        seen[job.key] = runners.try_lock(job)

    real_popen, passed = subprocess.Popen, []

    def popen(cmd, **kw):                     # which files the training process inherits
        passed.extend(os.path.realpath(f"/proc/self/fd/{fd}") for fd in kw.get("pass_fds", ()))
        return real_popen(cmd, **kw)

    monkeypatch.setattr(runners.subprocess, "Popen", popen)
    (tmp_path / "held").mkdir()
    with open(tmp_path / "held" / "job.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        skipped = runners.run_local([held, free], 2, REPO, runners.ONE_THREAD, started,
                                    lambda job, result: ends.append((job.key, result["returncode"])), poll=0.05)
    assert skipped == [held] and ends == [("search/free", 0)] and list(seen) == ["search/free"]
    assert seen["search/free"] is None                               # held by the driver and its child
    assert passed == [str((tmp_path / "free" / "job.lock").resolve())]
    assert "skip search/held: another process runs it" in capsys.readouterr().out
    assert not (tmp_path / "held" / "stdout.log").exists()
    again = runners.try_lock(free)                                   # free again once the job has ended
    assert again is not None
    again.close()


def test_the_records_the_driver_writes_do_not_make_the_checkout_dirty(tmp_path, monkeypatch):
    """A run's records go into the checkout (``results/fmnist/``) as the runs go: the next run's record must
    not call its code "dirty" for that; a change to anything else does."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import experiment_runners as runners
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True)                     # noqa: E731
    record, code = tmp_path / runners.OWN_RECORDS / "run" / "a.json", tmp_path / "code.py"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    code.write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    assert runners.checkout_state(tmp_path)["dirty"] is False
    record.write_text('{"status": "done"}')
    assert runners.checkout_state(tmp_path)["dirty"] is False
    code.write_text("x = 2\n")
    state = runners.checkout_state(tmp_path)
    assert state["dirty"] is True and len(state["commit"]) == 40


def test_a_resumed_runs_record_lists_every_start_with_its_commit_and_kernel(tmp_path, monkeypatch):
    """The local pool: a run stopped midway and resumed by a second driver keeps one record, whose
    ``starts`` lists both starts (when, commit, BLAS kernel) in order, while its own fields name the last;
    the stopped run's status says so until it is done."""
    X = _tiny_driver(tmp_path, monkeypatch)
    flags = ["--method", "tofe", "--budget", "0.5", "--seed", "0", "--steps", "6", "--no-fast"]
    run_dir = tmp_path / "exp"
    X.run_jobs([("search", "job", flags + ["--stop-at", "3"])], run_dir, 1)        # stops after step 3
    first = json.loads(X.record_path(run_dir, "search", "job").read_text())
    assert not X.is_done(run_dir, "search", "job") and len(first["starts"]) == 1
    assert first["status"].startswith("stopped"), first["status"]              # not "done": no final.npz
    X.run_jobs([("search", "job", flags)], run_dir, 1)                            # resumes it
    record = json.loads(X.record_path(run_dir, "search", "job").read_text())
    assert X.is_done(run_dir, "search", "job") and record["status"] == "done"
    starts = record["starts"]
    assert len(starts) == 2 and starts[0] == first["starts"][0] and starts[0]["at"] <= starts[1]["at"]
    assert all(s["commit"] == record["commit"] and "blas_architecture" in s for s in starts)
    commands = [line for line in (X.job_dir(run_dir, "search", "job") / "stdout.log").read_text().splitlines()
                if "minitofe" in line and " train " in line]
    assert any("--resume" in line for line in commands), commands

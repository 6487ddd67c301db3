"""How the experiment's training jobs run: ``--jobs`` at a time as child processes of the driver (the
default, ``run_local``), or as the tasks of a Dask distributed cluster (``--engine dask``, ``run_dask``).

A job is one ``minitofe train`` process with one BLAS/Numba thread, in its own folder. Whether it starts
anew or continues its checkpoint (``--resume``) is decided when its process starts (``command``), on the
machine that runs it: a job whose process or worker was killed continues from its last checkpoint when it
is run again, whichever the engine. The runners only run jobs; what a job is and what is recorded when it
starts and ends (``times.json``, the records) is the driver's (``fmnist_experiment.py``), through the
``started`` and ``finished`` callbacks.

With Dask the driver and every worker must see the run folder and the checkout at the same paths (one file
system they share, e.g. NFS): the workers write the job's files, the driver reads them (docs/cluster.md).
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

CHECKPOINT = "checkpoint.npz"
# one BLAS / Numba / OpenMP thread per training process: the jobs run side by side, one per core
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# what a job takes from the driver's environment on top of its own machine's: where the data is, and the
# BLAS core type the run was asked to compute with, and where the teacher's outputs are kept between runs
PASSED_ON = ("MINITOFE_FASHION_MNIST", "OPENBLAS_CORETYPE", "MINITOFE_TEACHER_CACHE_DIR")
# how long the driver tries to reach the scheduler before it gives up (seconds)
CONNECT_TIMEOUT = 20
# how many times Dask runs a task again after it raised (a job that exits non-zero does not raise: it is
# reported as FAILED at once). A task whose worker died is rescheduled by the scheduler itself, up to its
# ``distributed.scheduler.allowed-failures`` times (default 3).
RETRIES = 2
# the records the driver writes into the checkout as the runs go (``fmnist_experiment.RECORDS``): they do not
# make the checkout "dirty" in the records, its code is what that flag is about
OWN_RECORDS = "results/fmnist"
# Linux: the training process is killed with the worker that started it (PR_SET_PDEATHSIG, which execv
# keeps), so a worker killed mid-job leaves no orphan writing the job's folder while the rescheduled task
# resumes it. argv: the parent's pid, then the command to become.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1: PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):                             # the parent died before prctl
    sys.exit("the worker that started this job is gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class Job:
    """A training job: ``key`` ("phase/name"), its folder ``out``, and the ``minitofe`` arguments of a new
    run (``fresh``) and of its continuation from the checkpoint in ``out`` (``resume``)."""
    key: str
    out: str
    fresh: tuple
    resume: tuple


def resumes(job):
    """Does the job continue a checkpoint when it starts now?"""
    return (pathlib.Path(job.out) / CHECKPOINT).is_file()


def command(job, python=None):
    """The job's command line, decided now: its continuation when its checkpoint exists, else a new run."""
    return [python or sys.executable, "-m", "minitofe", *(job.resume if resumes(job) else job.fresh)]


def job_env(overrides):
    """This machine's environment with ``overrides`` (``ONE_THREAD`` and what the driver passes on)."""
    return dict(os.environ, **overrides)


def driver_overrides():
    """What every job's environment gets from the driver: one thread, and ``PASSED_ON`` where it is set."""
    return {**ONE_THREAD, **{k: os.environ[k] for k in PASSED_ON if k in os.environ}}


def environment(env, repo):
    """What a run's arithmetic depends on, on the machine this runs on: the commit of the checkout
    ``repo``, and ``minitofe.testing.provenance.arithmetic()`` (Python, NumPy and its SIMD loops, Numba, the
    BLAS library with its core type) with the BLAS thread counts, read in a child process with ``env`` so
    that an ``OPENBLAS_CORETYPE`` set for the jobs is what is read. With Dask it runs on the worker that
    ran the job (``run_job``)."""
    probe = ("import json, threadpoolctl\n"
             "from minitofe.testing.provenance import arithmetic\n"
             "a = arithmetic()\n"
             "a['blas_threads'] = [i['num_threads'] for i in threadpoolctl.threadpool_info()"
             " if i.get('user_api') == 'blas']\n"
             "print(json.dumps(a))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=repo,
                         check=True)
    return {**checkout_state(repo),
            "openblas_coretype": (env or os.environ).get("OPENBLAS_CORETYPE"), **json.loads(out.stdout)}


def checkout_state(repo):
    """``{"commit", "dirty"}`` of the checkout ``repo``: its commit (None outside git), and whether a tracked
    file differs from it, the records the driver itself writes there (``OWN_RECORDS``) left out."""
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            f":!{OWN_RECORDS}"], cwd=repo, capture_output=True, text=True)
    return {"commit": git.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}


def stamp():
    """The time of day, for the driver's progress lines."""
    return time.strftime("%H:%M:%S")


# ---- the local pool: the driver's own child processes ----

def run_local(jobs, n_parallel, cwd, overrides, started, finished, poll=5.0):
    """Run ``jobs`` ``n_parallel`` at a time as child processes in ``cwd``, each appending its output to
    ``out/stdout.log``. ``started(job)`` is called as a job starts, ``finished(job, result)`` as it ends,
    ``result = {"returncode", "seconds"}``. A job whose ``out/job.lock`` another process holds (a second
    driver on the same run folder, a Dask task, or the training process of a driver that was stopped) is
    skipped with a line saying so: two processes never write one job's folder. Returns the skipped jobs."""
    env, queue, running, skipped = job_env(overrides), list(jobs), {}, []
    while queue or running:
        while queue and len(running) < n_parallel:
            job = queue.pop(0)
            lock = try_lock(job)
            if lock is None:
                print(f"[{stamp()}] skip {job.key}: another process runs it ({job.out}/job.lock is held)",
                      flush=True)
                skipped.append(job)
                continue
            cmd = command(job)                      # under the lock: no other process writes the checkpoint
            started(job)
            log = open(pathlib.Path(job.out) / "stdout.log", "a")
            print(f"[{stamp()}] start {job.key}: {' '.join(cmd)}", flush=True)
            fds = () if lock is NO_LOCK else (lock.fileno(),)      # the training process holds it too
            running[job] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                             pass_fds=fds), time.time(), log, lock)
        time.sleep(poll)
        for job, (proc, t0, log, lock) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[job]
            log.close()
            if lock is not NO_LOCK:
                lock.close()
            finished(job, {"returncode": proc.returncode, "seconds": time.time() - t0})
    return skipped


NO_LOCK = object()      # where there are no advisory file locks (``fcntl``: not on Windows)


def try_lock(job):
    """The job's ``out/job.lock``, open and locked (exclusive), or None when another process holds it;
    ``NO_LOCK`` where the platform has no ``fcntl``. The lock goes when every process holding the file
    (the driver, the training process it starts) has closed it or ended."""
    try:
        import fcntl
    except ImportError:
        return NO_LOCK
    out = pathlib.Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / "job.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


# ---- Dask distributed: one task per job, on any worker of the cluster ----

def connect(address, timeout=None):
    """A ``distributed.Client`` of the scheduler at ``address``; exits with a message naming the address
    when Dask is not installed or no scheduler answers there within ``timeout`` s (``CONNECT_TIMEOUT``)."""
    try:
        from distributed import Client
    except ImportError:
        sys.exit("--engine dask needs Dask distributed: pip install 'dask[distributed]' (or minitofe's "
                 "'cluster' extra)")
    try:
        return Client(address, timeout=timeout or CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        sys.exit(f"--scheduler {address}: no Dask scheduler could be reached there "
                 f"({type(e).__name__}: {e})")


def run_dask(jobs, client, cwd, overrides, started, finished):
    """Submit every job of ``jobs`` to the cluster of ``client`` as one task (``run_job``) and wait for
    them all; ``started(job)`` is called as a job is submitted, ``finished(job, result)`` as its task ends
    (``run_job``'s result; ``{"error": ...}`` when the task raised, or its worker died too often)."""
    from distributed import as_completed
    # the scheduler and the workers unpickle the tasks, which name this module's functions: they get this
    # file (on their path, for workers that join later too); minitofe and Dask they need installed
    client.upload_file(__file__, load=False)
    futures = {}
    for job in jobs:
        started(job)
        print(f"[{stamp()}] submit {job.key}", flush=True)
        futures[client.submit(run_job, job, cwd, overrides, key=f"train-{job.key}-{time.time_ns()}",
                              retries=RETRIES, pure=False)] = job
    for future in as_completed(futures):
        try:
            result = future.result()
        except Exception as e:                    # noqa: BLE001 — whatever it was, the job did not finish
            result = {"error": f"{type(e).__name__}: {e}"}
        finished(futures[future], result)


def run_job(job, cwd, overrides):
    """The task of one job, run on a worker: the job's command (``command``, decided here: a task
    rescheduled after its worker died resumes the checkpoint the first try wrote) with this machine's
    Python, appending to ``out/stdout.log``; each try is appended to ``out/attempts.jsonl`` (host, pids,
    resumed or not, from which step). Returns ``{"returncode", "seconds", "host", "environment"}``, the
    last the worker's (``environment``).

    One try at a time per job: the task holds ``out/job.lock`` (and so does its training process) while it
    runs, and a second task of the same job waits for it, then finds the job done or resumes it. A second
    task arises when the driver is stopped and started again while a task it submitted still runs (Dask
    does not stop a running task), or when the scheduler gives up on a worker that is still alive."""
    import fcntl
    out, host = pathlib.Path(job.out), socket.gethostname()
    for path, what in ((out, "the job's folder"), (pathlib.Path(cwd), "the checkout")):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} ({what}) is not there on worker {host}: the driver and every "
                                    f"worker must see the run folder and the checkout at the same paths")
    env = job_env(overrides)
    with open(out / "job.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)             # released when this task and its process are gone
        t0, returncode = time.time(), 0
        if not (out / "final.npz").is_file():        # else a try of the task before this one finished it
            returncode = _attempt(job, cwd, env, lock)
    return {"returncode": returncode, "seconds": time.time() - t0, "host": host,
            "environment": environment(env, cwd)}


def _attempt(job, cwd, env, lock):
    """One try of ``run_job`` (holding the job's ``lock``, which its training process shares): the
    command, noted in ``attempts.jsonl``, run to its end. Returns its exit status."""
    out, host = pathlib.Path(job.out), socket.gethostname()
    resumed, cmd = resumes(job), command(job)       # no other try can write the checkpoint meanwhile
    attempt = {"host": host, "worker_pid": os.getpid(), "resumed": resumed,
               "from_step": checkpoint_step(out / CHECKPOINT) if resumed else 0, "started": time.time()}
    with open(out / "stdout.log", "a") as log:
        log.write(f"[{stamp()}] {host} (worker pid {os.getpid()}): {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen([cmd[0], "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd, pass_fds=(lock.fileno(),))
        with open(out / "attempts.jsonl", "a") as f:
            f.write(json.dumps(dict(attempt, train_pid=proc.pid)) + "\n")
        return proc.wait()


def checkpoint_step(path):
    """The step a training checkpoint was written after (its metadata, ``minitofe.train.checkpoint``)."""
    import numpy as np
    with np.load(path, allow_pickle=False) as arrays:
        return int(json.loads(str(arrays["__checkpoint__"]))["step"])

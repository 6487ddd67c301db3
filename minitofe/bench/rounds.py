"""Contenders in processes of their own, timed in interleaved rounds (``minitofe bench``'s method).

Each contender of a section gets a fresh process (``bench.worker``) that builds and warms up only its own
calls, so no contender runs beside another's thread pools: torch's OpenMP threads, OpenBLAS's and Numba's
spin for a while after each call, and in one process they took the cores from whoever ran next (timm ran
at 6.6 img/s beside minitofe's kernels, 15.5 alone). The processes take turns: round r asks each
contender, in an order rotated by r, for ``calls`` timed calls of one key, so a slow spell of a shared
machine falls on every contender. Reported per key and contender: the median over all calls and the
spread (min, max) of the rounds' medians; a ratio of two contenders (``ratio``) is taken round by
round, from the two medians of the same round, and reported as the median and spread of those ratios.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# A pause before each turn, so that the threads of the contender that ran last (OpenBLAS's, torch's OpenMP,
# Numba's: they spin for a while after each call) are asleep before the next one starts. Measured with
# 2 threads on an idle 2-core machine, DeiT-S at batch 1: with 0.02 s minitofe's fast path and timm both
# ran at 6-7 img/s, about two thirds of their speed with no other contender; with 0.5 s they ran as alone.
SETTLE_S = 0.5
QUICK_SETTLE_S = 0.02        # ``--quick``: a smoke run, its timings are not figures


def worker_env(threads=None):
    """The environment of a worker: this one, this package first on the path, with ``threads`` every
    thread-count variable set to it, and the fast path's free-cores check off (the workers take turns,
    so the others' idle thread pools are not load: ``kernels.threads.free_cores``)."""
    env = dict(os.environ, MINITOFE_IGNORE_LOAD="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + rest)
    if threads:
        env.update({v: str(int(threads)) for v in THREAD_ENV})
    return env


class Worker:
    """One contender's process; ``ask(request)`` sends one JSON line and returns the reply."""

    def __init__(self, section, contender, quick=False, threads=None):
        self.name = f"{section}/{contender}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "minitofe.bench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=worker_env(threads))
        self._send({"section": section, "contender": contender, "quick": quick, "threads": threads})
        self.info = None

    def _send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _recv(self):
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line.strip() else {"error": "the worker ended without an answer"}
        if "error" in reply:
            self.log.seek(0)
            raise RuntimeError(f"bench worker {self.name}: {reply['error']}\n{self.log.read()[-2000:]}")
        return reply

    def ready(self):
        if self.info is None:
            self.info = self._recv()
        return self.info

    def ask(self, request):
        self.ready()
        self._send(request)
        return self._recv()

    def close(self):
        if self.proc.poll() is None:
            try:
                self._send({"quit": True})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.log):
            f.close()


def _spread(values):
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def ratio(result, key, num, den):
    """Spread of the per-round time ratios num / den of ``compare``'s result for one key."""
    rounds = result["per_round"][key]
    return _spread(np.divide(rounds[num], rounds[den]))


def compare(section, contenders, plan, quick=False, threads=None, finish=()):
    """Time ``contenders`` of ``section`` in processes of their own.

    plan: [(key, rounds, calls)] or [(key, rounds, calls, warmup)] -> {"threads": {contender: counts},
    "seconds": {key: {contender: spread of all calls, with "rounds": spread of the rounds' medians}},
    "per_round": {key: {contender: [the rounds' medians]}}}; ``ratio(result, key, a, b)`` gives the spread
    of a's time over b's. ``warmup`` calls open every turn untimed (default none): for operations of a
    fraction of a millisecond, whose timed calls would otherwise all fall in the cold start that follows
    the pause between turns (the other contenders' data in the caches, the core clocked down). What a
    contender reported when ready is in "info"; ``finish``: requests put to every contender, one after
    the other, after the rounds -> "finish": {contender: [replies]}."""
    workers = {c: Worker(section, c, quick, threads) for c in contenders}     # they warm up side by side
    try:
        out = {"threads": {c: w.ready()["threads"] for c, w in workers.items()}, "seconds": {},
               "per_round": {}, "info": {c: w.ready().get("info") for c, w in workers.items()}}
        for key, rounds, calls, *warmup in plan:
            request = {"run": key, "calls": calls, "warmup": warmup[0] if warmup else 0}
            every = {c: [] for c in contenders}
            per_round = {c: [] for c in contenders}
            for r in range(rounds):
                for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
                    time.sleep(QUICK_SETTLE_S if quick else SETTLE_S)
                    t = workers[c].ask(request)["times"]
                    every[c] += t
                    per_round[c].append(float(np.median(t)))
            out["seconds"][key] = {c: dict(_spread(every[c]), rounds=_spread(per_round[c]))
                                   for c in contenders}
            out["per_round"][key] = per_round
        out["finish"] = {c: [] for c in contenders}
        for request in finish:
            for c in contenders:
                time.sleep(QUICK_SETTLE_S if quick else SETTLE_S)
                out["finish"][c].append(workers[c].ask(request))
        return out
    finally:
        for w in workers.values():
            w.close()


def profile_in_worker(quick=False, threads=None):
    """``bench.profile``'s figures, measured in a fresh process of their own."""
    w = Worker("profile", "profile", quick, threads)
    try:
        return dict(w.ask({"profile": True})["profile"], threads=w.ready()["threads"])
    finally:
        w.close()

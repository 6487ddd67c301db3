"""One contender of ``minitofe bench`` in a process of its own: ``python -m minitofe.bench.worker``.

The process builds one contender's calls (``bench.contenders``), runs each once (warm-up: compilation,
caches, thread pools), answers ``ready``, then times what it is asked for, one JSON line in, one out:

    {"run": KEY, "calls": n}   -> {"times": [seconds, ...]}      n calls of KEY, each timed alone
                                                                 (after "warmup": k untimed ones)
    {"profile": true}          -> {"profile": {...}}             (contender "profile": bench.profile)
    {"breakdown": KEY, "calls": n} -> {"breakdown": {...}}       KEY's time by part (``bench.macs``)
    {"quit": true}             -> the process exits

The first line in is the spec {"section", "contender", "quick", "threads"}. Replies go to the original
stdout; anything a library prints goes to stderr, so it cannot corrupt the protocol. With ``threads``
the contenders that run torch (``contenders.TORCH_CONTENDERS``) get ``torch.set_num_threads(threads)``, and
onnxruntime's session its intra-op thread count (NumPy, Numba and OpenMP get theirs from the environment
the parent sets before the process starts).
"""
import json
import os
import sys
import time


def thread_counts():
    """The thread counts this process runs with: BLAS (threadpoolctl), Numba, torch."""
    from threadpoolctl import threadpool_info
    import numpy as np
    np.dot(np.ones((2, 2)), np.ones((2, 2)))                       # the BLAS is loaded
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    out = {"blas": max(blas, default=None)}
    if "numba" in sys.modules:
        import numba
        out["numba"] = numba.get_num_threads()
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].get_num_threads()
    return out


def serve(spec, reply, read):
    """Build the contender, warm it up, then answer requests until told to quit (or input ends)."""
    from .contenders import TORCH_CONTENDERS, build
    if spec.get("threads") and spec.get("contender") in TORCH_CONTENDERS:
        import torch
        torch.set_num_threads(int(spec["threads"]))
    if spec["contender"] == "profile":
        calls = {}
    else:
        calls = build(spec["section"], spec["contender"], bool(spec.get("quick")), spec.get("threads"))
    for f in calls.values():
        f()
    reply({"ready": list(calls), "threads": thread_counts(), "pid": os.getpid(),
           "info": getattr(calls, "info", None)})
    for line in read:
        req = json.loads(line)
        if req.get("quit"):
            return
        if req.get("profile"):
            from .profile import profile_forward
            reply({"profile": profile_forward(bool(spec.get("quick")), spec.get("threads"))})
            continue
        if "breakdown" in req:
            from .macs import breakdown
            reply({"breakdown": breakdown(calls[req["breakdown"]], int(req.get("calls", 1)))})
            continue
        f, times = calls[req["run"]], []
        for _ in range(int(req.get("warmup", 0))):
            f()
        for _ in range(int(req.get("calls", 1))):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        reply({"times": times})


def main():
    out = os.fdopen(os.dup(1), "w")                                # the protocol's channel
    os.dup2(2, 1)                                                  # stray prints -> stderr
    sys.stdout = sys.stderr

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()
    lines = iter(sys.stdin.readline, "")
    try:
        serve(json.loads(next(lines)), reply, lines)
    except Exception as e:                                         # the parent shows it with the stderr tail
        reply({"error": f"{type(e).__name__}: {e}"})
        raise


if __name__ == "__main__":
    main()

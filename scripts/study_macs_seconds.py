"""Do MACs become seconds? The measured CPU speed-up of tofe, evit and dynamicvit over dense against
their realised MACs ratio (docs/study-macs-seconds.md).

Runs ``minitofe bench --sections macs --json --threads N`` for each thread count asked for (each
contender in a process of its own, interleaved rounds: ``minitofe/bench/macs.py``), saves the results
with the machine they ran on to ``docs/data/macs_seconds.json``, draws ``docs/img/macs_seconds.png``
(speed-up against realised MACs / dense, one panel per model and batch, the ideal line 1 / MACs ratio)
and prints the page's tables in markdown.

    python scripts/study_macs_seconds.py                      # measure (2 then 1 thread), draw, print
    python scripts/study_macs_seconds.py --threads 2          # one thread count only
    python scripts/study_macs_seconds.py --from-json          # redraw and reprint from the saved JSON
    python scripts/study_macs_seconds.py --quick --out-json /tmp/m.json --out-png /tmp/m.png   # smoke test
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLOURS = {"tofe": "tab:blue", "evit": "tab:orange", "dynamicvit": "tab:green"}
OWN = {"ToFe selector", "ToFe approximator", "EViT reduction blocks (NumPy)", "DynamicViT predictor (NumPy)"}
OVERHEAD = {"input checks", "predict's set-up", "other (top-k, records, Python)", "embedding, head"}


def blas_info():
    """The BLAS NumPy runs on here: library, version, the core type OpenBLAS chose."""
    import numpy as np
    from threadpoolctl import threadpool_info
    np.dot(np.ones((2, 2)), np.ones((2, 2)))
    info = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return {k: info[0].get(k) for k in ("internal_api", "version", "architecture")} if info else {}


def cpu_flags():
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
                 [])
    return {"avx512f": "avx512f" in flags, "avx2": "avx2" in flags}


def measure(threads, quick):
    cmd = [sys.executable, "-m", "minitofe", "bench", "--sections", "macs", "--json",
           "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run(cmd + (["--quick"] if quick else []), env=env, check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return json.loads(out)


def rows(run):
    return [r for r in run["macs"]["rows"] if r["method"] != "dense"]


def _ratio(r):
    return f"{r['median']:.2f}x [{r['min']:.2f}, {r['max']:.2f}]"


def speed_table(data):
    runs = data["runs"]
    first = runs[0]
    lines = [f"| model | batch | method | MACs (budget) | dense ms, {first['threads']} thr | method ms | "
             + " | ".join(f"speed-up, {r['threads']} thread{'s' if r['threads'] > 1 else ''}" for r in runs)
             + " | ideal | of ideal |", "|---" * (8 + len(runs)) + "|"]
    others = [{(r["model"], r["batch"], r["method"], r["budget"]): r for r in rows(run["bench"])}
              for run in runs]
    for r in rows(first["bench"]):
        key = (r["model"], r["batch"], r["method"], r["budget"])
        model = "Fashion-MNIST (50 tokens)" if r["model"].startswith("vit_fmnist") else r["model"]
        lines.append(f"| {model} | {r['batch']} | {r['method']} | "
                     f"{r['macs_ratio']:.1%} ({r['budget']:.0%}) | "
                     f"{1e3 * r['dense_seconds']:.1f} | {1e3 * r['seconds']:.1f} | "
                     + " | ".join(_ratio(o[key]["speedup"]) if key in o else "-" for o in others)
                     + f" | {r['ideal']:.2f}x | {r['of_ideal']:.0%} |")
    return "\n".join(lines)


def breakdown_table(run, budget=0.5):
    """Where a call's time goes, as shares of one profiled call (ms), at ``budget`` and for dense."""
    lines = ["| model | batch | method | ms (profiled) | blocks (fast kernels) | own modules "
             "| gather / scatter | checks, set-up, top-k, records, embed + head | largest other part |",
             "|---" * 9 + "|"]
    for r in run["macs"]["rows"]:
        if r["budget"] not in (budget, 1.0):
            continue
        b, total = r["breakdown"]["seconds"], r["breakdown"]["total_s"]
        share = lambda keys: sum(v for k, v in b.items() if k in keys) / total     # noqa: E731
        rest = sorted(((v, k) for k, v in b.items() if k in OVERHEAD), reverse=True)
        model = "Fashion-MNIST" if r["model"].startswith("vit_fmnist") else r["model"]
        lines.append(f"| {model} | {r['batch']} | {r['method']} | {1e3 * total:.1f} | "
                     f"{b.get('blocks (fast kernels)', 0) / total:.0%} | {share(OWN):.0%} | "
                     f"{share({'gather / scatter'}):.0%} | {share(OVERHEAD):.0%} | "
                     f"{rest[0][1]} {rest[0][0] / total:.0%} |")
    return "\n".join(lines)


def setup_lines(data):
    """The machine and each run's settings, as the page's setup states them."""
    m = data["runs"][0]["bench"]["machine"]
    blas = data.get("blas", {})
    avx512 = "yes" if data["cpu_flags"].get("avx512f") else "no"
    lines = [f"{m['cpu']}, {m['cores']} cores, AVX-512 {avx512}; "
             f"{blas.get('internal_api')} {blas.get('version')} ({blas.get('architecture')} kernels); python "
             f"{m['python']}, numpy {m['numpy']}, numba {m.get('numba')}; {m['dtype']}"]
    for run in data["runs"]:
        b = run["bench"]
        turns = "; ".join(f"{k}: {v[0]} rounds x {v[1]} calls (+{v[2]} untimed)"
                          for k, v in b["macs"]["turns"].items())
        lines.append(f"{run['threads']} thread(s): load average {b['machine']['load_average']} -> "
                     f"{b['machine']['load_average_after']}, {b['bench_seconds']:.0f} s; {turns}")
    return lines


def draw(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    runs = data["runs"]
    panels = sorted({(r["model"], r["batch"]) for r in rows(runs[0]["bench"])},
                    key=lambda mb: (not mb[0].startswith("vit_fmnist"), mb[1]))
    models = list(dict.fromkeys(m for m, _ in panels))
    batch_list = sorted({b for _, b in panels})
    fig, axes = plt.subplots(len(models), len(batch_list), figsize=(5 * len(batch_list), 4 * len(models)),
                             squeeze=False, sharex=True)
    xs = np.linspace(0.3, 1.0, 50)
    for (model, B) in panels:
        ax = axes[models.index(model)][batch_list.index(B)]
        ax.plot(xs, 1 / xs, color="grey", lw=1, ls=":", label="ideal: 1 / MACs ratio")
        ax.axhline(1.0, color="black", lw=0.6)
        for k, run in enumerate(runs):
            for method, colour in COLOURS.items():
                pts = sorted((r["macs_ratio"], r["speedup"]) for r in rows(run["bench"])
                             if r["model"] == model and r["batch"] == B and r["method"] == method)
                x = [1.0] + [p[0] for p in pts][::-1]
                y = [1.0] + [p[1]["median"] for p in pts][::-1]
                err = [[0] + [p[1]["median"] - p[1]["min"] for p in pts][::-1],
                       [0] + [p[1]["max"] - p[1]["median"] for p in pts][::-1]]
                label = f"{method}, {run['threads']} thr" if len(runs) > 1 else method
                first = k == 0                     # the first thread count: solid, with its spread
                ax.errorbar(x, y, yerr=err if first else None, color=colour, marker="o" if first else "s",
                            mfc=colour if first else "white", ls="-" if first else "--",
                            lw=1.5 if first else 1, capsize=2, ms=5, label=label, alpha=1.0 if first else 0.7)
        name = "Fashion-MNIST ViT, 50 tokens" if model.startswith("vit_fmnist") else f"{model}, 197 tokens"
        ax.set_title(f"{name}, batch {B}")
        ax.set_xlabel("realised MACs / dense")
        ax.set_ylabel("speed-up over dense (time ratio)")
        ax.set_xlim(0.3, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Do MACs become seconds? CPU speed-up against the MACs ratio (float32, fast kernels; "
                 "bars: min-max over rounds)", fontsize=10)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--quick", action="store_true", help="the bench's tiny sizes (a smoke test)")
    p.add_argument("--from-json", action="store_true", help="do not measure: redraw from --out-json")
    p.add_argument("--out-json", default=str(ROOT / "docs" / "data" / "macs_seconds.json"))
    p.add_argument("--out-png", default=str(ROOT / "docs" / "img" / "macs_seconds.png"))
    args = p.parse_args(argv)
    if args.from_json:
        data = json.loads(pathlib.Path(args.out_json).read_text())
    else:
        data = {"blas": blas_info(), "cpu_flags": cpu_flags(), "runs": []}
        for t in args.threads:
            print(f"measuring with {t} thread(s) ...", file=sys.stderr)
            data["runs"].append({"threads": t, "bench": measure(t, args.quick)})
            pathlib.Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.out_json).write_text(json.dumps(data, indent=1) + "\n")   # each run as it ends
    draw(data, args.out_png)
    print(*setup_lines(data), "", speed_table(data), "", breakdown_table(data["runs"][0]["bench"]), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tables ``minitofe bench`` prints (``--json`` prints the dict instead). A ratio reads
``median [min, max]``: the median of the per-round ratios and their spread over the rounds."""


def _num(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def _ratio(r):
    """A ratio's spread as text: median [min, max]."""
    return f"{r['median']:.2f}x [{r['min']:.2f}, {r['max']:.2f}]" if r else "-"


def _threads(section):
    counts = {c: ", ".join(f"{k} {v}" for k, v in t.items()) for c, t in section.get("threads", {}).items()}
    return "; ".join(f"{c}: {t}" for c, t in counts.items())


def _machine(m):
    return [f"{m['cpu']}, {m['cores']} cores, load average {m.get('load_average')} -> "
            f"{m.get('load_average_after')}, python {m['python']}, numpy {m['numpy']}, numba "
            f"{m.get('numba', '-')}, torch {m['torch'] or '-'}, timm {m.get('timm') or '-'}, onnxruntime "
            f"{m.get('onnxruntime') or '-'}, {m['dtype']}, threads {m.get('threads') or 'as set up'}, "
            f"OPENBLAS_THREAD_TIMEOUT {m.get('openblas_thread_timeout') or '-'}; each contender in a "
            f"process of its own", ""]


DENSE_OTHERS = ("timm", "onnxruntime", "torch_compile")     # the optional contenders, when they ran


def _ort_settings(s):
    return (f"  onnxruntime {s['onnxruntime']}: {s['graph_optimization_level']}, intra-op threads "
            f"{s['intra_op_num_threads'] or 'ORT default'}, inter-op {s['inter_op_num_threads']}, "
            f"{s['execution_mode']}, {', '.join(s['providers'])}; opset {s['opset']}, {s['file']} "
            f"({s['file_bytes'] / 2**20:.1f} MiB{', exported this run' if s['exported_this_run'] else ''})")


def _dense(d):
    others = [c for c in DENSE_OTHERS if f"{c}_img_s" in d["rows"][0]]
    lines = [f"dense forward, images/s ({_threads(d)})",
             f"  {'model':<24} {'batch':>5} " + " ".join(f"{c:>13}" for c in ["reference", "fast"] + others)]
    for r in d["rows"]:
        lines.append(f"  {r['model']:<24} {r['batch']:>5} " +
                     " ".join(f"{_num(r[f'{c}_img_s']):>13}" for c in ["reference", "fast"] + others))
    lines.append("  fast speed / another's, median [min, max] over the rounds:")
    heads = " ".join(f"{'fast/' + c:<24}" for c in ["reference"] + others)
    lines.append(f"  {'batch':>5}   {heads}".rstrip())
    for r in d["rows"]:
        lines.append(f"  {r['batch']:>5}   " + " ".join(f"{_ratio(r[f'fast_vs_{c}']):<24}"
                                                       for c in ["reference"] + others).rstrip())
    if d.get("settings", {}).get("onnxruntime"):
        lines.append(_ort_settings(d["settings"]["onnxruntime"]))
    compiled = d.get("settings", {}).get("torch_compile")
    if compiled:
        lines.append(f"  torch.compile: {compiled['backend']}, mode {compiled['mode']}, dynamic "
                     f"{compiled['dynamic']}; compiled in " +
                     ", ".join(f"{s:.0f} s ({k})" for k, s in compiled["compile_s"].items()))
    if d.get("skipped"):
        lines.append("  left out: " + "; ".join(f"{c} ({why})" for c, why in d["skipped"].items()))
    return lines


def _tofe(t):
    lines = ["", f"ToFe top-k, fast path ({_threads(t)})",
             f"  {'batch':>5} {'MACs':>6} {'keep ratios':>22} {'ms':>9} {'dense ms':>9}   "
             f"speed-up over dense"]
    for r in t["rows"]:
        lines.append(f"  {r['batch']:>5} {r['macs_ratio']:>6.0%} {str(r['keep_ratios']):>22} "
                     f"{1e3 * r['seconds']:>9.1f} {1e3 * r['dense_seconds']:>9.1f}   {_ratio(r['speedup'])}")
    return lines


def _macs(m):
    lines = ["", f"do MACs become seconds? each method's own inference path, fast kernels ({_threads(m)})",
             f"  {'model':<24} {'batch':>5} {'method':<11} {'MACs':>6} {'ms':>9} {'dense ms':>9}   "
             f"{'speed-up over dense':<22} {'ideal':>6} {'of ideal':>8}"]
    for r in m["rows"]:
        if r["method"] != "dense":
            lines.append(f"  {r['model']:<24} {r['batch']:>5} {r['method']:<11} {r['macs_ratio']:>6.1%} "
                         f"{1e3 * r['seconds']:>9.2f} {1e3 * r['dense_seconds']:>9.2f}   "
                         f"{_ratio(r['speedup']):<22} {r['ideal']:>5.2f}x {r['of_ideal']:>8.0%}")
    lines.append("  where the time goes (one call under cProfile, ms; 50 % budget):")
    for r in m["rows"]:
        if r["budget"] in (0.5, 1.0):
            b = r["breakdown"]
            parts = sorted(b["seconds"].items(), key=lambda kv: -kv[1])
            head = f"    {r['model'][:14]:<14} b{r['batch']:<3} {r['method']:<11} {1e3 * b['total_s']:.1f}: "
            lines.append(head + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in parts if v >= 0.02 * b["total_s"]))
    return lines


def _tokens(t):
    lines = ["", f"gather / scatter of {t['kept']} of {t['shape'][1]} tokens, (B, N, C) = "
             f"{tuple(t['shape'])}: "
             f"time / a plain copy of as many bytes (the output / the base)"]
    for op in ("gather", "scatter"):
        lines.append(f"  {op:<8} copy {t[f'{op}_copy_ms']:.3f} ms   "
                     f"reference {_ratio(t.get(f'{op}_reference_vs_copy'))}"
                     f"   fast {_ratio(t.get(f'{op}_fast_vs_copy'))}"
                     f"   fast on the copy's rows {_ratio(t.get(f'{op}_fast_first_vs_copy'))}")
    return lines


def _train(tr):
    return ["", f"training step (forward + backward + AdamW), {tr['model']}, batch {tr['batch']}: reference "
            f"{tr['reference_s']:.2f} s, fast {tr['fast_s']:.2f} s, "
            f"torch {_num(tr.get('torch_s'), '{:.2f} s')}",
            f"  fast speed / torch speed {_ratio(tr.get('fast_vs_torch'))}, "
            f"fast / reference {_ratio(tr['fast_vs_reference'])}"]


def _profile(p):
    g = p["sgemm_gflops"]
    lines = ["", f"profile ({p['model']}, fast path; {_threads({'threads': {'process': p['threads']}})})",
             "  NumPy sgemm GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in g.items())]
    ort = p.get("onnxruntime") or {}
    for who, rows in (("minitofe fast (cProfile)", p["ops"]),
                      ("onnxruntime (its profiler)", ort.get("rows", []))):
        lines.append(f"  {who}:")
        for r in rows:
            lines.append(f"    batch {r['batch']}: forward {1e3 * r['forward_s']:.1f} ms; "
                         + ", ".join(f"{k} {1e3 * v:.1f} ms ({v / r['forward_s']:.0%})" for k, v in
                                     sorted(r["seconds"].items(), key=lambda kv: -kv[1]) if v > 0))
            lines.append("      matmuls: " + ", ".join(f"{k} {v:.0f} GFLOP/s"
                                               for k, v in r["gflops"].items()))
    if "skipped" in ort:
        lines.append(f"  onnxruntime left out: {ort['skipped']}")
    return lines


def _startup(su):
    lines = ["", f"fresh process: minitofe predict IMAGE --json ({su['weights']}), after a first run:"]
    for mode in ("default", "fast", "no_fast"):
        r = su[mode]
        flag = "(no flag)" if mode == "default" else f"--{mode.replace('_', '-')}"
        lines.append(f"  {flag:<10} wall {r['wall_s']:.2f} s, peak memory {r['peak_rss_mib']:.0f} MiB")
    return lines


def _in_process(rows):
    lines = ["", "extra, NOT the method above: the dense contenders all in one process, images/s"]
    for r in rows:
        lines.append(f"  batch {r['batch']:>3}: " + ", ".join(
            f"{k[:-len('_img_s')]} {v:.3g}" for k, v in r.items() if k.endswith("_img_s")))
    return lines


def format_tables(res):
    """The human-readable report of ``run_bench``'s dict."""
    lines = _machine(res["machine"])
    for name, fmt in (("dense", _dense), ("tofe", _tofe), ("tokens", _tokens), ("train", _train),
                      ("macs", _macs), ("profile", _profile), ("startup", _startup),
                      ("dense_in_process", _in_process)):
        if name in res:
            lines += fmt(res[name])
    lines += ["", f"(bench took {res['bench_seconds']:.0f} s)"]
    return "\n".join(lines)

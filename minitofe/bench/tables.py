"""The tables ``minitofe bench`` prints (``--json`` prints the dict instead)."""


def _num(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def format_tables(res):
    """The human-readable report of ``run_bench``'s dict."""
    m = res["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, numpy {m['numpy']}, numba {m.get('numba', '-')} "
             f"({m.get('numba_threads', '-')} threads), torch {m['torch'] or '-'} ({m['torch_threads'] or '-'} "
             f"threads), {m['dtype']}", "",
             f"dense forward, images/s          {'batch':>5} {'reference':>10} {'fast':>8} {'timm':>8} {'fast/timm':>10}"]
    for r in res["dense"]:
        t = r.get("timm_img_s")
        lines.append(f"  {r['model']:<30} {r['batch']:>5} {_num(r['reference_img_s']):>10} "
                     f"{_num(r['fast_img_s']):>8} {_num(t):>8} {_num(t and r['fast_img_s'] / t):>10}")
    lines += ["", f"ToFe top-k, fast path      {'batch':>5} {'MACs':>6} {'keep ratios':>20} {'ms':>9} "
              f"{'dense ms':>9} {'speed-up':>9}"]
    for r in res["tofe"]:
        lines.append(f"  {'':<24} {r['batch']:>5} {r['macs_ratio']:>6.0%} {str(r['keep_ratios']):>20} "
                     f"{1e3 * r['seconds']:>9.1f} {1e3 * r['dense_seconds']:>9.1f} {r['speedup']:>8.2f}x")
    t = res["tokens"]
    lines += ["", f"gather / scatter of {t['kept']} of {t['shape'][1]} tokens, (B, N, C) = {tuple(t['shape'])}: "
              f"time / plain copy of the output"]
    for op in ("gather", "scatter"):
        lines.append(f"  {op:<8} reference {_num(t.get(f'{op}_reference_vs_copy'), '{:.2f}x')}   "
                     f"fast {_num(t.get(f'{op}_fast_vs_copy'), '{:.2f}x')}")
    tr = res["train"]
    tt = tr.get("torch_s")
    lines += ["", f"training step (forward + backward + AdamW), {tr['model']}, batch {tr['batch']}: "
              f"reference {tr['reference_s']:.2f} s, fast {tr['fast_s']:.2f} s, torch {_num(tt, '{:.2f} s')}"
              f" -> fast speed / torch speed {_num(tt and tt / tr['fast_s'], '{:.2f}x')}"]
    su = res["startup"]
    lines += ["", f"fresh process: minitofe predict IMAGE --json ({su['weights']}), after a first run:"]
    for mode in ("default", "fast", "no_fast"):
        r = su[mode]
        flag = "(no flag)" if mode == "default" else f"--{mode.replace('_', '-')}"
        lines.append(f"  {flag:<10} wall {r['wall_s']:.2f} s, peak memory {r['peak_rss_mib']:.0f} MiB")
    lines += ["", f"(bench took {res['bench_seconds']:.0f} s)"]
    return "\n".join(lines)

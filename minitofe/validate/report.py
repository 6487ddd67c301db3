"""The text form of a ``compare`` report: one line per tensor in execution order, then the first
divergence spelled out (its worst element; for masks the flipped tokens by image and stage; for kept
indices the patches each side keeps alone) and the verdict. ``brief``: on a pass a summary (the worst
error per role), on a failure the rows around the first divergence only."""
import difflib

MAX_LISTED = 6
AROUND = (2, 3)          # brief: rows shown before and after the first divergence


def _shape(row):
    return "x".join(str(d) for d in row["shape"]) or "scalar"


def _num(v):
    return "-" if v is None else ("nan" if v != v else f"{v:.1e}")


def _detail(row):
    if row.get("error"):
        return row["error"]
    if row.get("note"):
        return row["note"]
    if row.get("flips"):
        return f"{len(row['flips'])} token(s) flipped"
    if row.get("index_diffs"):
        return f"{len(row['index_diffs'])} image(s) keep other patches"
    return f"rows {row['rows']}" if row.get("rows") not in (None, "all") else ""


def _line(i, row, width):
    verdict = " ".join(("ok  " if row[f"pass_{c}"] else "FAIL") for c in ("float64", "float32"))
    return (f"{i:4d}  {row['name']:<{width}}  {_shape(row):<12} {_num(row.get('max_abs')):>8} "
            f"{_num(row.get('rel')):>8}  {verdict}  {_detail(row)}").rstrip()


def _flips(row):
    out = []
    for f in row["flips"][:MAX_LISTED]:
        out.append(f"    stage {f['stage']}, image {f['image']}: patch {f['patch']} (token {f['token']}) "
                   f"golden {f['golden']}, theirs {f['theirs']}")
    if len(row["flips"]) > MAX_LISTED:
        out.append(f"    ... and {len(row['flips']) - MAX_LISTED} more")
    return out


def _index_diffs(row):
    return [f"    image {d['image']}: only golden keeps patches {d['only_golden']}, only theirs "
            f"{d['only_theirs']}" for d in row["index_diffs"][:MAX_LISTED]]


def _where(name, idx, T):
    """Words for an index into a named tensor: the image, token (prefix or patch) and channel."""
    if name.endswith("selector_logits") and len(idx) == 3:
        return f" = image {idx[0]}, patch {idx[1]}, {'keep' if idx[2] == 0 else 'freeze'} logit"
    if len(idx) == 3 and (name == "embed" or name.startswith(("blocks.", "stage."))):
        b, n, c = idx
        return f" = image {b}, token {n} ({'prefix token' if n < T else f'patch {n - T}'}), channel {c}"
    if name == "logits" and len(idx) == 2:
        return f" = image {idx[0]}, class {idx[1]}"
    return ""


def divergence_lines(report):
    """The lines that spell out the first divergence (empty when everything passed)."""
    row = report["first_divergence"]
    if row is None:
        return []
    lines = [f"FIRST DIVERGENCE: {row['name']} ({row['what']})"]
    if row.get("flips"):
        lines += _flips(row)
    elif row.get("index_diffs"):
        lines += _index_diffs(row)
    elif row.get("error"):
        lines.append(f"    {row['error']}")
    if row.get("worst") is not None and row.get("golden") is not None and not row.get("flips"):
        where = (f"[{', '.join(map(str, row['worst']))}]"
                 + _where(row["name"], row["worst"], report["prefix_tokens"]))
        lines.append(f"    worst element {where}: golden {row['golden']:.10g}, theirs {row['theirs']:.10g} "
                     f"(abs error {_num(row.get('max_abs'))}, rel {_num(row.get('rel'))})")
    if row.get("rows") not in (None, "all"):
        lines.append(f"    compared on the rows {row['rows']}")
    last = report["last_match"]
    lines.append(f"    everything before it matches (last: {last})" if last else
                 "    it is the first tensor compared")
    return lines


def _rows(report, width, brief):
    """Inputs and parameters in one line when all equal; then every forward / backward tensor (with
    ``brief``, up to three after the first divergence)."""
    rows = list(enumerate(report["tensors"], 1))
    given = [(i, r) for i, r in rows if r["role"] in ("input", "param")]
    lines = []
    if given and all(r[f"pass_{report['class']}"] for _, r in given):
        lines.append(f"{'':>4}  inputs and parameters: {len(given)} given, all equal to the golden's")
        rows = [(i, r) for i, r in rows if r["role"] not in ("input", "param")]
    first = report["first_divergence"]
    if not brief or first is None:
        return lines + [_line(i, r, width) for i, r in rows]
    k = [k for k, (_, r) in enumerate(rows) if r is first][0]
    start, stop = max(0, k - AROUND[0]), k + 1 + AROUND[1]
    if start:
        lines.append(f"{'':>4}  ... {start} earlier tensor(s), all within tolerance")
    lines += [_line(i, r, width) for i, r in rows[start:stop]]
    rest = rows[stop:]
    if rest:
        bad = sum(not r[f"pass_{report['class']}"] for _, r in rest)
        lines.append(f"{'':>4}  ... {len(rest)} more: {bad} diverge, {len(rest) - bad} match")
    return lines


def _summary(report):
    """brief, on a pass: one line per role with its worst error."""
    counts = {}
    for r in report["tensors"]:
        counts[r["role"]] = counts.get(r["role"], 0) + 1
    return [f"{'':>4}  {role:<8} {n:4d} tensor(s), worst rel {_num(report['worst'][role]['rel'])} "
            f"({report['worst'][role]['name']})" for role, n in counts.items() if role in report["worst"]]


def format_report(report, brief=False):
    """-> the report as text; ``brief``: a summary on a pass, the rows around the first divergence on a
    failure."""
    cls = report["class"]
    lines = [f"golden  {report['bundle']}: minitofe {report['minitofe_version']}, mode {report['mode']}, "
             f"method {report['method']}",
             f"theirs  {report['theirs'] or '(arrays)'}: {report['compared']} tensor(s) compared, "
             f"{len(report['not_given'])} forward/backward tensor(s) not given",
             "rel = max|theirs - golden| / max|golden| over the rows compared; pass: rel <= "
             + ", ".join(f"{t:.0e} ({c})" for c, t in report["tolerances"].items())
             + f"; masks and indices exactly; verdict by {cls}", ""]
    width = max([len(r["name"]) for r in report["tensors"]] + [6])
    if brief and report["passed"]:
        lines += _summary(report)
    else:
        lines.append(f"{'#':>4}  {'tensor':<{width}}  {'shape':<12} {'max abs':>8} {'rel':>8}  f64  f32")
        lines += _rows(report, width, brief)
    lines.append("")
    if report["unknown"]:
        names = report["unknown"][:MAX_LISTED]
        hints = [f"{n} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(
            n, [r["name"] for r in report["tensors"]] + report["not_given"], 1)) else n for n in names]
        lines.append(f"not in the bundle, ignored: {', '.join(hints)}"
                     + (" ..." if len(report["unknown"]) > MAX_LISTED else ""))
    lines += divergence_lines(report)
    if report["passed"]:
        lines.append(f"PASS: all {report['compared']} compared tensors within the {cls} tolerance")
    else:
        lines.append(f"FAIL: {report['failed']} of {report['compared']} compared tensors diverge "
                     f"({cls} tolerance)")
    return "\n".join(lines)

"""What do reused tokens do? (docs/study-reused-tokens.md) The shipped ToFe model on the Fashion-MNIST
test set at exactly 50 % and 35 % of the dense MACs:

- the attention kept tokens pay to reused tokens (per stage, self excluded), with the trained
  approximator and with the identity freeze path, against uniform attention;
- where reused tokens sit: a 7x7 map of reuse per image, class by class, and how many are background;
- the logits when the reused tokens (at the stage that reuses them) take their dense values or zeros,
  against as many random kept non-reused tokens (the control).

The big runs are float32 (the trends, not the last digit, are the point); the check that the traced
re-run equals ``predict`` is float64 on the first ``--check`` images. Prints markdown tables and writes
docs/img/reused_attention.png, reused_maps.png, reused_interventions.png.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python scripts/study_reused_tokens.py [--n 10000] [--weights A B C]
"""
import argparse
import hashlib
import pathlib
import pickle

import numpy as np

import minitofe
from minitofe.cli.common import budget_ratios
from minitofe.data import load_fashion_mnist
from minitofe.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from minitofe.train import reuse_analysis as R

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights" / "tofe_fmnist_patch4_50.npz"
IMG = ROOT / "docs" / "img"
BUDGETS = (0.5, 0.35)
THRESHOLD = 0.1              # background: a patch whose mean raw pixel (in [0, 1]) is below this
PATHS = ("approximator", "identity")
EDITS = (("reused", "as run"), ("reused", "dense"), ("reused", "zeros"), ("reused (matched)", "dense"),
         ("reused (matched)", "zeros"), ("control", "dense"), ("control", "zeros"),
         ("reused, background", "zeros"), ("reused, garment", "zeros"))


def check_exact(images, budgets, weights=WEIGHTS):
    """float64: the traced re-run's logits and masks against ``predict``'s; the as-run replacement."""
    model = minitofe.load_model(weights, dtype=np.float64)
    x = images.astype(np.float64)
    for b in budgets:
        ratios = budget_ratios(model, "tofe", b)
        z, info = minitofe.predict(model, x, keep_ratios=ratios)
        zt, tr = R.traced_forward(model, x, keep_ratios=ratios)
        same = all((info[k][s] == tr[k][s]).all() for k in ("kept", "reused") for s in range(3))
        za = R.intervention_logits(model, x, tr, tr["reused"], tr["inputs"])
        print(f"check {100 * b:.0f} % (float64, {len(x)} images): max |traced - predict| = "
              f"{np.abs(zt - z).max():.1e}, masks equal: {same}, as-run replacement max change "
              f"{np.abs(za - z).max():.1e}, MACs {100 * info['macs_ratio'].mean():.2f} %")


def measure(model, images, labels, raw, ratios, batch=500, seed=0):
    """Every figure at one budget, accumulated over batches."""
    rng, T = np.random.default_rng(seed), model.cfg.num_prefix_tokens
    att = {p: [{g: [np.zeros(3), np.zeros(3), 0] for g in R.GROUPS} for _ in range(3)] for p in PATHS}
    kept, reused, frozen = [], [], []
    logits = {e: [] for e in EDITS + (("none", "as run"), ("identity", ""))}
    n_edit = dict.fromkeys(("reused", "reused (matched)", "control", "reused, background",
                            "reused, garment"), 0)
    bg = R.background_patches(raw, model.cfg.patch_size, THRESHOLD)
    for lo in range(0, len(images), batch):
        x = images[lo:lo + batch]
        print(f"  {lo} / {len(images)} images", flush=True)
        for path in PATHS:
            z, tr = R.traced_forward(model, x, keep_ratios=ratios, freeze=path)
            for s in range(3):
                for g, v in R.attention_shares(tr["attention"][s], tr["idx"][s], tr["reused"][s], T).items():
                    acc = att[path][s][g]
                    acc[0] += v["mass"] * v["n"]
                    acc[1] += v["uniform"] * v["n"]
                    acc[2] += v["n"]
            if path == "identity":
                logits[("identity", "")].append(z)
        z, tr = R.traced_forward(model, x, keep_ratios=ratios)
        kept.append(np.stack(tr["kept"], 1))
        reused.append(np.stack(tr["reused"], 1))
        frozen.append(np.stack(tr["frozen"], 1))
        logits[("none", "as run")].append(z)
        dense = R.dense_stage_inputs(model, x)
        values = {"as run": tr["inputs"], "dense": dense, "zeros": [np.zeros_like(v) for v in dense]}
        pairs = [R.matched_masks(k, r, rng) for k, r in zip(tr["kept"], tr["reused"])]
        masks = {"reused": tr["reused"], "reused (matched)": [p[0] for p in pairs],
                 "control": [p[1] for p in pairs],
                 "reused, background": [r & bg[lo:lo + batch] for r in tr["reused"]],
                 "reused, garment": [r & ~bg[lo:lo + batch] for r in tr["reused"]]}
        for who in n_edit:
            n_edit[who] += int(sum(m.sum() for m in masks[who]))
        for who, what in EDITS:
            logits[(who, what)].append(R.intervention_logits(model, x, tr, masks[who], values[what]))
    logits = {k: np.concatenate(v) for k, v in logits.items()}
    return dict(att=att, kept=np.concatenate(kept), reused=np.concatenate(reused),
                frozen=np.concatenate(frozen), logits=logits, bg=bg, n_edit=n_edit)


def _top1(logits, labels):
    """Top-1 accuracy (%) of ``logits`` (n, classes)."""
    return 100 * (logits.argmax(1) == labels).mean()


def _to_reused(a):
    """(attention mass to reused tokens, the same under uniform attention), from every query group
    (``a``: ``measure``'s ``att`` entry of one freeze path and stage, per group [mass, uniform, count])."""
    return tuple(sum(a[g][i][1] for g in R.GROUPS) for i in (0, 1))


def attention_table(res):
    lines = ["| budget | freeze path | stage | K | reused / image | reused share of keys "
             "| attention to reused / uniform, from CLS | from other kept | from reused | from all "
             "| to CLS / uniform, from patches |",
             "|---" * 11 + "|"]
    for b, r in res.items():
        for path in PATHS:
            for s in (1, 2):
                a = r["att"][path][s]
                rel = {g: a[g][0][1] / a[g][1][1] if a[g][2] else float("nan") for g in R.GROUPS}
                mass, uni = _to_reused(a)
                n = sum(a[g][2] for g in R.GROUPS)
                cls = sum(a[g][0][0] for g in R.GROUPS[1:]) / sum(a[g][1][0] for g in R.GROUPS[1:])
                lines.append(f"| {100 * b:.0f} % | {path} | {s + 1} | {int(r['kept'][0, s].sum())} | "
                             f"{r['reused'][:, s].sum(1).mean():.2f} | {uni / n:.3f} | {rel['cls']:.3f} | "
                             f"{rel['other']:.3f} | {rel['reused']:.3f} | {mass / uni:.3f} | {cls:.3f} |")
    return "\n".join(lines)


def where_table(res, labels):
    lines = ["| budget | class | images | reused / image (stages 2+3) | background share: all patches | "
             "kept at stage 1 | kept at 2 | kept at 3 | reused |", "|---|---|---|---|---|---|---|---|---|"]
    for b, r in res.items():
        bg = r["bg"]
        rows = [(name, labels == c) for c, name in enumerate(FASHION_MNIST_CLASSES)] + \
               [("**all**", np.ones(len(labels), bool))]
        for name, sel in rows:
            k, u, g = r["kept"][sel], r["reused"][sel], bg[sel]
            share = (lambda m: (m & g[:, None]).sum() / max(m.sum(), 1))     # m: (b, stages, P)
            lines.append(f"| {100 * b:.0f} % | {name} | {sel.sum()} | {u.sum((1, 2)).mean():.2f} | "
                         f"{g.mean():.3f} | {share(k[:, :1]):.3f} | {share(k[:, 1:2]):.3f} | "
                         f"{share(k[:, 2:]):.3f} | "
                         f"{share(u):.3f} |")
    return "\n".join(lines)


def edit_table(res, labels):
    lines = ["| budget | tokens replaced | by | tokens | top-1 (%) | top-1 unchanged (%) "
             "| mean abs logit change | KL(as run, edited) |", "|---" * 8 + "|"]
    for b, r in res.items():
        z0 = r["logits"][("none", "as run")]
        for (who, what), z in r["logits"].items():
            c = R.logit_change(z0, z)
            n = {"none": 0, "identity": "–"}.get(who, r["n_edit"].get(who))
            label = {"none": "none (as run)", "identity": "frozen tokens: identity path"}.get(who, who)
            top1 = _top1(z, labels)
            lines.append(f"| {100 * b:.0f} % | {label} | {what} | {n} | {top1:.2f} | "
                         f"{100 * c['agree']:.2f} | "
                         f"{c['abs']:.4f} | {c['kl']:.5f} |")
    return "\n".join(lines)


def _figures(r, labels):
    """The figures the seed table compares, of one model at one budget (``measure``'s result)."""
    out = {}
    for path in PATHS:
        for s in (1, 2):
            mass, uni = _to_reused(r["att"][path][s])
            out[f"attention to reused / uniform, from all ({path}, stage {s + 1})"] = mass / uni
    for s in (1, 2):
        out[f"reused / image, stage {s + 1}"] = r["reused"][:, s].sum(1).mean()
    u = r["reused"]
    out["background share of reused"] = (u & r["bg"][:, None]).sum() / max(u.sum(), 1)
    base = _top1(r["logits"][("none", "as run")], labels)
    out["top-1 as run (%)"] = base
    for who, what in (("reused", "dense"), ("reused", "zeros"), ("reused (matched)", "zeros"),
                      ("control", "zeros")):
        out[f"top-1 change (points), {who} -> {what}"] = _top1(r["logits"][(who, what)], labels) - base
    for who in ("reused (matched)", "control", "reused, background", "reused, garment"):
        change = R.logit_change(r["logits"][("none", "as run")], r["logits"][(who, "zeros")])
        out[f"mean abs logit change, {who} -> zeros"] = change["abs"]
    return out


def _label(path):
    """A model's column name: its run's folder for a trainer's ``final.npz``, else its file name."""
    path = pathlib.Path(path)
    return path.parent.name if path.name == "final.npz" else path.name


def seed_table(runs, labels):
    """Mean ± std over the models of ``runs`` ({model name: {budget: measure's result}}), per budget."""
    names = list(runs)
    columns = [_label(n) for n in names]
    lines = [f"| budget | figure | mean ± std over {len(names)} models | " + " | ".join(columns) + " |",
             "|---" * (3 + len(names)) + "|"]
    for b in BUDGETS:
        per = [_figures(runs[n][b], labels) for n in names]
        for key in per[0]:
            v = np.array([f[key] for f in per])
            spread = f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""
            lines.append(f"| {100 * b:.0f} % | {key} | {v.mean():.3f}{spread} | "
                         + " | ".join(f"{x:.3f}" for x in v) + " |")
    return "\n".join(lines)


def pictures(res, images_raw, labels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    IMG.mkdir(parents=True, exist_ok=True)
    g = int(round(res[BUDGETS[0]]["kept"].shape[2] ** 0.5))
    fig, axes = plt.subplots(1 + len(res), 11, figsize=(15, 1.5 * (1 + len(res)) + 0.4),
                             gridspec_kw=dict(wspace=0.05, hspace=0.15, left=0.04, right=0.9))
    for c in range(11):
        sel = labels == c if c < 10 else np.ones(len(labels), bool)
        axes[0, c].imshow(images_raw[sel, 0].mean(0), cmap="gray", vmin=0, vmax=1)
        axes[0, c].set_title(FASHION_MNIST_CLASSES[c] if c < 10 else "all", fontsize=8)
        for i, (b, r) in enumerate(res.items()):
            counts, n = R.reuse_maps(list(r["reused"].transpose(1, 0, 2)), labels, 10, g)
            im = axes[i + 1, c].imshow(counts[c] / n[c], cmap="magma", vmin=0, vmax=1)
            axes[i + 1, 0].set_ylabel(f"reused / image\n{100 * b:.0f} % MACs", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:].ravel().tolist(), shrink=0.8)
    fig.savefig(IMG / "reused_maps.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(res), figsize=(5 * len(res), 3.4), sharey=True)
    for ax, (b, r) in zip(np.atleast_1d(axes), res.items()):
        names, cols = [], {"cls": "C0", "other": "C2", "reused": "C1"}
        for i, (path, s) in enumerate((p, s) for p in PATHS for s in (1, 2)):
            a = r["att"][path][s]
            names.append(f"{path}\nstage {s + 1}")
            for j, gname in enumerate(R.GROUPS):
                ratio = a[gname][0][1] / a[gname][1][1] if a[gname][2] else np.nan
                ax.bar(i + 0.27 * (j - 1), ratio, 0.27, color=cols[gname],
                       label=f"from {gname}" if i == 0 else None)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{100 * b:.0f} % MACs: attention to reused / uniform", fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "reused_attention.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(res), figsize=(6 * len(res), 3.6))
    n_edit = ("reused", "reused (matched)", "control", "reused, background", "reused, garment")
    for ax, (b, r) in zip(np.atleast_1d(axes), res.items()):
        keys = [k for k in r["logits"] if k[0] in n_edit and k[1] != "as run"]
        z0 = r["logits"][("none", "as run")]
        acc0 = _top1(z0, labels)
        vals = [_top1(r["logits"][k], labels) for k in keys]
        ax.bar(range(len(keys)), vals, color=["C7" if k[0] == "control" else "C1" for k in keys])
        ax.axhline(acc0, color="k", lw=0.8, label=f"as run {acc0:.2f} %")
        ax.set_xticks(range(len(keys)), [f"{k[0]}\n-> {k[1]}".replace(" (", "\n(").replace(", ", ",\n")
                                         for k in keys], fontsize=7)
        ax.set_ylim(min(vals + [acc0]) - 3, max(vals + [acc0]) + 1)
        ax.set_title(f"{100 * b:.0f} % MACs: test top-1 (%) after replacing", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "reused_interventions.png", dpi=90)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="the first N test images")
    ap.add_argument("--check", type=int, default=500, help="images for the float64 check")
    ap.add_argument("--no-pictures", action="store_true")
    ap.add_argument("--cache", help="a folder of the measurements, one pickle per model and image count: "
                                    "read where it exists, else written")
    ap.add_argument("--weights", nargs="+", default=[str(WEIGHTS)],
                    help="ToFe models (e.g. the seeds of one recipe): the tables and pictures are the first "
                         "one's, and a table of the main figures over all of them, mean ± std")
    args = ap.parse_args()
    images, labels = load_fashion_mnist("test")
    images, labels = images[:args.n], labels[:args.n]
    raw = images * FASHION_MNIST_STD + FASHION_MNIST_MEAN
    runs = {}
    for path in args.weights:
        digest = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]
        stored = pathlib.Path(args.cache or ".") / f"reused-{digest}-n{args.n}.pkl"
        if args.cache and stored.is_file():
            runs[path] = pickle.loads(stored.read_bytes())
            continue
        print(f"{path}:", flush=True)
        check_exact(images[:args.check], BUDGETS, path)
        model = minitofe.load_model(path, dtype=np.float32)
        runs[path] = {b: measure(model, images, labels, raw, budget_ratios(model, "tofe", b))
                      for b in BUDGETS}
        if args.cache:
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_bytes(pickle.dumps(runs[path]))
    res = runs[next(iter(runs))]
    print(f"\n{len(labels)} test images; background: mean raw pixel < {THRESHOLD}; tables of "
          f"{next(iter(runs))}\n")
    for title, text in (("Attention (self excluded)", attention_table(res)),
                        ("Where reused tokens sit", where_table(res, labels)),
                        ("Interventions", edit_table(res, labels)),
                        ("Over the models", seed_table(runs, labels))):
        print(f"### {title}\n\n{text}\n")
    if not args.no_pictures:
        pictures(res, raw, labels)


if __name__ == "__main__":
    main()

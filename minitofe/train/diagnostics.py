"""Where a reduced model departs from its dense teacher, stage by stage (for the results' analysis).

``stage_errors`` runs reduced inference and the dense teacher on the same images and measures, at the
end of every stage, the relative squared error of the tokens against the teacher's tokens at the same
positions:

    err(S) = sum over tokens in S of ||x_i - t_i||^2  /  sum over tokens in S of ||t_i||^2

for three sets S: the *frozen* patches after the freeze path (the approximator's output, or the token
carried unchanged), the same frozen patches had they been carried unchanged (``identity``: the stage's
input; what the approximator has to beat), and the *kept* patches (their error comes from attending to
fewer tokens and from the fine-tuned weights). Lower is closer to the teacher; 1.0 is as far as a zero
token. The same errors of the frozen patches are also given relative to the update the teacher makes to
those tokens over the stage, ``sum ||t_i - t0_i||^2`` with ``t0`` the teacher's token at the stage start
(``frozen_update``, ``identity_update``): the share of the skipped blocks' work the freeze path misses,
comparable between stages of different lengths (``blocks``: how many blocks the frozen tokens skip).

``freeze_path_accuracy`` asks what the freeze path costs in accuracy: the same selectors and keep path
(each stage deciding on the tokens its path produced), with three freeze paths, ``approximator`` (as
trained), ``identity`` (frozen tokens carried unchanged) and ``oracle`` (each stage's blocks also run
on *all* of its input tokens, and frozen tokens take those outputs: a perfect approximator, given the
same input as the trained one). If the oracle is far above the approximator, the approximator is what
holds the model back; if not, it is the selection.
"""
import numpy as np

from ..backend import get_xp, to_numpy
from ..model import predict
from ..nn.block import run_blocks
from ..nn.embed import check_images, embed_forward, head_forward
from ..tofe.inference import decide, resolve_keep_ratios, run_stage
from ..tofe.ops import resolve
from ..tofe.scoring import stage_ranges, stage_scores
from ..tofe.training import teacher_forward


def stage_errors(model, images, teacher_params, batch_size=250, **predict_kw):
    """Per stage: ``frozen``, ``identity`` and ``kept`` relative errors, ``frozen_update`` and
    ``identity_update`` (see the module docstring), the ``blocks`` skipped and the mean fraction of patches
    frozen, over ``images`` (B, Cin, H, W). ``predict_kw`` go to ``predict``
    (``method``, ``keep_ratios``, ``fast`` ...). Returns a list of dicts, one per stage."""
    cfg = model.cfg
    stages = model.tofe.resolved_stages(cfg.depth)
    T = cfg.num_prefix_tokens
    sums = None
    for lo in range(0, len(images), batch_size):
        x = images[lo:lo + batch_size]
        _, info = predict(model, x, **predict_kw)
        teacher = teacher_forward(teacher_params, x, cfg, stages)["tokens"]
        first, _ = embed_forward(x, model.params, cfg)
        inputs = [run_blocks(first, model.params, cfg, 0, stages[0])] + info["stage_outputs"][:-1]
        t_first, _ = embed_forward(x, teacher_params, cfg)
        starts = [run_blocks(t_first, teacher_params, cfg, 0, stages[0])] + teacher[:-1]
        if sums is None:
            sums = [{"frozen": [0.0, 0.0], "identity": [0.0, 0.0], "kept": [0.0, 0.0], "update": 0.0,
                     "n_frozen": 0, "n": 0} for _ in stages]
        for s, acc in enumerate(sums):
            t = to_numpy(teacher[s])
            b, p = np.nonzero(info["frozen"][s])
            update = t[b, p + T] - to_numpy(starts[s])[b, p + T]
            acc["update"] += float((update * update).sum())
            out, inp = to_numpy(info["stage_outputs"][s]), to_numpy(inputs[s])
            for name, mask, value in (("frozen", info["frozen"][s], out),
                                      ("identity", info["frozen"][s], inp),
                                      ("kept", info["kept"][s], out)):
                b, p = np.nonzero(mask)
                d, ref = value[b, p + T] - t[b, p + T], t[b, p + T]
                acc[name][0] += float((d * d).sum())
                acc[name][1] += float((ref * ref).sum())
            acc["n_frozen"] += int(info["frozen"][s].sum())
            acc["n"] += info["frozen"][s].size
    result = []
    for s, (acc, (lo, hi)) in enumerate(zip(sums, stage_ranges(cfg, stages))):
        row = {"stage": s, "blocks": hi - lo, "frozen_fraction": acc["n_frozen"] / acc["n"]}
        for name in ("frozen", "identity", "kept"):
            num, den = acc[name]
            row[name] = num / den if den > 0 else float("nan")
        for name in ("frozen", "identity"):
            row[f"{name}_update"] = acc[name][0] / acc["update"] if acc["update"] > 0 else float("nan")
        result.append(row)
    return result


FREEZE_PATHS = ("approximator", "identity", "oracle")


def freeze_path_logits(model, images, keep_ratios=None, ops=None):
    """Logits (B, num_classes) of a reduced model (a method with a learned selector that freezes and
    reuses tokens; ``topk`` decisions at ``keep_ratios``, else the learned or configured ones) under each
    of ``FREEZE_PATHS`` (see the module docstring), for ``images`` (B, Cin, H, W). ``ops``: the functions
    the blocks run on (None: the reference; ``kernels.ops(True, like=images)``: the Numba twins)."""
    cfg, tcfg, params, ops = model.cfg, model.tofe, model.params, resolve(ops)
    if not tcfg.reuses_tokens or not tcfg.learned_selector:
        raise ValueError(f"freeze paths need a method with a learned selector that freezes and reuses "
                         f"tokens (tofe, tofe-identity, tofe-uniform), got {tcfg.method!r}")
    check_images(images, cfg, params["pos_embed"].dtype)
    stages, T = tcfg.resolved_stages(cfg.depth), cfg.num_prefix_tokens
    ratios = resolve_keep_ratios(tcfg, keep_ratios, model.learned_keep_ratios)
    x0, _ = embed_forward(images, params, cfg)
    x0 = ops.run_blocks(x0, params, cfg, 0, stages[0])
    logits = {}
    for path in FREEZE_PATHS:
        x, run_tcfg = x0, tcfg if path == "approximator" else tcfg.replace(method="tofe-identity")
        for s, blocks in enumerate(stage_ranges(cfg, stages)):
            scores = stage_scores(x, params, cfg, tcfg, s, f"blocks.{blocks[0]}.", None)     # (B, P)
            kept = decide(scores, s, None, ratios, None, tcfg)
            out = run_stage(x, kept, ~kept, params, cfg, run_tcfg, s, blocks, ops, scores)
            if path == "oracle":                 # frozen tokens: what the blocks make of every token
                every = ops.run_blocks(x, params, cfg, *blocks)
                b, q = get_xp(x).nonzero(~kept)
                out[b, q + T] = every[b, q + T]
            x = out
        logits[path], _ = head_forward(x, params, cfg)
    return logits


def freeze_path_accuracy(model, images, labels, keep_ratios=None, batch_size=250, ops=None):
    """Top-1 under each of ``FREEZE_PATHS`` on ``images`` with integer ``labels`` (B,), in batches
    (``freeze_path_logits``). Returns {path: top-1}."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    correct = dict.fromkeys(FREEZE_PATHS, 0)
    for lo in range(0, len(images), batch_size):
        for path, z in freeze_path_logits(model, images[lo:lo + batch_size], keep_ratios, ops).items():
            correct[path] += int((to_numpy(z).argmax(-1) == to_numpy(labels[lo:lo + batch_size])).sum())
    return {path: correct[path] / len(images) for path in FREEZE_PATHS}

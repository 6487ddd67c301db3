"""Where a reduced model departs from its dense teacher, stage by stage (for the results' analysis).

``stage_errors`` runs reduced inference and the dense teacher on the same images and measures, at the
end of every stage, the relative squared error of the tokens against the teacher's tokens at the same
positions:

    err(S) = sum over tokens in S of ||x_i - t_i||^2  /  sum over tokens in S of ||t_i||^2

for three sets S: the *frozen* patches after the freeze path (the approximator's output, or the token
carried unchanged), the same frozen patches had they been carried unchanged (``identity``: the stage's
input; what the approximator has to beat), and the *kept* patches (their error comes from attending to
fewer tokens and from the fine-tuned weights). Lower is closer to the teacher; 1.0 is as far as a zero
token.
"""
import numpy as np

from ..backend import to_numpy
from ..model import predict
from ..nn.embed import embed_forward
from ..nn.block import run_blocks
from ..tofe.training import teacher_forward


def stage_errors(model, images, teacher_params, batch_size=250, **predict_kw):
    """Per stage: ``frozen``, ``identity`` and ``kept`` relative errors (see the module docstring) and the
    mean fraction of patches frozen, over ``images`` (B, Cin, H, W). ``predict_kw`` go to ``predict``
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
        if sums is None:
            sums = [{"frozen": [0.0, 0.0], "identity": [0.0, 0.0], "kept": [0.0, 0.0], "n_frozen": 0,
                     "n": 0} for _ in stages]
        for s, acc in enumerate(sums):
            t = to_numpy(teacher[s])
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
    for s, acc in enumerate(sums):
        row = {"stage": s, "frozen_fraction": acc["n_frozen"] / acc["n"]}
        for name in ("frozen", "identity", "kept"):
            num, den = acc[name]
            row[name] = num / den if den > 0 else float("nan")
        result.append(row)
    return result

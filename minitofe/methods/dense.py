"""Method ``dense``: no reduction, every block on every token (docs/method.md, "Baselines")."""
import numpy as np

from .protocol import Method
from ..nn.embed import embed_forward, head_forward
from ..tofe.macs import dense_macs
from ..tofe.ops import resolve
from ..tofe.record import new_record


def dense_inference(params, images, cfg, tcfg, keep_ratios=None, kept_masks=None, ops=None):
    """images: (B, Cin, Hh, W) -> logits, info with the keys every method's info has (no stages run)."""
    ops = resolve(ops)
    info = dict(new_record("dropped", "keep_prob", "stage_outputs"), stages=tcfg.resolved_stages(cfg.depth))
    x, _ = embed_forward(images, params, cfg)
    logits, _ = head_forward(ops.run_blocks(x, params, cfg, 0, cfg.depth), params, cfg, ops=ops)
    macs = np.full(x.shape[0], dense_macs(cfg), dtype=np.float64)
    info.update(macs=macs, macs_ratio=macs / dense_macs(cfg), kept_counts=np.zeros((x.shape[0], 0), int))
    return logits, info


def dense_ratios(cfg, tcfg, budget, base=None):
    """Every token at every stage: the dense model meets any budget >= 1 only."""
    return (1.0,) * len(tcfg.resolved_stages(cfg.depth))


DENSE = Method("dense", "no reduction", dense_inference, lambda cfg, tcfg, ratios: float(dense_macs(cfg)),
               dense_ratios)

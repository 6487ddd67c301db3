"""The per-stage record of which patches were kept, frozen and reused, shared by training and inference
(docs/method.md, "Invariants"): one bool (B, P) NumPy array per stage and key.

    kept     the patch ran through the stage's blocks
    frozen   it did not, and was carried (approximator or identity); drop methods never freeze
    reused   kept now after being frozen at an earlier stage
"""
from ..backend import get_xp, to_numpy


def new_record(*extra):
    """-> {"kept": [], "frozen": [], "reused": [], and one empty list per name in ``extra``}."""
    return {k: [] for k in ("kept", "frozen", "reused") + extra}


def record_stage(record, kept, drop, ever_frozen):
    """Append one stage: kept (B, P) bool, on any device; ``drop``: the method drops instead of freezing;
    ever_frozen (B, P) bool: frozen at any earlier stage -> this stage's frozen, the new ever_frozen."""
    frozen = get_xp(kept).zeros_like(kept) if drop else ~kept
    record["kept"].append(to_numpy(kept))
    record["frozen"].append(to_numpy(frozen))
    record["reused"].append(to_numpy(kept & ever_frozen))
    return frozen, ever_frozen | frozen

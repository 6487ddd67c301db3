"""Method ``idle``: training-free freezing (docs/method.md, "Baselines"). Each stage keeps the top-K
patches by the class token's attention (``cls_attention``); frozen tokens are carried unchanged and
scored again at the next stage, so they can be reused. ToFe's inference loop with that scorer."""
from functools import partial

from .cls_attention import CLS_ATTENTION
from .protocol import Method
from ..tofe.budget import ratios_for_budget, topk_macs
from ..tofe.inference import tofe_inference


def scored_by(scorer, name, summary, reuses):
    """A training-free entry: ToFe's freeze-and-reuse loop (or, ``reuses=False``, drop loop) scored by
    ``scorer`` (a ``tofe.scoring.Scorer``) instead of a learned selector."""
    return Method(name, summary, partial(tofe_inference, check=False, scorer=scorer),
                  partial(topk_macs, scorer=scorer), partial(ratios_for_budget, scorer=scorer), reuses=reuses)


IDLE = scored_by(CLS_ATTENTION, "idle", "class-attention top-K, frozen tokens carried unchanged, reused",
                 reuses=True)

"""Self-checking exercises for the numbered notebooks (the layer above everything else: nothing imports it).

Each exercise asks a student to write one small function (5-20 lines) of the method; the cell after it
calls ``check_<name>(their_function)``, which compares it with minitofe's own function (values, gradients
by central differences from ``minitofe.gradcheck``, and a hypothesis search for the smallest random input
on which the two disagree) and shows a ``Verdict``: PASS with what was compared, or FAIL with the first
thing that is wrong, never a traceback. The solutions are the package's functions; notebooks/README.md
says how the student versions are made and handed out.

``EXERCISES`` lists them in notebook order: (check function name, notebook, minutes a student needs).
"""
from .check_attention import check_layernorm_grad, check_masked_softmax, check_masked_softmax_grad
from .check_budget import check_budget_loss, check_decide_tokens, check_stage_macs
from .check_gumbel import check_straight_through_grad, check_straight_through_mask
from .check_reuse import check_reused_tokens, reused_by_predict
from .check_tokens import check_approximator_grad, check_gather_scatter, check_selector_logits
from .verdict import Verdict

EXERCISES = (
    ("check_layernorm_grad", "01_backprop_by_hand", 15),
    ("check_masked_softmax", "01_backprop_by_hand", 10),
    ("check_masked_softmax_grad", "01_backprop_by_hand", 20),
    ("check_straight_through_mask", "02_gumbel_softmax", 10),
    ("check_straight_through_grad", "02_gumbel_softmax", 10),
    ("check_approximator_grad", "03_freeze_and_reuse", 20),
    ("check_selector_logits", "03_freeze_and_reuse", 15),
    ("check_gather_scatter", "03_freeze_and_reuse", 15),
    ("check_reused_tokens", "03_freeze_and_reuse", 10),
    ("check_stage_macs", "04_flops_budget", 15),
    ("check_budget_loss", "04_flops_budget", 15),
    ("check_decide_tokens", "05_visualising_tokens", 10),
)

__all__ = ["EXERCISES", "Verdict", "reused_by_predict"] + [name for name, _, _ in EXERCISES]

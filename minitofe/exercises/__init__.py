"""Self-checking exercises for the numbered notebooks (the layer above everything else: nothing imports it).

Each exercise asks a student to write one small function (3-18 lines of NumPy) of the method; the cell
after it calls ``check_<name>(their_function)``, which compares it with minitofe's own function (values,
gradients by central differences from ``minitofe.gradcheck``, inputs chosen where the plausible wrong
answers differ, and a hypothesis search for the smallest random input on which the two disagree) and
shows a ``Verdict``: PASS with what was compared, or FAIL with the first thing that is wrong and, when
it can prove it, its cause; never a traceback. A student function that calls the package function it
should replace fails ("write it yourself"). The written-out solutions are in the teaching notebooks;
notebooks/README.md and docs/teaching.md say how the student versions are made, handed out and graded
(``grading``, ``minitofe exercises grade``).

``EXERCISES`` lists them in notebook order.
"""
from dataclasses import dataclass

from .check_attention import check_layernorm_grad, check_masked_softmax, check_masked_softmax_grad
from .check_budget import check_budget_loss, check_decide_tokens, check_stage_macs
from .check_gumbel import check_straight_through_grad, check_straight_through_mask
from .check_losses import check_approx_loss, check_distill_loss
from .check_reuse import check_reused_tokens, reused_by_predict
from .check_selector import check_selector_grad, check_selector_logits
from .check_stage import check_stage_forward
from .check_tokens import check_approximator_grad, check_gather_scatter
from .verdict import Verdict


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``name`` (its check is ``check_<name>``), the notebook it is in, the functions the
    student writes (the arguments of the check, in order), the minutes it takes and its points."""
    name: str
    notebook: str
    functions: tuple
    minutes: int

    @property
    def check_name(self):
        return f"check_{self.name}"

    @property
    def check(self):
        return globals()[self.check_name]

    @property
    def points(self):
        """One point per five minutes of work, at least one."""
        return max(1, self.minutes // 5)


EXERCISES = (
    Exercise("layernorm_grad", "01_backprop_by_hand", ("layernorm_grad",), 15),
    Exercise("masked_softmax", "01_backprop_by_hand", ("masked_softmax",), 10),
    Exercise("masked_softmax_grad", "01_backprop_by_hand", ("masked_softmax_grad",), 20),
    Exercise("straight_through_mask", "02_gumbel_softmax", ("straight_through_mask",), 10),
    Exercise("straight_through_grad", "02_gumbel_softmax", ("straight_through_grad",), 10),
    Exercise("distill_loss", "02_gumbel_softmax", ("distill_loss",), 15),
    Exercise("approximator_grad", "03_freeze_and_reuse", ("approximator_grad",), 20),
    Exercise("approx_loss", "03_freeze_and_reuse", ("approx_loss",), 10),
    Exercise("selector_logits", "03_freeze_and_reuse", ("selector_logits",), 15),
    Exercise("selector_grad", "03_freeze_and_reuse", ("selector_grad",), 25),
    Exercise("gather_scatter", "03_freeze_and_reuse", ("gather_kept", "scatter_kept"), 15),
    Exercise("stage_forward", "03_freeze_and_reuse", ("stage_forward",), 20),
    Exercise("reused_tokens", "03_freeze_and_reuse", ("reused_tokens",), 10),
    Exercise("stage_macs", "04_flops_budget", ("stage_macs",), 15),
    Exercise("budget_loss", "04_flops_budget", ("budget_loss",), 15),
    Exercise("decide_tokens", "05_visualising_tokens", ("decide_tokens",), 10),
)

# What an exercise cell may use without importing it: the notebooks' import cells give these names, and
# the grader runs them before a submission's exercise cells.
SETUP = """\
import numpy as np
from minitofe import dense_macs, tofe_macs
from minitofe.config import LN_EPS
from minitofe.nn.block import block_forward
from minitofe.nn.layers import (gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
                                linear_backward, linear_forward)
from minitofe.tofe.tokens import gather_tokens, mask_to_indices, scatter_tokens
"""

__all__ = ["EXERCISES", "Exercise", "SETUP", "Verdict", "reused_by_predict"] + \
    [e.check_name for e in EXERCISES]

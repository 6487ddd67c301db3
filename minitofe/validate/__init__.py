"""A validator's kit: golden bundles of minitofe runs and a first-divergence report for another
implementation's outputs (docs/validate.md).

    from minitofe.validate import golden_model, golden_images, make_golden, compare, format_report
    model, teacher, src = golden_model(preset="vit_fmnist_patch2_28", seed=0)
    images, labels, isrc = golden_images(model, random=2, seed=1)
    make_golden("golden.safetensors", model, images, labels, teacher=teacher, source={**src, **isrc})
    print(format_report(compare("golden.safetensors", "theirs.safetensors")))

``record(name, value)`` keeps an intermediate of another implementation under a bundle name while a
capture runs (``recording()``; a no-op otherwise). ``minitofe.validate.torch`` captures a PyTorch module's
outputs and gradients in one call; ``torch_ref`` and ``torch_baselines`` are small independent PyTorch
implementations with seeded bugs. These import torch, so they are not imported here.
"""
from .bundle import FORMAT, read_bundle
from .compare import TOLERANCES, compare, read_outputs
from .golden import MODES, example_golden, golden_images, golden_model, make_golden, nudge
from .recorder import record, recording
from .report import format_report

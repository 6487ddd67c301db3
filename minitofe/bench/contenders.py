"""What ``minitofe bench`` times: for each section and contender, the calls to time, built in the process
that times them (``bench.worker``). ``build(section, contender, quick, threads=None) -> {key: callable}``;
every callable runs one complete operation (a forward, a training step, one gather) on inputs made here
from fixed seeds, so every contender of a section gets the same work. Random weights, float32. The
dense section's optional runtimes (onnxruntime, ``torch.compile``) are built in ``bench.runtimes``.
"""
import numpy as np

from .. import kernels
from ..kernels.packed import freeze
from ..config import get_config
from ..nn.params import init_params
from ..tofe.config import ToFeConfig
from ..methods import inference as tofe_inference
from ..methods import init_params as init_tofe_params
from ..tofe.macs import dense_macs, tofe_macs
from .macs import build_macs

PAPER_RATIOS = (0.49, 0.25, 0.14)           # ToFe's learned keep ratios; scaled to reach a MACs target
TOFE_TARGETS = (0.70, 0.50, 0.35)           # MACs of the ToFe contenders, as a fraction of dense
# The contenders that run torch in their process (onnxruntime's too: its export and its check against the
# eager model): ``--threads N`` gives them ``torch.set_num_threads(N)`` (``bench.worker``).
TORCH_CONTENDERS = frozenset({"timm", "torch", "torch_compile", "onnxruntime"})
RUNTIMES = ("onnxruntime", "torch_compile")     # the dense section's optional runtimes (``bench.runtimes``)


def torch_timm():
    """(torch, timm), or (None, None) when either is missing."""
    try:
        import timm
        import torch
    except ImportError:
        return None, None
    return torch, timm


def timm_model(name):
    """timm's ``name`` with random weights, in eval mode; the same weights in every process (seed 0, drawn
    from torch's global generator, whose state is put back afterwards)."""
    torch, timm = torch_timm()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False).eval()


def dense_model(quick):
    return "deit_tiny_patch16_224" if quick else "deit_small_patch16_224"


def batches(section, quick):
    return {"dense": (1, 2) if quick else (1, 8, 32), "tofe": (1, 2) if quick else (1, 32)}[section]


def images(B, seed=None):
    rng = np.random.default_rng(B if seed is None else seed)
    return rng.standard_normal((B, 3, 224, 224)).astype(np.float32)


def keep_ratios_for(cfg, stages, target):
    """Keep ratios proportional to ToFe's learned ones whose realised MACs are ``target`` of dense
    -> (realised MACs ratio, keep ratios)."""
    T, P = cfg.num_prefix_tokens, cfg.num_patches

    def ratio(s):
        rho = np.clip(s * np.array(PAPER_RATIOS), 1.0 / P, 1.0)
        kept = T + np.round(rho * P)
        return float(tofe_macs(cfg, stages, kept)[0] / dense_macs(cfg)), tuple(float(r) for r in rho)
    lo, hi = 0.0, 1.0 / min(PAPER_RATIOS)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid)[0] < target else (lo, mid)
    return ratio(hi)


def tofe_plan(quick):
    """{contender: (MACs ratio, keep ratios)} of the ToFe section ('dense' has (1.0, None))."""
    cfg, tcfg = get_config(dense_model(quick)), ToFeConfig(method="tofe")
    plan = {"dense": (1.0, None)}
    for target in TOFE_TARGETS:
        plan[f"tofe{round(100 * target)}"] = keep_ratios_for(cfg, tcfg.resolved_stages(cfg.depth), target)
    return plan


def _dense(contender, quick):
    name = dense_model(quick)
    if contender == "timm":
        torch, _ = torch_timm()
        model = timm_model(name)

        def timm_call(xt):
            with torch.inference_mode():
                return model(xt)
        return {f"batch{B}": (lambda xt=torch.from_numpy(images(B)): timm_call(xt))
                for B in batches("dense", quick)}
    cfg = get_config(name)
    params = freeze(init_params(cfg, np.random.default_rng(0), np.float32))     # as the CLI's inference
    dense = ToFeConfig(method="dense")
    fast = contender == "fast"
    ops = kernels.ops(fast, like=images(1))                      # None: the reference

    def forward(x):
        with kernels.thread_scope(fast, like=x):                 # as minitofe.predict does
            return tofe_inference(params, x, cfg, dense, ops=ops)
    return {f"batch{B}": (lambda x=images(B): forward(x)) for B in batches("dense", quick)}


def _tofe(contender, quick):
    cfg = get_config(dense_model(quick))
    tcfg = ToFeConfig(method="tofe")
    rng = np.random.default_rng(0)
    params = init_params(cfg, rng, np.float32)
    params.update(init_tofe_params(cfg, tcfg, rng, np.float32))
    freeze(params)
    _, ratios = tofe_plan(quick)[contender]
    use = ToFeConfig(method="dense") if ratios is None else tcfg
    ops = kernels.ops(True, like=images(1))

    def forward(x):
        with kernels.thread_scope(True, like=x):
            return tofe_inference(params, x, cfg, use, keep_ratios=ratios, ops=ops)
    return {f"batch{B}": (lambda x=images(B, seed=100 + B): forward(x)) for B in batches("tofe", quick)}


def token_case(quick):
    """x (B, N, C), kept indices (B, K) (the class token and half of the patches), rows (B, K, C)."""
    B, N, C = (4, 197, 192) if quick else (32, 197, 384)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, N, C)).astype(np.float32)
    K = 1 + (N - 1) // 2
    idx = np.sort(np.stack([np.concatenate([[0], 1 + rng.permutation(N - 1)[:K - 1]]) for _ in range(B)]), 1)
    return x, idx, x[:, :K].copy()


def _tokens(contender, quick):
    from ..tofe import tokens
    x, idx, rows = token_case(quick)
    K = idx.shape[1]
    if contender == "copy":                  # a plain copy of as many bytes as each operation writes
        return {"gather": lambda: x[:, :K].copy(), "scatter": lambda: x.copy()}
    impl = tokens if contender == "reference" else kernels.fast_kernels()
    if contender == "fast_first":            # the copy's own rows: the same bytes, read in one run per image
        idx = np.broadcast_to(np.arange(K), idx.shape)
    return {"gather": lambda: impl.gather_tokens(x, idx),
            "scatter": lambda: impl.scatter_tokens(x, rows, idx)}


def train_model():
    return "deit_tiny_patch16_224"


def _train(contender, quick):
    from ..nn.layers import cross_entropy_backward, cross_entropy_forward
    from ..nn.vit import vit_backward, vit_forward
    from ..heap import keep_freed_memory
    from ..train.optim import adamw_init, adamw_step
    cfg = get_config(train_model())
    B = 4 if quick else 32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 3, 224, 224)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, B)
    if contender == "torch":
        torch, timm = torch_timm()
        model = timm.create_model(train_model(), pretrained=False).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
        return {"step": torch_step}
    params = init_params(cfg, rng, np.float32)
    state = adamw_init(params)
    ops = kernels.ops(contender == "fast", like=x)
    keep_freed_memory()                                  # as minitofe.train.train does

    def step():
        logits, cache = vit_forward(params, x, cfg, ops=ops)
        _, c_ce = cross_entropy_forward(logits, y)
        _, grads = vit_backward(cross_entropy_backward(1.0, c_ce), cache)
        adamw_step(params, grads, state, lr=1e-4)
    return {"step": step}


BUILDERS = {"dense": _dense, "tofe": _tofe, "tokens": _tokens, "train": _train, "macs": build_macs}


def build(section, contender, quick, threads=None):
    """The calls to time for one contender of one section: {key: callable}; ``threads`` (the bench's
    ``--threads``) reaches the runtimes that take a thread count of their own (onnxruntime)."""
    if section not in BUILDERS:
        raise ValueError(f"unknown bench section {section!r}; known: {sorted(BUILDERS)}")
    if section == "dense" and contender in RUNTIMES:
        from .runtimes import build_runtime
        return build_runtime(contender, quick, threads)
    return BUILDERS[section](contender, quick)

"""hypothesis property tests of the mask and reordering invariants (docs/method.md "Invariants the tests hold"), each with
>= 200 examples on random small configs."""
import numpy as np
from hypothesis import given, settings, strategies as st

from minitofe.config import ViTConfig
from minitofe.nn.params import init_params
from minitofe.nn.vit import vit_forward
from minitofe.tofe.config import ToFeConfig
from minitofe.methods import inference as tofe_inference
from minitofe.methods import init_params as init_tofe_params
from minitofe.tofe.tokens import gather_tokens, indices_to_mask, mask_to_indices, scatter_tokens
from minitofe.methods import train_forward as tofe_train_forward
from minitofe.tofe.training import draw_noise

EXAMPLES = settings(max_examples=200, deadline=None)


@st.composite
def gather_case(draw):
    B = draw(st.integers(1, 3))
    N = draw(st.integers(1, 12))
    C = draw(st.integers(1, 4))
    T = draw(st.integers(0, min(2, N)))
    seed = draw(st.integers(0, 2 ** 31))
    rng = np.random.default_rng(seed)
    K = draw(st.integers(T, N))
    mask = np.zeros((B, N), dtype=bool)
    mask[:, :T] = True
    for b in range(B):
        mask[b, T + rng.permutation(N - T)[:K - T]] = True
    x = rng.standard_normal((B, N, C))
    if draw(st.booleans()):                                   # a non-contiguous view
        x = np.ascontiguousarray(np.concatenate([x, x], axis=2))[:, :, ::2]
    return x, mask, T, rng


@EXAMPLES
@given(gather_case())
def test_scatter_of_gather_restores_kept_rows_and_leaves_the_rest(case):
    x, mask, T, rng = case
    idx = mask_to_indices(mask)
    assert np.all(np.diff(idx, axis=1) > 0)                    # kept order is the original order
    assert np.all(idx[:, :T] == np.arange(T))                  # prefix tokens come first, always kept
    assert np.array_equal(indices_to_mask(idx, x.shape[1]), mask)
    assert np.array_equal(mask.sum(axis=1), np.full(x.shape[0], idx.shape[1]))  # mask sums == counts
    rows = gather_tokens(x, idx)
    base = rng.standard_normal(x.shape)
    out = scatter_tokens(base, rows, idx)
    assert np.array_equal(out[mask], x[mask])                  # kept rows restored bit for bit
    assert np.array_equal(out[~mask], base[~mask])             # the others untouched
    assert np.array_equal(scatter_tokens(x, gather_tokens(x, idx), idx), x)
    full = mask_to_indices(np.ones_like(mask))
    assert np.array_equal(gather_tokens(x, full), x)           # keep-all gather is the identity


@st.composite
def model_case(draw, methods=("tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative", "idle", "evit-drop")):
    depth = draw(st.integers(2, 4))
    C = draw(st.sampled_from([8, 12]))
    H = draw(st.sampled_from([h for h in (1, 2, 4) if C % h == 0]))
    distilled = draw(st.booleans())
    cfg = ViTConfig(img_size=draw(st.sampled_from([4, 6])), patch_size=2, in_chans=draw(st.integers(1, 2)),
                    num_classes=3, embed_dim=C, depth=depth, num_heads=H, mlp_ratio=2.0,
                    distilled=distilled, init_values=draw(st.sampled_from([None, 0.5])))
    stages = tuple(sorted(draw(st.sets(st.integers(0, depth - 1), min_size=1, max_size=3))))
    ratios = tuple(draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])) for _ in stages)
    tcfg = ToFeConfig(method=draw(st.sampled_from(methods)), stages=stages, keep_ratios=ratios,
                      alpha=0.0, beta=0.0, fuse_frozen=draw(st.booleans()),    # read by tofe, -identity, -uniform
                      last_stage=draw(st.sampled_from(["approximate", "drop"])))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(cfg, rng).items()}
    params.update({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_tofe_params(cfg, tcfg, rng).items()})
    B = draw(st.integers(1, 3))
    images = rng.standard_normal((B, cfg.in_chans, cfg.img_size, cfg.img_size))
    return cfg, tcfg, params, images, rng


def _backbone(params):
    return {k: v for k, v in params.items() if not k.startswith("tofe.")}


@EXAMPLES
@given(model_case())
def test_keep_all_equals_dense_exactly(case):
    cfg, tcfg, params, images, _ = case
    dense, _ = vit_forward(_backbone(params), images, cfg)
    ones = tuple(1.0 for _ in tcfg.keep_ratios)
    logits, info = tofe_inference(params, images, cfg, tcfg, keep_ratios=ones)    # topk with K = P
    assert np.array_equal(logits, dense)
    for kept, frozen in zip(info["kept"], info["frozen"]):
        assert kept.all() and not frozen.any()
    if tcfg.learned_selector:                                  # training forward with an all-keep mask
        noise = [np.zeros((images.shape[0], cfg.num_patches, 2)) for _ in tcfg.keep_ratios]
        for s in range(len(noise)):
            noise[s][..., 0] = 1e6                             # forces "keep" everywhere
        out, _ = tofe_train_forward(params, images, np.zeros(images.shape[0], int), cfg, tcfg, noise)
        assert np.array_equal(out["logits"], dense)


@EXAMPLES
@given(model_case(methods=("tofe", "tofe-identity", "tofe-uniform", "tofe-cumulative")))
def test_masked_training_forward_equals_gather_inference(case):
    cfg, tcfg, params, images, rng = case
    B, T = images.shape[0], cfg.num_prefix_tokens
    noise = draw_noise(rng, cfg, tcfg, B, np.float64)
    out, _ = tofe_train_forward(params, images, np.zeros(B, int), cfg, tcfg, noise)
    masks = [m[:, T:] > 0.5 for m in out["masks"]]
    for m in out["masks"]:
        assert np.all(m[:, :T] == 1.0) and set(np.unique(m)) <= {0.0, 1.0}   # prefix kept, hard 0/1
    logits, info = tofe_inference(params, images, cfg, tcfg, kept_masks=masks)
    assert np.max(np.abs(logits - out["logits"])) <= 1e-12
    for key in ("kept", "frozen", "reused"):                   # the same records in both modes
        assert all(np.array_equal(a, b) for a, b in zip(out[key], info[key]))
    for s, kept in enumerate(masks):
        keep_rows = np.concatenate([np.ones((B, T), bool), kept], axis=1)
        diff = np.abs(info["stage_outputs"][s] - out["stage_outputs"][s])[keep_rows]
        assert diff.size == 0 or diff.max() <= 1e-12
        if tcfg.reuses_tokens:                                 # frozen tokens: same approximator output
            assert np.max(np.abs(info["stage_outputs"][s] - out["stage_outputs"][s]), initial=0) <= 1e-12


@EXAMPLES
@given(model_case(methods=("tofe", "tofe-identity", "tofe-cumulative")))
def test_threshold_equals_each_image_alone(case):
    cfg, tcfg, params, images, _ = case
    tcfg = tcfg.replace(inference="threshold")
    logits, info = tofe_inference(params, images, cfg, tcfg)
    for b in range(images.shape[0]):
        alone, info_b = tofe_inference(params, images[b:b + 1], cfg, tcfg)
        assert np.max(np.abs(alone[0] - logits[b])) <= 1e-12
        for s in range(len(info["kept"])):
            assert np.array_equal(info_b["kept"][s][0], info["kept"][s][b])


@EXAMPLES
@given(model_case())
def test_inference_records_are_consistent(case):
    cfg, tcfg, params, images, _ = case
    logits, info = tofe_inference(params, images, cfg, tcfg)
    P = cfg.num_patches
    ever_frozen = np.zeros((images.shape[0], P), bool)
    for s, ratio in enumerate(tcfg.keep_ratios):
        kept, frozen, reused = info["kept"][s], info["frozen"][s], info["reused"][s]
        assert not (kept & frozen).any()
        assert np.array_equal(reused, kept & ever_frozen)
        if tcfg.reuses_tokens:
            assert np.array_equal(kept | frozen, np.ones_like(kept))
            assert np.all(kept.sum(axis=1) == int(round(ratio * P)))
        else:                                                  # a dropped token never returns
            assert not reused.any() and not frozen.any()
            if s:
                assert not (kept & info["dropped"][s - 1]).any()
        ever_frozen |= frozen
    assert np.all(info["macs"] > 0) and np.all(np.isfinite(logits))

"""The class token's attention as a training-free token scorer (methods ``idle`` and ``evit-drop``;
docs/method.md, "Baselines").

The class token's attention to each patch in the stage's first block, averaged over heads, with every
candidate token as a key (EViT's score). For ``idle`` the candidates are all tokens, frozen ones
included, so a frozen token can be reused; for ``evit-drop`` they are the tokens still alive. [minitofe:
computed with the stage's first block so frozen tokens are scored too; its MACs are counted by
``tofe.macs.cls_attention_macs``.] ``CLS_ATTENTION`` is the ``tofe.scoring.Scorer`` both hand to
ToFe's inference loop.
"""
from ..nn.layers import layernorm_forward, softmax_forward
from ..tofe.macs import cls_attention_macs
from ..tofe.scoring import Scorer


def cls_attention_scores(x, params, block_prefix, cfg):
    """x: (B, n, C) -> (B, n - T): mean over heads of the class token's attention to each patch, every
    token given as a key."""
    B, n, C = x.shape
    H, hs, T = cfg.num_heads, C // cfg.num_heads, cfg.num_prefix_tokens
    h, _ = layernorm_forward(x, params[block_prefix + "norm1.weight"], params[block_prefix + "norm1.bias"])
    w = params[block_prefix + "attn.qkv.weight"]                      # (3C, C): rows [q; k; v]
    b = params.get(block_prefix + "attn.qkv.bias")
    q = h[:, 0] @ w[:C].T                                             # (B, C) class-token query
    k = h @ w[C:2 * C].T                                              # (B, n, C)
    if b is not None:
        q = q + b[:C]
        k = k + b[C:2 * C]
    q = q.reshape(B, H, 1, hs)
    k = k.reshape(B, n, H, hs).transpose(0, 2, 3, 1)                   # (B, H, hs, n)
    s = (q @ k)[:, :, 0] * hs ** -0.5                                 # (B, H, n)
    attn, _ = softmax_forward(s)
    return attn.mean(axis=1)[:, T:]


CLS_ATTENTION = Scorer(cls_attention_scores, cls_attention_macs)

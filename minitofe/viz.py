"""Pictures of kept, frozen, reused and dropped tokens, stage by stage (Pillow only).

One row per image: the input, then one panel per stage in which every patch is drawn as

    kept     the image as it is                       (the stage's blocks process it)
    frozen   tinted blue                              (skipped; the approximator updates it)
    reused   tinted orange with an outline            (kept now, frozen at an earlier stage)
    dropped  nearly black                             (evit / dynamicvit: gone for good)

``info`` is what ``tofe_inference`` / ``minitofe.predict`` return.
"""
import os

import numpy as np

COLORS = {"frozen": (40, 90, 220), "reused": (255, 150, 20), "dropped": (0, 0, 0)}
ALPHA = {"frozen": 0.55, "reused": 0.35, "dropped": 0.85}


def _to_rgb_uint8(image):
    """(C, H, W) or (H, W) array of any range -> (H, W, 3) uint8, min-max scaled per image."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    a = (255 * a).round().astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def _panel(rgb, grid, patch, states, scale):
    """rgb (H, W, 3) uint8; states: dict name -> (P,) bool -> PIL image of the tinted, upscaled panel."""
    from PIL import Image, ImageDraw
    out = rgb.astype(np.float64).copy()
    for name in ("frozen", "reused", "dropped"):
        mask = states.get(name)
        if mask is None:
            continue
        for p in np.nonzero(mask)[0]:
            r, c = divmod(int(p), grid)
            sl = (slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
            out[sl] = (1 - ALPHA[name]) * out[sl] + ALPHA[name] * np.array(COLORS[name])
    img = Image.fromarray(out.round().astype(np.uint8)).resize(
        (rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    if states.get("reused") is not None:
        draw = ImageDraw.Draw(img)
        step = patch * scale
        for p in np.nonzero(states["reused"])[0]:
            r, c = divmod(int(p), grid)
            draw.rectangle([c * step, r * step, (c + 1) * step - 1, (r + 1) * step - 1],
                           outline=COLORS["reused"], width=max(1, scale // 4))
    return img


def render_token_maps(images, info, cfg, titles=None, scale=8):
    """images: (B, Cin, H, W) (any range; shown min-max scaled) -> a PIL image, one row per image."""
    from PIL import Image, ImageDraw, ImageFont
    B = images.shape[0]
    S = len(info["kept"])
    grid, patch = cfg.grid_size, cfg.patch_size
    W, H = cfg.img_size * scale, cfg.img_size * scale
    pad, head, foot, label_w = 8, 26, 40, 0
    font = ImageFont.load_default(size=14) if _font_sizes_supported() else ImageFont.load_default()
    canvas = Image.new("RGB", (pad + (S + 1) * (W + pad), head + B * (H + pad + 18) + foot), "white")
    draw = ImageDraw.Draw(canvas)
    stages = info.get("stages", list(range(S)))
    for col, text in enumerate(["input"] + [f"stage {s + 1} (block {stages[s]})" for s in range(S)]):
        draw.text((pad + col * (W + pad), 6), text, fill="black", font=font)
    for b in range(B):
        rgb = _to_rgb_uint8(images[b])
        y = head + b * (H + pad + 18)
        canvas.paste(Image.fromarray(rgb).resize((W, H), Image.NEAREST), (pad, y))
        for s in range(S):
            states = {"frozen": info["frozen"][s][b] & ~info["reused"][s][b],
                      "reused": info["reused"][s][b],
                      "dropped": info["dropped"][s][b] if "dropped" in info else None}
            canvas.paste(_panel(rgb, grid, patch, states, scale), (pad + (s + 1) * (W + pad), y))
            n_kept = int(info["kept"][s][b].sum())
            draw.text((pad + (s + 1) * (W + pad), y + H + 2),
                      f"kept {n_kept}, reused {int(info['reused'][s][b].sum())}",
                      fill="black", font=font)
        if titles is not None:
            draw.text((pad, y + H + 2), str(titles[b]), fill="black", font=font)
    x = pad
    ly = canvas.height - foot + 10
    for name in ("kept", "frozen", "reused", "dropped"):
        color = COLORS.get(name, (220, 220, 220))
        draw.rectangle([x, ly, x + 16, ly + 16], fill=color, outline="black")
        draw.text((x + 22, ly), name, fill="black", font=font)
        x += 110
    return canvas


def _font_sizes_supported():
    from PIL import features
    return features.check("freetype2")


def save_token_maps(path, images, info, cfg, titles=None, scale=8):
    """Render and write a PNG; returns the path. A missing folder or a folder as ``path`` is a ValueError."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path}: cannot write the picture there (is a directory)")
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: cannot write the picture there (folder {folder} does not exist)")
    render_token_maps(images, info, cfg, titles, scale).save(path)
    return path

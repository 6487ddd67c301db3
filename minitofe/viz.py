"""Pictures of kept, frozen, reused and dropped tokens, stage by stage (Pillow only).

One row per image: the input, then one panel per stage in which every patch is drawn as

    kept     the image as it is                       (the stage's blocks process it)
    frozen   tinted blue                              (skipped; the approximator updates it)
    reused   tinted orange with an outline            (kept now, frozen at an earlier stage)
    dropped  tinted purple with a cross                (drop methods: gone for good)

Layout: the legend (only the states that occur) at the top, then for every image a caption line above
its row (the row's title, e.g. "pred: Shirt (true: Shirt)", and per stage the kept / frozen / reused /
dropped counts), then the row.

``info`` is what ``tofe_inference`` / ``minitofe.predict`` return.
"""
import os

import numpy as np

COLORS = {"frozen": (40, 90, 220), "reused": (255, 150, 20), "dropped": (150, 20, 110)}
ALPHA = {"frozen": 0.55, "reused": 0.35, "dropped": 0.8}


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
        (rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)
    draw, step, width = ImageDraw.Draw(img), patch * scale, max(1, scale // 4)
    for name in ("reused", "dropped"):
        if states.get(name) is None:
            continue
        for p in np.nonzero(states[name])[0]:
            r, c = divmod(int(p), grid)
            box = [c * step, r * step, (c + 1) * step - 1, (r + 1) * step - 1]
            if name == "reused":
                draw.rectangle(box, outline=COLORS["reused"], width=width)
            else:                                 # a cross: dropped is never mistaken for black background
                draw.line(box, fill=(235, 235, 235), width=1)
                draw.line([box[0], box[3], box[2], box[1]], fill=(235, 235, 235), width=1)
    return img


def _states(info, s, b):
    dropped = info["dropped"][s][b] if "dropped" in info else None
    return {"frozen": info["frozen"][s][b] & ~info["reused"][s][b], "reused": info["reused"][s][b],
            "dropped": dropped if dropped is not None and dropped.any() else None}


def _stage_caption(info, s, b):
    """e.g. "kept 60 (reused 56), frozen 136"; states that do not occur are left out."""
    kept, reused = int(info["kept"][s][b].sum()), int(info["reused"][s][b].sum())
    text = f"kept {kept}" + (f" (reused {reused})" if reused else "")
    frozen = int(info["frozen"][s][b].sum())
    dropped = int(info["dropped"][s][b].sum()) if "dropped" in info else 0
    return text + (f", frozen {frozen}" if frozen else "") + (f", dropped {dropped}" if dropped else "")


def _fit(draw, text, font, width):
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render_token_maps(images, info, cfg, titles=None, scale=8):
    """images: (B, Cin, H, W) (any range; shown min-max scaled) -> a PIL image, one row per image.
    ``titles``: one caption per image, shown above its input panel."""
    from PIL import Image, ImageDraw, ImageFont
    B, S = images.shape[0], len(info["kept"])
    W = H = cfg.img_size * scale
    pad, line = 8, 20
    font = ImageFont.load_default(size=12) if _font_sizes_supported() else ImageFont.load_default()
    legend = ["kept"] + [name for name in ("frozen", "reused", "dropped")
                         if name in info and any(m.any() for m in info[name])]
    top = 2 * line + pad                                   # legend line, column headers
    row_h = line + H + pad                                 # caption line above each row
    canvas = Image.new("RGB", (pad + (S + 1) * (W + pad), top + B * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for name in legend:
        draw.rectangle([x, 4, x + 14, 18], fill=COLORS.get(name, (235, 235, 235)), outline="black")
        draw.text((x + 20, 4), name, fill="black", font=font)
        x += 95
    stages = info.get("stages", list(range(S)))
    for col, text in enumerate(["input"] + [f"stage {s + 1} (from block {stages[s]})" for s in range(S)]):
        draw.text((pad + col * (W + pad), line + 4), text, fill="black", font=font)
    for b in range(B):
        rgb = _to_rgb_uint8(images[b])
        y = top + b * row_h
        if titles is not None:
            draw.text((pad, y + 2), _fit(draw, str(titles[b]), font, W), fill="black", font=font)
        canvas.paste(Image.fromarray(rgb).resize((W, H), Image.Resampling.NEAREST), (pad, y + line))
        for s in range(S):
            x = pad + (s + 1) * (W + pad)
            draw.text((x, y + 2), _fit(draw, _stage_caption(info, s, b), font, W), fill="black", font=font)
            panel = _panel(rgb, cfg.grid_size, cfg.patch_size, _states(info, s, b), scale)
            canvas.paste(panel, (x, y + line))
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

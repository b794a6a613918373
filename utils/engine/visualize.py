"""Colourised predictions: palette, overlay and an RGB | depth | prediction panel, with a legend.

The palette is upstream's `utils/nyucmap.npy` (the PASCAL VOC colour map), generated instead of
shipped; class k gets colour k as upstream. All images are uint8 in RGB order.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from local_configs._base_ import IGNORE_LABEL
from utils.errors import UserError

PANEL_GAP = 4  # white pixels between the panel's images


def nyu_palette(n=256):
    """(n, 3) uint8 colours: the class index's bits spread over the high bits of R, G and B."""
    index = np.arange(n)
    palette = np.zeros((n, 3), np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


PALETTE = nyu_palette()


def colorize(label):
    """HxW class indices (0..255) -> HxWx3 uint8 colours."""
    return PALETTE[np.asarray(label, np.int64)]


def overlay(rgb, label, alpha=0.5, ignore_index=IGNORE_LABEL):
    """Blend the colourised `label` over `rgb`; pixels equal to `ignore_index` keep the image."""
    rgb, ignored = np.asarray(rgb, np.float32), np.asarray(label) == ignore_index
    blended = (1 - alpha) * rgb + alpha * colorize(label).astype(np.float32)
    blended[ignored] = rgb[ignored]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def panel(rgb, depth, label):
    """RGB | depth (grey, dark = near) | colourised label, side by side with white gaps."""
    depth = np.asarray(depth, np.uint8)
    if depth.ndim == 2:
        depth = np.repeat(depth[..., None], 3, axis=2)
    gap = np.full((rgb.shape[0], PANEL_GAP, 3), 255, np.uint8)
    return np.concatenate([np.asarray(rgb, np.uint8), gap, depth, gap, colorize(label)], axis=1)


def legend(label, class_names, width):
    """A white (H, width, 3) strip: swatch and name of each class in `label`, most frequent first."""
    label = np.asarray(label, np.int64)
    ids, counts = np.unique(label[label != IGNORE_LABEL], return_counts=True)
    font = ImageFont.load_default(size=12 if width < 400 else 16)
    line = font.getbbox("Ag")[3] + 4
    pad, swatch = 4, line - 6
    entries, x, y = [], pad, pad
    for index in ids[np.argsort(-counts, kind="stable")]:
        name = class_names[index] if index < len(class_names) else f"class {index}"
        entry_width = swatch + 4 + int(font.getlength(name)) + 10
        if x > pad and x + entry_width > width:  # wrap to the next row
            x, y = pad, y + line
        entries.append((x, y, index, name))
        x += entry_width
    strip = Image.new("RGB", (width, y + line + pad), "white")
    draw = ImageDraw.Draw(strip)
    for x, y, index, name in entries:
        # grey outline: wall (index 0) is black and other colours are pale
        draw.rectangle([x, y + 3, x + swatch, y + 3 + swatch], fill=tuple(int(c) for c in PALETTE[index]),
                       outline=(128, 128, 128))
        draw.text((x + swatch + 4, y + 1), name, fill="black", font=font)
    return np.asarray(strip)


def with_legend(image, label, class_names):
    """`image` with the legend of `label` below it."""
    return np.concatenate([image, legend(label, class_names, image.shape[1])], axis=0)


def save_prediction(out_dir, name, rgb, depth, pred, class_names=(), alpha=0.5):
    """Write `<name>.png` (palette PNG of the HxW class indices `pred`), `<name>_overlay.png` and
    `<name>_panel.png` from uint8 `rgb` (HxWx3) and `depth` (HxW); returns the written paths."""
    base = os.path.join(out_dir, name)
    label = Image.fromarray(np.asarray(pred, np.uint8))
    label.putpalette(PALETTE.tobytes())  # turns the grey image into a palette ("P") image
    outputs = {
        f"{base}.png": label,
        f"{base}_overlay.png": Image.fromarray(with_legend(overlay(rgb, pred, alpha), pred, class_names)),
        f"{base}_panel.png": Image.fromarray(with_legend(panel(rgb, depth, pred), pred, class_names)),
    }
    try:
        os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
        for path, image in outputs.items():
            image.save(path)
    except OSError as err:
        reason = err.strerror or err
        raise UserError(f"cannot write predictions to {out_dir}: {reason}; choose another output folder") from None
    return list(outputs)

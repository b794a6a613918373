"""Image preprocessing, identical to upstream's `utils/transforms.py` and `TrainPre`/`ValPre` (its dataloader).

Random draws come from `random` (or an `rng` of its type) in upstream's order, so seeding reproduces
upstream's augmentation draw for draw. Helpers take HWC numpy arrays.
"""
import random

import cv2
import numpy as np

from local_configs._base_ import IGNORE_LABEL

DEPTH_MEAN = (0.48, 0.48, 0.48)
DEPTH_STD = (0.28, 0.28, 0.28)
SUN_PAD_SHAPE = (531, 730)  # the largest SUNRGBD image; upstream --pad_SUNRGBD pads to it
# matplotlib's 9-step "Greys_r": the tone curve of the official depth PNGs (`plt.imsave(png, depth, cmap="Greys_r")`)
GREYS_R_POINTS = np.array([0, 37, 82, 115, 150, 189, 217, 240, 255]) / 255.0
GREYS_R_LUT = (np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 9), GREYS_R_POINTS) * 255).astype(np.uint8)


def normalize(img, mean, std):
    """`(img / 255 - mean) / std` per channel, in float64 like upstream, returned as float32."""
    img = img.astype(np.float64) / 255.0
    return ((img - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)).astype(np.float32)


def depth_to_uint8(depth):
    """Depth in any unit -> the official 8-bit convention (0 nearest .. 255 farthest), as the authors'
    `plt.imsave` made it: per-image min-max, 256 bins, the `Greys_r` tone curve. Pixels without a
    measurement (<= 0, NaN/inf) become 255: sensor holes mostly lie behind their surroundings."""
    depth = np.asarray(depth, np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    out = np.full(depth.shape, 255, np.uint8)
    if not valid.any():
        return out
    lo, hi = depth[valid].min(), depth[valid].max()
    x = (depth[valid] - lo) / (hi - lo) if hi > lo else np.zeros(int(valid.sum()))
    out[valid] = GREYS_R_LUT[np.minimum((x * 256).astype(np.int64), 255)]
    return out


def depth_mean_std(C):
    """Depth mean/std: 0.48/0.28 for a grey depth map, else the RGB ones. Upstream's `ValPre` always uses
    0.48/0.28; every shipped config is single-channel, where both agree, so train and eval share this rule."""
    if C.x_is_single_channel:
        return DEPTH_MEAN, DEPTH_STD
    return C.norm_mean, C.norm_std


def random_mirror(rgb, gt, modal_x, rng=random):
    """Flip all three images horizontally with probability 1/2 (one `rng.random()` draw)."""
    if rng.random() >= 0.5:
        rgb, gt, modal_x = cv2.flip(rgb, 1), cv2.flip(gt, 1), cv2.flip(modal_x, 1)
    return rgb, gt, modal_x


def random_scale(rgb, gt, modal_x, scales, rng=random):
    """Resize by a factor drawn with `rng.choice(scales)`; nearest for the label (no new values)."""
    scale = rng.choice(scales)
    size = (int(rgb.shape[1] * scale), int(rgb.shape[0] * scale))  # cv2 wants (width, height)
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    gt = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)
    modal_x = cv2.resize(modal_x, size, interpolation=cv2.INTER_LINEAR)
    return rgb, gt, modal_x, scale


def random_crop_pos(image_shape, crop_shape, rng=random):
    """Top-left corner of a random crop. Upstream's inclusive `randint(0, h - crop_h + 1)` can start one
    past the last full window (`crop_pad` pads that crop back); kept for draw-for-draw parity."""
    (h, w), (crop_h, crop_w) = image_shape[:2], crop_shape
    pos_h = rng.randint(0, h - crop_h + 1) if h > crop_h else 0
    pos_w = rng.randint(0, w - crop_w + 1) if w > crop_w else 0
    return pos_h, pos_w


def crop_pad(img, pos, crop_shape, value):
    """Crop `crop_shape` at `pos`, then pad what is missing with `value`, centred."""
    crop = img[pos[0] : pos[0] + crop_shape[0], pos[1] : pos[1] + crop_shape[1], ...]
    pad_h, pad_w = crop_shape[0] - crop.shape[0], crop_shape[1] - crop.shape[1]
    top, left = pad_h // 2, pad_w // 2
    return cv2.copyMakeBorder(crop, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=value)


def pad_bottom_right(img, shape, value):
    """Pad `img` at the bottom and right to exactly `shape` with `value`."""
    pad_h, pad_w = shape[0] - img.shape[0], shape[1] - img.shape[1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"image of size {img.shape[:2]} is larger than the pad size {tuple(shape)}")
    return cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=value)


def to_chw(img):
    """HWC -> contiguous CHW."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def train_transform(rgb, gt, modal_x, C, rng=random):
    """Upstream `TrainPre` -> (rgb CHW float32, gt HW uint8, depth CHW float32). Padding follows
    normalisation, so padded pixels are 0 (the mean), padded labels 255."""
    rgb, gt, modal_x = random_mirror(rgb, gt, modal_x, rng)
    if C.train_scale_array is not None:
        rgb, gt, modal_x, _ = random_scale(rgb, gt, modal_x, C.train_scale_array, rng)
    rgb = normalize(rgb, C.norm_mean, C.norm_std)
    modal_x = normalize(modal_x, *depth_mean_std(C))
    crop_shape = (C.image_height, C.image_width)
    pos = random_crop_pos(rgb.shape, crop_shape, rng)
    rgb = crop_pad(rgb, pos, crop_shape, 0)
    gt = crop_pad(gt, pos, crop_shape, IGNORE_LABEL)
    modal_x = crop_pad(modal_x, pos, crop_shape, 0)
    return to_chw(rgb), np.ascontiguousarray(gt), to_chw(modal_x)


def eval_transform(rgb, gt, modal_x, C, pad_sunrgbd=None):
    """Upstream `ValPre`, returning as `train_transform`; `gt` may be None. The SUNRGBD pad (`pad_sunrgbd`,
    default `C.pad_SUNRGBD`) precedes normalisation, so padded pixels become -mean/std, not 0."""
    if C.pad_SUNRGBD if pad_sunrgbd is None else pad_sunrgbd:
        rgb = pad_bottom_right(rgb, SUN_PAD_SHAPE, 0)
        modal_x = pad_bottom_right(modal_x, SUN_PAD_SHAPE, 0)
        gt = None if gt is None else pad_bottom_right(gt, SUN_PAD_SHAPE, IGNORE_LABEL)
    rgb = normalize(rgb, C.norm_mean, C.norm_std)
    modal_x = normalize(modal_x, *depth_mean_std(C))
    return to_chw(rgb), gt, to_chw(modal_x)

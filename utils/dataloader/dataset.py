"""Datasets: labelled RGB-D splits (`RGBXDataset`, upstream's `utils/dataloader/RGBXDataset.py`: the same
arrays for the same files and random draws) and unlabelled RGB+depth input for inference. Both are
`jittor.dataset.Dataset`s (`len()` counts batches; each MPI rank reads its share); problems with the
user's files raise `UserError` naming the file and what to do."""
import os
import random

import cv2
import numpy as np
import jittor as jt
from jittor.dataset import Dataset
from PIL import Image

from local_configs._base_ import IGNORE_LABEL
from utils.dataloader.transforms import SUN_PAD_SHAPE, depth_to_uint8, eval_transform, train_transform
from utils.errors import UserError
from utils.jittor_private import seed_shuffle
from utils.synthetic.manifest import check_synthetic_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DATASET_HELP = """\
Get NYUDepthv2 / SUNRGBD in the pre-processed layout of the official DFormer README
(https://github.com/VCIP-RGBD/DFormer, "Download Datasets"):
  Google Drive  https://drive.google.com/drive/folders/1RIa9t7Wi4krq0YcgjR3EWBxWWJedrYUl
  OneDrive      https://mailnankaieducn-my.sharepoint.com/:f:/g/personal/bowenyin_mail_nankai_edu_cn/EqActCWQb_pJoHpxvPh4xRgBMApqGAvUjid-XK3wcl08Ug
  BaiduNetdisk  https://pan.baidu.com/s/1-CEL88wM5DYOFHOVjzRRhA?pwd=ij7q
and unpack (or symlink: ln -s /path/to/data datasets) them so that the folder looks like
  {root}/{rgb}/<name>{rgb_ext}   {root}/{x}/<name>{x_ext}   {root}/{gt}/<name>{gt_ext}
  {root}/train.txt  {root}/test.txt   (one sample per line, e.g. "{rgb}/<name>{rgb_ext}")
Depth maps are grey PNGs, 0 nearest .. 255 farthest; labels are grey PNGs, 0 unlabelled, 1..K classes.
To try the code without downloading anything use the synthetic data set:
  python -m utils.synthetic --config local_configs.Synthetic.DFormer_Tiny   (configs local_configs.Synthetic.*)"""


def dataset_help(C):
    """The download and layout instructions, filled in with the config's folders and formats."""
    return DATASET_HELP.format(root=C.dataset_path, rgb=C.rgb_folder, x=C.x_folder, gt=C.gt_folder,
                               rgb_ext=C.rgb_format, x_ext=C.x_format, gt_ext=C.gt_format)


def file_problem(path):
    """None for a readable image file, else "missing" or "truncated". OpenCV decodes a truncated JPEG silently
    (the rest grey), so a JPEG or PNG without its end marker near the end goes to Pillow, which refuses it."""
    if not os.path.isfile(path):
        return "missing"
    with open(path, "rb") as file:
        head = file.read(8)
        file.seek(max(0, os.path.getsize(path) - 4096))
        tail = file.read()
    is_jpeg, is_png = head.startswith(b"\xff\xd8"), head.startswith(b"\x89PNG")
    if not (is_jpeg or is_png) or (b"\xff\xd9" if is_jpeg else b"IEND") in tail:
        return None  # complete, or a format OpenCV checks itself
    try:
        with Image.open(path) as image:
            image.load()
    except OSError:
        return "truncated"
    return None


def check_files(paths, where, advice):
    """Fail before any work, not mid-epoch in a loader worker, if one of `paths` is missing or truncated."""
    problems = [(path, problem) for path in paths for problem in [file_problem(path)] if problem]
    if problems:
        shown = "\n  ".join(f"{path} ({problem})" for path, problem in problems[:5])
        more = "\n  ..." if len(problems) > 5 else ""
        raise UserError(f"{len(problems)} file(s) {where} are missing or truncated:\n  {shown}{more}\n{advice}")


def imread(path, flags, kind):
    """`cv2.imread`, raising `UserError` if the file is missing, truncated or cannot be decoded."""
    problem = file_problem(path)
    if problem == "missing":
        raise UserError(f"{kind} file not found: {path}")
    if problem:
        raise UserError(f"{kind} file {path} is truncated (an interrupted copy or download?); replace it")
    img = cv2.imread(path, flags)
    if img is None:
        raise UserError(f"cannot read {kind} file {path}: not an image OpenCV can decode; replace it")
    return img


def read_rgb(path, bgr=True):
    """An 8-bit image as HxWx3 uint8, BGR (as upstream) unless `bgr=False`; grey and BGRA files too."""
    img = imread(path, cv2.IMREAD_UNCHANGED, "RGB")
    if img.dtype != np.uint8:
        raise UserError(f"RGB file {path} is {img.dtype}, expected an 8-bit image; convert it")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img if bgr else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path, strict=False):
    """A depth map as HxW uint8, 0 nearest .. 255 farthest: 8-bit files as upstream reads them, 16-bit
    and float ones through `depth_to_uint8`. `strict` refuses colour images (a visualisation?)."""
    depth = imread(path, cv2.IMREAD_ANYDEPTH, "depth")
    if depth.dtype != np.uint8:
        return depth_to_uint8(depth)
    if strict:
        full = imread(path, cv2.IMREAD_UNCHANGED, "depth")
        if full.ndim == 3 and full.shape[2] >= 3 and not (full[..., :3] == full[..., :1]).all():
            raise UserError(f"depth file {path} is a colour image; expected a grey depth map (8-bit, 0 nearest .. "
                            "255 farthest) or a 16-bit PNG of raw depth (e.g. millimetres, 0 = no measurement)")
    return depth


def read_label(path, gt_transform):
    """A label map as HxW uint8; `gt_transform` shifts k to k-1 as upstream (0, unlabelled, wraps to 255)."""
    gt = imread(path, cv2.IMREAD_GRAYSCALE, "label")
    return gt - np.uint8(1) if gt_transform else gt


def check_same_size(shapes_by_path):
    """Raise `UserError` unless all images have the same height and width."""
    sizes = {path: tuple(shape[:2]) for path, shape in shapes_by_path.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{path} is {h}x{w}" for path, (h, w) in sizes.items())
        raise UserError(f"RGB, depth (and label) must have the same size: {listing}; align or resize them")


def check_label_values(gt, num_classes, gt_transform, path):
    """Raise `UserError` if `gt` has values outside [0, num_classes) other than the ignore 255."""
    bad = np.unique(gt[(gt >= num_classes) & (gt != IGNORE_LABEL)])
    if bad.size:
        stored = (bad.astype(np.int64) + 1) % 256 if gt_transform else bad
        valid = f"1..{num_classes} (0 = unlabelled)" if gt_transform else f"0..{num_classes - 1} (255 = ignore)"
        raise UserError(f"label file {path} contains values {stored.tolist()} but the config has {num_classes} "
                        f"classes, so stored labels must be {valid}; fix the labels or C.class_names / C.gt_transform")


def entry_name(line, rgb_folder):
    """The sample name of one list-file line: "RGB/<name>.jpg", "<name>.jpg" or a bare "<name>"."""
    entry = line.split()[0].removeprefix(rgb_folder.rstrip("/") + "/")
    stem, ext = os.path.splitext(entry)
    return stem if ext.lower() in IMAGE_EXTENSIONS else entry


def read_list(list_file, rgb_folder):
    """The sample names of a list file (blank lines skipped)."""
    with open(list_file) as f:
        names = [entry_name(line, rgb_folder) for line in f if line.strip()]
    if not names:
        raise UserError(f"list file {list_file} is empty; it should name one sample per line, e.g. RGB/<name>.jpg")
    return names


class RGBXDataset(Dataset):
    """A labelled split ("train": train.txt, augmented; "val"/"test": test.txt) laid out like NYUDepthv2.

    Items: `data` (3, H, W) float32 normalised RGB (BGR unless `C.bgr_input` is False), `modal_x` (3, H, W)
    float32 normalised depth, `label` (H, W) int32 with 255 ignored, `fn` the sample name. A train epoch has
    by default upstream's `C.batch_size * niters_per_epoch` samples (the list repeated, then random fill).
    Augmentation draws from Python's `random` in upstream's order until `set_epoch(seed)`; after it,
    item `index` draws from its own generator seeded with (seed, index), whichever worker reads it.
    """

    def __init__(self, C, split, batch_size=None, num_workers=None, file_length=None):
        super().__init__()
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
        self.C = C
        self.is_train = split == "train"
        self.epoch_seed = None
        if C.dataset_name == "Synthetic":
            check_synthetic_dataset(C)  # stale data (another image size, ...) stops here
        if not os.path.isdir(C.dataset_path):
            raise UserError(f"dataset folder not found: {C.dataset_path} (C.dataset_path)\n{dataset_help(C)}")
        self.list_file = ((C.train_source if self.is_train else C.eval_source)
                          or os.path.join(C.dataset_path, "train.txt" if self.is_train else "test.txt"))
        if not os.path.isfile(self.list_file):
            raise UserError(f"list file not found: {self.list_file}\n{dataset_help(C)}")
        self.names = read_list(self.list_file, C.rgb_folder)
        count = "num_train_imgs" if self.is_train else "num_eval_imgs"
        if C.get(count) not in (None, len(self.names)):
            raise UserError(f"{self.list_file} lists {len(self.names)} samples but the config's {count} is {C[count]}: "
                            f"complete the list (or the download), or remove {count} from the config")
        self.niters_per_epoch = len(self.names) // C.batch_size + 1  # upstream's C.niters_per_epoch
        check_files([p for name in self.names for p in self.paths(name)], f"listed in {self.list_file}",
                    "Fix the list entries or add (copy again) the files.\n" + dataset_help(C))
        if file_length is None:
            file_length = C.batch_size * self.niters_per_epoch if self.is_train else len(self.names)
        self.set_attrs(
            total_len=file_length,
            # eval: one image per process (sizes may differ); Jittor needs batch >= world size
            batch_size=batch_size or (C.batch_size if self.is_train else jt.world_size),
            shuffle=self.is_train, drop_last=self.is_train,
            num_workers=C.num_workers if num_workers is None else num_workers,
        )

    def set_epoch(self, epoch_seed):
        """Seed this epoch's shuffle and augmentation from the int `epoch_seed` (workers fork again)."""
        self.epoch_seed = epoch_seed
        seed_shuffle(self, epoch_seed)
        self.reset()

    def paths(self, name):
        """(rgb, depth, label) file paths of sample `name`."""
        C = self.C
        return (os.path.join(C.dataset_path, C.rgb_folder, name + C.rgb_format),
                os.path.join(C.dataset_path, C.x_folder, name + C.x_format),
                os.path.join(C.dataset_path, C.gt_folder, name + C.gt_format))

    def name_at(self, index, np_rng=np.random):
        """Upstream's epoch order: the list repeated, then a random fill for the remainder."""
        n = len(self.names)
        if index < n * (self.total_len // n):
            return self.names[index % n]
        # upstream draws from torch's RNG; numpy's leaves Python's `random` (the augmentation's) untouched
        return self.names[np_rng.randint(n)]

    def read_sample(self, name):
        """Raw (rgb uint8 HxWx3 in model channel order, depth uint8 HxWx3, label uint8 HxW)."""
        C = self.C
        rgb_path, depth_path, gt_path = self.paths(name)
        try:
            rgb = read_rgb(rgb_path, bgr=C.bgr_input)
            depth = read_depth(depth_path)
            gt = read_label(gt_path, C.gt_transform)
            check_same_size({rgb_path: rgb.shape, depth_path: depth.shape, gt_path: gt.shape})
            check_label_values(gt, C.num_classes, C.gt_transform, gt_path)
        except UserError as err:
            raise UserError(f"{err}\n(sample {name!r} listed in {self.list_file})") from None
        too_big = rgb.shape[0] > SUN_PAD_SHAPE[0] or rgb.shape[1] > SUN_PAD_SHAPE[1]
        if not self.is_train and C.pad_SUNRGBD and too_big:
            raise UserError(f"{rgb_path} is {rgb.shape[0]}x{rgb.shape[1]}, larger than the SUNRGBD pad size "
                            f"{SUN_PAD_SHAPE[0]}x{SUN_PAD_SHAPE[1]}; evaluate without pad_SUNRGBD")
        return rgb, cv2.merge([depth, depth, depth]), gt

    def __getitem__(self, index):
        index = int(index)  # loader workers pass numpy integers, which `random.Random` refuses
        rng, np_rng = random, np.random
        if self.epoch_seed is not None:
            rng = random.Random((self.epoch_seed << 32) + index)
            np_rng = np.random.RandomState([self.epoch_seed % 2**32, index])
        name = self.name_at(index, np_rng)
        rgb, depth, gt = self.read_sample(name)
        rgb, gt, depth = (train_transform(rgb, gt, depth, self.C, rng) if self.is_train
                          else eval_transform(rgb, gt, depth, self.C))
        return dict(data=rgb, modal_x=depth, label=gt.astype(np.int32), fn=name)


def _image_files(folder):
    """Image files of `folder` by stem; dotfiles are skipped, any other non-image is an error."""
    files = {}
    for entry in sorted(name for name in os.listdir(folder) if not name.startswith(".")):
        path = os.path.join(folder, entry)
        stem, ext = os.path.splitext(entry)
        if not os.path.isfile(path) or ext.lower() not in IMAGE_EXTENSIONS:
            raise UserError(f"{path} is not an image file ({'/'.join(IMAGE_EXTENSIONS)}); "
                            f"remove it from {folder} or move it elsewhere")
        if stem in files:
            raise UserError(f"{files[stem]} and {path} have the same name; keep one of them")
        files[stem] = path
    return files


def list_inference_pairs(source, depth=None, rgb_folder="RGB", x_folder="Depth"):
    """(name, rgb_path, depth_path) of every sample of `source`: one RGB image (with `depth`), or a
    folder holding `RGB/` and `Depth/` with files of the same stem (no labels or list files needed)."""
    if os.path.isfile(source):
        if depth is None:
            raise UserError(f"{source} is a single image: also give its depth map")
        if not os.path.isfile(depth):
            raise UserError(f"depth file not found: {depth}")
        return [(os.path.splitext(os.path.basename(source))[0], source, depth)]
    rgb_dir, depth_dir = os.path.join(source, rgb_folder), os.path.join(source, x_folder)
    if not (os.path.isdir(rgb_dir) and os.path.isdir(depth_dir)):
        raise UserError(f"{source} should be an RGB image (with a depth map) or a folder holding {rgb_folder}/ and "
                        f"{x_folder}/ with files of the same name, e.g. {rgb_folder}/a.jpg and {x_folder}/a.png")
    rgbs, depths = _image_files(rgb_dir), _image_files(depth_dir)
    if not rgbs:
        raise UserError(f"no images in {rgb_dir}")
    missing = sorted(set(rgbs) - set(depths))
    if missing:
        raise UserError(f"no depth map in {depth_dir} for {rgbs[missing[0]]} (and {len(missing) - 1} more)")
    return [(stem, rgbs[stem], depths[stem]) for stem in sorted(rgbs)]


def read_inference_pair(C, rgb_path, depth_path):
    """(image, depth, data, modal_x) of one pair: uint8 HxWx3 RGB and HxW depth for visualisation, and
    the float32 (3, H, W) model inputs as in evaluation but never padded (the model takes any size)."""
    rgb = read_rgb(rgb_path, bgr=C.bgr_input)
    depth = read_depth(depth_path, strict=True)
    check_same_size({rgb_path: rgb.shape, depth_path: depth.shape})
    data, _, modal_x = eval_transform(rgb, None, cv2.merge([depth, depth, depth]), C, pad_sunrgbd=False)
    image = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB) if C.bgr_input else rgb
    return image, depth, data, modal_x


class InferenceDataset(Dataset):
    """Unlabelled pairs of `list_inference_pairs`; items hold `read_inference_pair`'s arrays and `fn`.
    Images may differ in size, so the default batch size is 1."""

    def __init__(self, C, pairs, batch_size=1, num_workers=0):
        super().__init__()
        self.C = C
        self.pairs = list(pairs)
        check_files([path for pair in self.pairs for path in pair[1:]], "to predict on", "Replace them.")
        self.set_attrs(total_len=len(self.pairs), batch_size=batch_size, shuffle=False, drop_last=False,
                       num_workers=num_workers)

    def __getitem__(self, index):
        name, rgb_path, depth_path = self.pairs[index]
        image, depth, data, modal_x = read_inference_pair(self.C, rgb_path, depth_path)
        return dict(data=data, modal_x=modal_x, image=image, depth=depth, fn=name)

"""Template: DFormer-Large on your own RGB-D dataset (official local_configs/template/DFormer_Large.py).

Copy this file to local_configs/<YourDataset>/<Model>.py, replace the values marked "yours", and
pass its dotted path as the config (e.g. local_configs.MyDataset.DFormer_Large). Expected layout,
as for NYUDepthv2:

    datasets/MyDataset/RGB/<name>.jpg     colour images
    datasets/MyDataset/Depth/<name>.png   grey depth, 0 nearest .. 255 farthest (or 16-bit raw depth)
    datasets/MyDataset/Label/<name>.png   grey labels, 0 unlabelled (ignored), 1..K the classes
    datasets/MyDataset/train.txt          one sample per line: RGB/<name>.jpg
    datasets/MyDataset/test.txt

Values not given here come from local_configs/_base_ (optimizer, schedule shape, normalisation,
augmentation scales, ...); any of them can be overridden the same way, and only those keys exist: a
misspelt one stops with an error naming the closest key. The image counts come from train.txt and
test.txt; the ignore label is 0 in the PNGs (255 after the shift), whatever the config.
"""
from local_configs._base_ import make_config

C = make_config(
    "MyDataset",  # yours: the folder name under datasets/
    "DFormer-Large",  # backbone; another one needs its own pretrained weights (models/registry.py)
    class_names=["class_1", "class_2"],  # yours: label k (1..K) in the PNGs is class_names[k - 1]
    gt_folder="Label",
    rgb_format=".jpg",
    x_format=".png",
    gt_format=".png",
    image_height=480,  # training crop size; images are randomly rescaled, then cropped/padded to it
    image_width=640,
    lr=6e-5,
    batch_size=8,
    nepochs=500,
    num_workers=16,
    drop_path_rate=0.15,
    eval_scale_array=[1],
    eval_crop_size=[480, 640],  # sliding-window evaluation window, [height, width]
    checkpoint_start_epoch=250,  # validate every epoch from here on
)

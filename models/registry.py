"""The seven official models, one entry each: every per-model fact the code needs, written once.

Entries are keyed by `C.backbone`, spelled as upstream's configs spell it (`DFormer-Tiny`,
`DFormerv2_S`). Derived from here: the backbone factories of `models/builder.py`,
`C.pretrained_model` of the configs, the checkpoint guess of `utils/engine/checkpoint.py`, the published
numbers of `benchmark.py` and the model list of the GPU check. Importing this file imports no Jittor.
"""
from dataclasses import dataclass

DATASETS = ("NYUDepthv2", "SUNRGBD")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str  # C.backbone, as upstream's configs spell it
    name: str  # as the papers and the official README name it
    config: str  # config module under local_configs/<dataset>/, and the factory in models/encoders/<family>.py
    family: str  # "DFormer" or "DFormerv2"
    width: int  # channels of the first stage, and ...
    stage3_depth: int  # ... blocks of the third stage: together they tell state dicts apart
    pretrained: str  # official ImageNet RGB-D backbone, under checkpoints/pretrained/
    trained: tuple  # official trained checkpoints (NYUDepthv2, SUNRGBD), under checkpoints/trained/
    params_m: float  # published parameters (millions)
    gflops: tuple  # published GFLOPs (= GMACs, thop) at 480x640 (NYUDepthv2) and 530x730 (SUNRGBD)

    @property
    def pretrained_path(self):
        return f"checkpoints/pretrained/{self.pretrained}"

    def trained_path(self, dataset):
        """The official trained checkpoint for `dataset`, or None for other datasets."""
        return f"checkpoints/trained/{self.trained[DATASETS.index(dataset)]}" if dataset in DATASETS else None

    def config_module(self, dataset="NYUDepthv2"):
        return f"local_configs.{dataset}.{self.config}"


# Published numbers: DFormer README / ICLR 2024 Table 2 and the DFormerv2 CVPR 2025 table.
MODELS = {spec.backbone: spec for spec in [
    ModelSpec("DFormer-Tiny", "DFormer-Tiny", "DFormer_Tiny", "DFormer", 32, 5, "DFormer_Tiny.pth.tar",
              ("NYUv2_DFormer_Tiny.pth", "SUNRGBD_DFormer_Tiny.pth"), 6.0, (11.8, 15.1)),
    ModelSpec("DFormer-Small", "DFormer-Small", "DFormer_Small", "DFormer", 64, 4, "DFormer_Small.pth.tar",
              ("NYUv2_DFormer_Small.pth", "SUNRGBD_DFormer_Small.pth"), 18.7, (25.6, 33.0)),
    ModelSpec("DFormer-Base", "DFormer-Base", "DFormer_Base", "DFormer", 64, 12, "DFormer_Base.pth.tar",
              ("NYUv2_DFormer_Base.pth", "SUNRGBD_DFormer_Base.pth"), 29.5, (41.9, 54.1)),
    ModelSpec("DFormer-Large", "DFormer-Large", "DFormer_Large", "DFormer", 96, 12, "DFormer_Large.pth.tar",
              ("NYUv2_DFormer_Large.pth", "SUNRGBD_DFormer_Large.pth"), 39.0, (65.7, 83.3)),
    ModelSpec("DFormerv2_S", "DFormerv2-Small", "DFormerv2_S", "DFormerv2", 64, 18, "DFormerv2_Small_pretrained.pth",
              ("DFormerv2_Small_NYU.pth", "DFormerv2_Small_SUNRGBD.pth"), 26.7, (33.9, 43.7)),
    ModelSpec("DFormerv2_B", "DFormerv2-Base", "DFormerv2_B", "DFormerv2", 80, 25, "DFormerv2_Base_pretrained.pth",
              ("DFormerv2_Base_NYU.pth", "DFormerv2_Base_SUNRGBD.pth"), 53.9, (67.2, 86.9)),
    ModelSpec("DFormerv2_L", "DFormerv2-Large", "DFormerv2_L", "DFormerv2", 112, 25, "DFormerv2_Large_pretrained.pth",
              ("DFormerv2_Large_NYU.pth", "DFormerv2_Large_SUNRGBD.pth"), 95.5, (124.1, 160.5)),
]}


def find_model(text):
    """The spec named by `text` in any spelling: DFormerv2_S, DFormerv2-S, DFormerv2-Small, dformer_tiny."""
    key = text.strip().lower().replace("_", "-")
    for spec in MODELS.values():
        if key in {spelling.lower().replace("_", "-") for spelling in (spec.backbone, spec.name, spec.config)}:
            return spec
    raise KeyError(f"unknown model {text!r}; choose one of {', '.join(s.name for s in MODELS.values())}")


def identify(family, width, stage3_depth):
    """The spec whose architecture matches, or None."""
    for spec in MODELS.values():
        if (spec.family, spec.width, spec.stage3_depth) == (family, width, stage3_depth):
            return spec
    return None

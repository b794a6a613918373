"""EncoderDecoder, the segmentor: backbone -> decode head -> bilinear upsample to the input size.

Mirrors the official `models/builder.py` (VCIP-RGBD/DFormer). Differences: the backbone comes
from the model registry (`models/registry.py`) instead of an if/elif ladder, and the decoder reads its input
widths from `backbone.out_channels`; the loss is computed in `utils/engine/loss.py`, not here; no
pretrained file is needed to build the model (load one with `utils.engine.checkpoint`).
"""
import jittor as jt
from jittor import nn

from .decoders.ham_head import LightHamHead
from .decoders.MLPDecoder import DecoderHead
from .encoders import DFormer, DFormerv2
from .layers import resize
from .registry import MODELS

ENCODER_FAMILIES = {"DFormer": DFormer, "DFormerv2": DFormerv2}


def build_backbone(name, **kwargs):
    """The encoder of registry entry `name` (`C.backbone`): the factory named like its config."""
    if name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(MODELS)}")
    spec = MODELS[name]
    return getattr(ENCODER_FAMILIES[spec.family], spec.config)(**kwargs)


class EncoderDecoder(nn.Module):
    """`model(rgb, depth)` -> logits (B, num_classes, H, W).

    rgb: (B, 3, H, W) float32, normalised with ImageNet mean/std (BGR order for most checkpoints).
    depth: (B, 3, H, W) float32, grey depth copied to 3 channels, normalised with 0.48/0.28.
    """

    def __init__(self, cfg):
        super().__init__()
        if cfg.get("aux_rate"):
            raise ValueError(f"C.aux_rate = {cfg.aux_rate}: upstream's auxiliary FCN head (an extra training "
                             "loss) is not ported; every official config sets aux_rate = 0")
        self.backbone_name = cfg.backbone
        self.backbone = build_backbone(cfg.backbone, drop_path_rate=cfg.drop_path_rate)
        channels = self.backbone.out_channels
        if cfg.decoder == "ham":
            self.decode_head = LightHamHead(channels[1:], cfg.num_classes, channels=cfg.decoder_embed_dim)
        elif cfg.decoder == "MLPDecoder":
            self.decode_head = DecoderHead(channels, cfg.num_classes, embed_dim=cfg.decoder_embed_dim)
        else:
            raise ValueError(f"unknown decoder {cfg.decoder!r}; choose 'ham' or 'MLPDecoder'")
        init_decode_head(self.decode_head, cfg.bn_eps, cfg.bn_momentum)

    def execute(self, rgb, depth):
        logits = self.decode_head(self.backbone(rgb, depth))  # (B, classes, H/8, W/8)
        return resize(logits, rgb.shape[2:])

    def onnx(self, ex, rgb, depth):
        logits = ex(self.decode_head, ex(self.backbone, rgb, depth))  # (B, K, H/8, W/8)
        return ex.g.resize(logits, ex.g.dims(rgb, 2, 4))


def init_decode_head(head, bn_eps, bn_momentum):
    """Upstream `init_weight`: kaiming-normal (fan_in, relu) conv weights; BNs take eps `bn_eps` and
    momentum `bn_momentum` (not stored in checkpoints), weight 1 and bias 0 (their initial values)."""
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            jt.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = bn_eps, bn_momentum

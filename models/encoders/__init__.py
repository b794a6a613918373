"""Backbones: DFormer (v1) and DFormerv2."""

"""Decode heads: LightHamHead (used by every shipped config) and the SegFormer-style MLP decoder."""

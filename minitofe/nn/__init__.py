"""Layers of the reference ViT, as forward/backward pairs."""

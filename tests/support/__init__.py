"""Helpers shared by several test areas (tiny models, datasets and manifests built offline)."""

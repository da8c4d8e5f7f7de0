"""Getting parameters in and out: checkpoint formats, key maps, the pretrained table, hub downloads.

Models never import from here; `loading.py` builds a model from a config and applies weights.
"""

"""Checkpoints: known records, verified downloads, safe loading."""
from avatarcam.weights.registry import REGISTRY, WeightSpec, get_spec
from avatarcam.weights.store import resolve_fomm_weights, weights_dir

__all__ = ["REGISTRY", "WeightSpec", "get_spec", "resolve_fomm_weights", "weights_dir"]

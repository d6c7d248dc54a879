"""Frozen-tower features as pipeline artifacts, shared by every feature-level method (complora.features.store)."""

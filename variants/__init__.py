"""Variant plugins: one file per architecture family, each calling harness.registry.register once."""

"""Data layer: schema, validation, loaders and the synthetic generator."""

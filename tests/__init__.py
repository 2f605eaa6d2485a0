"""Latent Atlas test suite."""

"""Noise schedule families: one file each, each a function returning a `Schedule`."""

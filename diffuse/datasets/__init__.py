"""Data sets: one file each, each a function returning an `ImageData`."""

"""Files in the evaluation cache folder: their names' data fingerprints, reading them back (safetensors only),
and their SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors import safe_open
from torch import Tensor

from diffuse import DiffuseError
from diffuse.data import ImageData


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a cached safetensors file; a damaged one is a DiffuseError that says what to do."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:
        raise DiffuseError(f"cache file {path} is damaged ({type(e).__name__}); delete it to rebuild it") from None


def fingerprint(data: ImageData) -> str:
    """A short hash of a data set's pixels and labels: caches never mix two folders that share a name."""
    h = hashlib.blake2b(digest_size=6)
    h.update(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()

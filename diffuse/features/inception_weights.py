"""The FID Inception-v3 weights: found, fetched when allowed, hash-checked, loaded without pickle."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from diffuse import DiffuseError
from diffuse.features.cache import read_tensors, sha256
from diffuse.features.extractors import Extractor

log = logging.getLogger(__name__)

FILE = "pt_inception-2015-12-05-6726825d.safetensors"
CONVERT = ("convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth to safetensors once, outside diffuse "
           "(the README's 'Evaluating' section has the one-line command), and save it as OUT")


@dataclass(frozen=True)
class InceptionOptions:
    """Where the weights are (the `inception.*` options of `diffuse eval`)."""

    path: str | None  # a safetensors file; None: the cache folder's FILE
    url: str | None  # where to fetch that file from when it is absent
    sha256: str | None  # the file's SHA-256 must start with this, when set
    download: bool  # fetch from `url` when absent

    def __post_init__(self) -> None:
        if self.sha256 is not None and not (isinstance(self.sha256, str) and len(self.sha256) >= 8
                                            and all(c in "0123456789abcdefABCDEF" for c in self.sha256)):
            raise DiffuseError(f"inception.sha256 must be at least 8 hex digits of the file's SHA-256, got {self.sha256!r}")
        if not isinstance(self.download, bool):
            raise DiffuseError(f"inception.download must be true or false, got {self.download!r}")
        if (self.url is not None and not isinstance(self.url, str)) or (self.path is not None and not isinstance(self.path, str)):
            raise DiffuseError("inception.url must be a URL and inception.path a file path")


def locate_weights(opts: InceptionOptions, cache_dir: Path) -> Path:
    """Where the weights file is or will be downloaded to; a DiffuseError if it is absent and cannot be fetched."""
    target = Path(opts.path).expanduser() if opts.path else cache_dir / FILE
    if not target.is_file() and not (opts.download and opts.url):
        why = "inception.download=false" if not opts.download else "no inception.url is set"
        raise DiffuseError(f"the FID Inception weights are not at {target} and {why}: {CONVERT.replace('OUT', str(target))}, "
                           f"or pass inception.path=FILE")
    return target


def fetch_weights(opts: InceptionOptions, cache_dir: Path) -> Path:
    """The weights file, downloaded into place first when absent (and allowed)."""
    target = locate_weights(opts, cache_dir)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            log.info("downloading the FID Inception weights from %s", opts.url)
            torch.hub.download_url_to_file(opts.url, str(target), progress=False)
        except Exception as e:  # offline, proxy, HTTP error
            raise DiffuseError(f"the FID Inception weights are not at {target}, and the download from {opts.url} failed "
                               f"({type(e).__name__}: {e}); put the file there yourself ({CONVERT.replace('OUT', str(target))})") from None
    return target


def inception_extractor(opts: InceptionOptions, cache_dir: Path, device: torch.device) -> Extractor:
    """The FID Inception-v3 from its safetensors file (diffuse reads no pickle). With `opts.sha256`, the file's
    SHA-256 must start with it; the digest is always recorded."""
    from diffuse.features.inception import FIDInception

    target = fetch_weights(opts, cache_dir)
    digest = sha256(target)
    if opts.sha256 is None:
        log.warning("inception.sha256 is not set: %s (SHA-256 %s) is used unchecked; the digest is recorded", target, digest)
    elif not digest.startswith(opts.sha256.lower()):
        raise DiffuseError(f"{target} has SHA-256 {digest[:16]}..., expected {opts.sha256}...: not the weights "
                           f"you named (delete it, or set inception.sha256 for another file you trust)")
    with torch.device("meta"):
        network = FIDInception()
    tensors, _ = read_tensors(target)
    counters = [k for k in network.state_dict() if k.endswith("num_batches_tracked")]  # not in pytorch-fid's file
    state = {k: v for k, v in tensors.items() if k not in counters}
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items() if k not in counters}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        bad = sorted(set(expected.items()) ^ set(got.items()))[:2]
        raise DiffuseError(f"{target} does not hold the FID Inception-v3 weights (first differences: {bad})")
    state.update({k: torch.zeros((), dtype=torch.long) for k in counters})
    network.load_state_dict(state, assign=True)
    return Extractor("inception", network, digest, device, {"path": str(target)}, batch_size=100)

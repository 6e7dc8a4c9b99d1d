"""`diffuse eval`: feature extractors (a domain classifier, the FID Inception-v3), cached reference statistics,
and the scores of a set of uint8 images against a real split, with the floor (real train vs the split) beside."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from diffuse import DiffuseError
from diffuse.checkpoint import write_atomic
from diffuse.data import ImageData
from diffuse import metrics
from diffuse.precision import check as check_precision, resolve as resolve_precision

log = logging.getLogger(__name__)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.safetensors"
CLASSIFIER_VERSION = 1  # bump when the classifier's architecture or training changes: old caches are not reused


@dataclass
class EvalOptions:
    n: int = 10000  # images to generate and score
    batch_size: int = 250  # images per sampler call
    steps: int = 50  # sampler steps
    seed: int = 0  # image i's noise is seeded from (seed, i); also seeds the KID subsets and score splits
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where native): autocast for the network while generating
    features: str = "auto"  # classifier | inception | auto (the classifier for 1-channel sets up to 64 px)
    reference_split: str = "test"  # the real split the images are scored against: test | train
    floor: bool = True  # also score n real train images against the split (the best a model can do)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3  # neighbours for the precision/recall manifolds
    guidance: float = 1.0  # classifier-free guidance scale (conditional models)
    guidance_rescale: float = 0.0  # phi of Lin et al. 2024 (0 = off)
    clip_x0: bool = True  # clamp each x0 prediction to [-1, 1] while generating, as `diffuse sample` does

    def __post_init__(self) -> None:
        if self.n < 2:
            raise DiffuseError(f"n must be >= 2 (statistics need two images), got {self.n}")
        if self.batch_size < 1:
            raise DiffuseError(f"batch_size must be >= 1, got {self.batch_size}")
        check_precision(self.precision)
        if self.features not in ("auto", "classifier", "inception"):
            raise DiffuseError(f"features must be auto, classifier or inception, got {self.features!r}")
        if self.reference_split not in ("test", "train"):
            raise DiffuseError(f"reference_split must be test or train, got {self.reference_split!r}")
        if not -100 <= self.guidance <= 100 or not 0 <= self.guidance_rescale <= 1:
            raise DiffuseError(f"guidance must be in -100..100 and guidance_rescale in 0..1, got {self.guidance} "
                               f"and {self.guidance_rescale}")
        if self.kid_subsets < 1 or self.kid_subset_size < 2 or self.pr_k < 1:
            raise DiffuseError("kid_subsets must be >= 1, kid_subset_size >= 2 and pr_k >= 1")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Extractor:
    """uint8 images (N,H,W,C) -> (features (N,D) float32, logits (N,K) float32), batched, on `device`."""

    def __init__(self, name: str, network: torch.nn.Module, weights_sha256: str, device: torch.device,
                 info: dict | None = None, batch_size: int = 500):
        self.name, self.weights_sha256, self.info = name, weights_sha256, info or {}
        self.network, self.device, self.batch_size = network.to(device).eval(), device, batch_size

    @property
    def id(self) -> str:
        return f"{self.name}-{self.weights_sha256[:12]}"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
            x = x.permute(0, 3, 1, 2).contiguous().to(self.device)  # (B,C,H,W) uint8, one memory layout whatever
            # the source's strides (they pick the convolution kernels, and so the last bits of the features)
            f, l = self.network(x)
            feats.append(f.float().cpu())
            logits.append(l.float().cpu())
        return torch.cat(feats), torch.cat(logits)


def fingerprint(data: ImageData) -> str:
    """A short hash of a data set's pixels and labels: caches never mix two folders that share a name."""
    h = hashlib.blake2b(digest_size=6)
    h.update(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:
        raise DiffuseError(f"cache file {path} is damaged ({type(e).__name__}); delete it to rebuild it") from None


def classifier_extractor(train: ImageData, test: ImageData, cache_dir: Path, device: torch.device,
                         steps: int = 800, seed: int = 0) -> Extractor:
    """The domain classifier for `train`'s data set: loaded from the cache, or trained on the train split (and
    its test-split accuracy measured) at first use, then cached as safetensors."""
    from diffuse.features.classifier import Classifier, accuracy, train_classifier

    if train.num_classes < 2:
        raise DiffuseError(f"data set {train.name!r} has no class labels, so there is no classifier for it; "
                           f"use features=inception")
    C, H, W = train.shape
    path = cache_dir / (f"classifier-{train.name}-{C}x{H}x{W}-k{train.num_classes}-{fingerprint(train)}-s{steps}"
                        f"-seed{seed}-v{CLASSIFIER_VERSION}.safetensors")
    if not path.is_file():
        log.info("training the %s classifier (%d steps, once; cached at %s)", train.name, steps, path)
        t0 = time.perf_counter()
        model = train_classifier(train.images, train.labels, train.num_classes, steps=steps, seed=seed,
                                 flip=train.hflip, device=device)
        acc = accuracy(model, test.images.to(device), test.labels.to(device))
        meta = {"dataset": train.name, "test_accuracy": f"{acc:.6f}", "steps": str(steps), "seed": str(seed),
                "version": str(CLASSIFIER_VERSION), "shape": json.dumps([C, H, W]),
                "num_classes": str(train.num_classes), "train_seconds": f"{time.perf_counter() - t0:.1f}"}
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_atomic(path, safetensors_bytes(tensors, metadata=meta))
        log.info("classifier test accuracy %.4f (%.0f s)", acc, time.perf_counter() - t0)
    tensors, meta = _read_safetensors(path)
    with torch.device("meta"):  # no global RNG draws (this may run beside training)
        model = Classifier(C, train.num_classes)
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError:
        raise DiffuseError(f"cache file {path} does not fit the classifier; delete it to rebuild it") from None
    info = {"test_accuracy": float(meta.get("test_accuracy", "nan")), "trained_on": f"{train.name} train split",
            "steps": int(meta.get("steps", steps)), "path": str(path)}
    return Extractor("classifier", model, sha256(path), device, info)


CONVERT = ("convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth to safetensors once, outside diffuse "
           "(the README's 'Evaluating' section has the one-line command), and save it as OUT")


def inception_extractor(path: str | None, url: str | None, expected_sha256: str | None, download: bool,
                        cache_dir: Path, device: torch.device) -> Extractor:
    """The FID Inception-v3 weights as a safetensors file (diffuse reads no pickle): from `path` or diffuse's
    cache; downloaded into the cache from `url` when absent, `download` is true and a URL is set. With
    `expected_sha256`, the file's SHA-256 must start with it; the digest is always recorded."""
    from diffuse.features.inception import FIDInception

    target = Path(path).expanduser() if path else cache_dir / INCEPTION_FILE
    if not target.is_file():
        if not (download and url):
            why = "inception.download=false" if not download else "no inception.url is set"
            raise DiffuseError(f"the FID Inception weights are not at {target} and {why}: {CONVERT.replace('OUT', str(target))}, "
                               f"or pass inception.path=FILE")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            log.info("downloading the FID Inception weights from %s", url)
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception as e:  # offline, proxy, HTTP error
            raise DiffuseError(f"the FID Inception weights are not at {target}, and the download from {url} failed "
                               f"({type(e).__name__}: {e}); put the file there yourself ({CONVERT.replace('OUT', str(target))})") from None
    digest = sha256(target)
    if expected_sha256 is None:
        log.warning("inception.sha256 is not set: %s (SHA-256 %s) is used unchecked; the digest is recorded", target, digest)
    elif not digest.startswith(expected_sha256.lower()):
        raise DiffuseError(f"{target} has SHA-256 {digest[:16]}..., expected {expected_sha256}...: not the weights "
                           f"you named (delete it, or set inception.sha256 for another file you trust)")
    with torch.device("meta"):
        network = FIDInception()
    tensors, _ = _read_safetensors(target)
    state = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        bad = sorted(set(expected.items()) ^ set(got.items()))[:2]
        raise DiffuseError(f"{target} does not hold the FID Inception-v3 weights (first differences: {bad})")
    state.update({k: torch.zeros((), dtype=torch.long) for k in network.state_dict() if k.endswith("num_batches_tracked")})
    network.load_state_dict(state, assign=True)
    return Extractor("inception", network, digest, device, {"path": str(target)}, batch_size=100)


@dataclass
class Reference:
    """Features of a real split, and what FID needs of them."""

    features: Tensor  # (N,D) float32
    logits: Tensor  # (N,K) float32
    labels: Tensor  # (N,)
    stats: metrics.GaussianStats


def reference_features(data: ImageData, split: str, extractor: Extractor, cache_dir: Path,
                       n: int | None = None) -> Reference:
    """Features of `data` (the first `n` images of a fixed permutation when n is given), cached per data set,
    split, shape, extractor weights and n."""
    C, H, W = data.shape
    tag = "all" if n is None or n >= len(data) else f"n{n}"
    path = cache_dir / f"reference-{data.name}-{split}-{C}x{H}x{W}-{fingerprint(data)}-{tag}-{extractor.id}.safetensors"
    if path.is_file():
        t, _ = _read_safetensors(path)
        if {"features", "logits", "labels", "mu", "cov"} <= t.keys():
            return Reference(t["features"], t["logits"], t["labels"],
                             metrics.GaussianStats(t["mu"], t["cov"], len(t["features"])))
    images, labels = data.images, data.labels
    if tag != "all":
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
        images, labels = images[keep], labels[keep]
    log.info("computing %s features of %d %s %s images (once; cached at %s)", extractor.name, len(images),
             data.name, split, path)
    features, logits = extractor(images.permute(0, 2, 3, 1).numpy())
    stats = metrics.gaussian_stats(features)
    write_atomic(path, safetensors_bytes({"features": features.contiguous(), "logits": logits.contiguous(),
                                          "labels": labels.contiguous(), "mu": stats.mu, "cov": stats.cov}))
    return Reference(features, logits, labels, stats)


def score(features: Tensor, logits: Tensor, ref: Reference, opts: EvalOptions,
          labels: Tensor | None = None, with_classes: bool = True) -> dict:
    """Every metric of (N,D) features and (N,K) logits against a reference; `labels` (N,) the classes the
    images were asked for (conditional models). `with_classes`: the logits are over the data set's own classes
    (the domain classifier), so class coverage and conditional accuracy mean something."""
    n = len(features)
    k = min(opts.pr_k, n - 1, len(ref.features) - 1)
    kid_mean, kid_std = metrics.kernel_distance(ref.features, features, opts.kid_subsets, opts.kid_subset_size,
                                                opts.seed)
    precision, recall = metrics.precision_recall(ref.features, features, k)
    out = {"fid": metrics.frechet_distance(metrics.gaussian_stats(features), ref.stats), "kid": kid_mean,
           "kid_std": kid_std, "precision": precision, "recall": recall}
    splits = min(10, n)
    is_mean, is_std = metrics.classifier_score(logits, splits, opts.seed)  # Inception score with Inception logits
    out.update(classifier_score=is_mean, classifier_score_std=is_std)
    if with_classes:
        num_classes = ref.logits.shape[1]
        real_hist = torch.bincount(ref.labels, minlength=num_classes).double() / len(ref.labels)
        covered, tv = metrics.class_coverage(metrics.class_histogram(logits, num_classes), real_hist)
        out.update(class_coverage=covered, class_tv=tv)
    if labels is not None and with_classes:
        acc, per_class = metrics.conditional_accuracy(logits, labels, logits.shape[1])
        out.update(conditional_accuracy=acc, conditional_accuracy_per_class=per_class)
    out["protocol"] = {"n": n, "reference_n": len(ref.features), "kid_subset_size": min(opts.kid_subset_size, n,
                       len(ref.features)), "kid_subsets": opts.kid_subsets, "pr_k": k,
                       "score_splits": splits}
    return out


def read_images(path: str | Path) -> np.ndarray:
    """Images to score from another tool or run: an .npz (key `images`, or its only array) of uint8
    (N,H,W,C) or (N,H,W), or a folder of PNG/JPEG files (read in sorted order). Returns (N,H,W,C) uint8."""
    from PIL import Image

    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
        if not files:
            raise DiffuseError(f"samples={path}: the folder holds no PNG/JPEG images")
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")))
            except Exception as e:
                raise DiffuseError(f"samples={path}: {f} is not a readable image ({e})") from None
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DiffuseError(f"samples={path}: the images differ in size or channels ({sorted(shapes)[:3]})")
        images = np.stack(arrays)
    elif p.is_file() and p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DiffuseError(f"samples={path}: the .npz has no `images` array (it has {keys})")
                images = z[key]
        except DiffuseError:
            raise
        except Exception as e:
            raise DiffuseError(f"samples={path}: not a readable .npz ({type(e).__name__}: {e})") from None
    else:
        raise DiffuseError(f"samples={path}: expected an .npz file or a folder of images, and it is neither")
    if images.dtype != np.uint8:
        raise DiffuseError(f"samples={path}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None].copy()
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DiffuseError(f"samples={path}: expected images (N,H,W,C) with C 1 or 3, got shape {images.shape}")
    return images


def check_images(images: np.ndarray, shape: tuple[int, int, int], what: str) -> None:
    """(N,H,W,C) images must match the data set's (C,H,W)."""
    C, H, W = shape
    if images.shape[1:] != (H, W, C):
        raise DiffuseError(f"{what} has images of {images.shape[1]}x{images.shape[2]} with {images.shape[3]} "
                           f"channel(s), but the reference data set has {H}x{W} with {C}")
    if len(images) < 2:
        raise DiffuseError(f"{what} holds {len(images)} image(s); scoring needs at least 2")


def choose_features(name: str, shape: tuple[int, int, int], num_classes: int) -> str:
    if name != "auto":
        return name
    C, H, W = shape
    return "classifier" if C == 1 and max(H, W) <= 64 and num_classes >= 2 else "inception"


def evaluate(images: np.ndarray, reference: Callable[[str], ImageData], extractor: Extractor,
             opts: EvalOptions, cache_dir: Path, labels: Tensor | None = None) -> dict:
    """Score (N,H,W,C) uint8 images against the reference split, and the floor (n real train images)."""
    test = reference(opts.reference_split)
    ref = reference_features(test, opts.reference_split, extractor, cache_dir)
    t0 = time.perf_counter()
    features, logits = extractor(images)
    with_classes = extractor.name == "classifier"
    result = {"model": score(features, logits, ref, opts, labels, with_classes)}
    if opts.floor:
        other = "train" if opts.reference_split == "test" else "test"
        real = reference_features(reference(other), other, extractor, cache_dir, n=len(images))
        result["floor"] = score(real.features, real.logits, ref, opts, None, with_classes)
        result["floor"]["protocol"]["images"] = f"{len(real.features)} real {other} images"
    result["score_seconds"] = round(time.perf_counter() - t0, 2)
    return result


def options_record(opts: EvalOptions) -> dict:
    return asdict(opts)


def build_extractor(job, opts: EvalOptions) -> Extractor:
    """The feature extractor `opts.features` names (auto: by the data set's shape)."""
    kind = choose_features(opts.features, job.shape, job.num_classes)
    cfg = job.config
    if kind == "classifier":
        steps = cfg.get("classifier_steps", 800)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 1_000_000:
            raise DiffuseError(f"classifier_steps must be an integer in 1..1000000, got {steps!r}")
        return classifier_extractor(job.reference("train"), job.reference("test"), job.cache_dir, job.device,
                                    steps=steps)
    inc = cfg.get("inception") or {}
    path, url, digest, download = inc.get("path"), inc.get("url"), inc.get("sha256"), inc.get("download")
    if digest is not None and not (isinstance(digest, str) and len(digest) >= 8
                                   and all(c in "0123456789abcdefABCDEF" for c in digest)):
        raise DiffuseError(f"inception.sha256 must be at least 8 hex digits of the file's SHA-256, got {digest!r}")
    if not isinstance(download, bool):
        raise DiffuseError(f"inception.download must be true or false, got {download!r}")
    if (url is not None and not isinstance(url, str)) or (path is not None and not isinstance(path, str)):
        raise DiffuseError("inception.url must be a URL and inception.path a file path")
    return inception_extractor(path, url, digest, download, job.cache_dir, job.device)


def run_eval(job, opts: EvalOptions) -> Path:
    """`diffuse eval`: generate (or read) the images, score them and the floor, write metrics.json, print a table."""
    from diffuse.denoiser import ModelDenoiser
    from diffuse.sample import generate, image_labels, sampler_record
    from diffuse.ui import interactive, print_metrics, progress_bar

    t_start = time.perf_counter()
    out = Path(job.out_dir)
    extractor = build_extractor(job, opts)  # first: a missing weights file fails before minutes of sampling
    record: dict = {"n": opts.n, "seed": opts.seed, "dataset": job.dataset_name,
                    "reference": {"split": opts.reference_split, "dataset": job.dataset_name},
                    "features": {"name": extractor.name, "weights_sha256": extractor.weights_sha256, **extractor.info}}
    labels = None
    if job.generator is not None:
        run = job.generator
        numeric = resolve_precision(opts.precision, run.device)
        denoiser = ModelDenoiser(run.model, run.schedule, run.parameterization, numeric, opts.clip_x0, guidance=opts.guidance,
                                 guidance_rescale=opts.guidance_rescale)
        image_classes = image_labels(run.labels, opts.n)
        batches = -(-opts.n // opts.batch_size)
        t0 = time.perf_counter()
        with progress_bar("generating", batches * opts.steps, interactive()) as bar:
            images = generate(denoiser, run.schedule, run.sampler, run.shape, n=opts.n, batch_size=opts.batch_size,
                              steps=opts.steps, seed=opts.seed, device=run.device, on_step=bar.update,
                              labels=image_classes)
        if image_classes is not None:
            labels = torch.from_numpy(image_classes)
            record.update(labels=run.labels, guidance=opts.guidance)
        generate_s = time.perf_counter() - t0
        sampling = sampler_record(run.sampler, run.schedule, opts.steps)
        sampling.pop("timesteps")
        record.update(checkpoint=str(run.checkpoint), checkpoint_step=run.step, **sampling,
                      nfe=denoiser.nfe // batches, precision=numeric, generate_seconds=round(generate_s, 2))
        source = f"ckpt {run.checkpoint}"
    else:
        images = read_images(job.samples)
        record.update(samples=str(job.samples), n=len(images))
        source = f"samples {job.samples}"
    check_images(images, job.shape, source)
    result = evaluate(images, job.reference, extractor, opts, job.cache_dir, labels)
    record.update(metrics=result["model"], floor=result.get("floor"), score_seconds=result["score_seconds"],
                  wall_seconds=round(time.perf_counter() - t_start, 2), options=options_record(opts))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print_metrics(f"{source}: {len(images)} images vs {job.dataset_name} {opts.reference_split} "
                  f"({extractor.name} features)", result["model"], result.get("floor"))
    log.info("wrote %s (%.1f s)", out / "metrics.json", record["wall_seconds"])
    return out


class BackgroundEval:
    """`train.eval_every`: scores snapshots of the EMA weights in one worker thread while training goes on.
    The classifier and reference features are prepared in the worker too (at the first request). A request
    while the previous evaluation still runs is skipped, not queued; a failure disables evaluation with a
    warning and never stops training. Uses no global RNG state, so training stays reproducible."""

    def __init__(self, run, n: int, steps: int, precision: str):
        if choose_features("auto", run.shape, run.dataset.num_classes) != "classifier":
            raise DiffuseError(f"train.eval_every uses the domain classifier (1-channel labelled data up to 64 px), "
                               f"and data set {run.dataset.name} {list(run.shape)} is not such; score checkpoints "
                               f"with diffuse eval instead")
        self.run, self.steps, self.precision = run, steps, precision
        self.opts = EvalOptions(n=n, steps=steps, seed=run.seed, kid_subsets=10, floor=False)
        self._pending: tuple[threading.Thread, dict] | None = None  # a daemon thread: never holds up exit
        self._prepared: tuple | None = None
        self.disabled = False

    def _prepare(self) -> tuple:
        if self._prepared is None:
            extractor = classifier_extractor(self.run.reference("train"), self.run.reference("test"),
                                             self.run.cache_dir, self.run.device)
            ref = reference_features(self.run.reference("test"), "test", extractor, self.run.cache_dir)
            self._prepared = (extractor, ref)
        return self._prepared

    def _evaluate(self, step: int, model: torch.nn.Module) -> tuple[int, dict]:
        from diffuse.denoiser import ModelDenoiser
        from diffuse.sample import generate, image_labels

        extractor, ref = self._prepare()
        t0 = time.perf_counter()
        denoiser = ModelDenoiser(model, self.run.schedule, self.run.parameterization, self.precision, clip_x0=True)
        conditional = getattr(model, "conditional", False)
        classes = image_labels(list(range(model.num_classes)), self.opts.n) if conditional else None
        images = generate(denoiser, self.run.schedule, self.run.sampler, self.run.shape, n=self.opts.n,
                          batch_size=min(self.opts.n, 250), steps=self.steps, seed=self.run.seed,
                          device=self.run.device, labels=classes)
        features, logits = extractor(images)
        result = score(features, logits, ref, self.opts, None if classes is None else torch.from_numpy(classes))
        result["eval_seconds"] = time.perf_counter() - t0
        return step, result

    def submit(self, step: int, ema: torch.nn.Module) -> None:
        import copy

        if self.disabled:
            return
        if self._pending is not None and self._pending[0].is_alive():
            log.info("step %d: the previous evaluation is still running; skipping this one", step)
            return
        snapshot = copy.deepcopy(ema).eval()  # training goes on updating `ema`
        box: dict = {}

        def work() -> None:
            try:
                box["result"] = self._evaluate(step, snapshot)
            except Exception as e:  # reported by collect()
                box["error"] = e

        thread = threading.Thread(target=work, name="diffuse-eval", daemon=True)
        thread.start()
        self._pending = (thread, box)

    def collect(self, wait: bool = False) -> list[tuple[int, dict]]:
        """Finished evaluations as (step, metrics); `wait` blocks for the running one."""
        if self._pending is None:
            return []
        thread, box = self._pending
        if wait:
            thread.join()
        if thread.is_alive():
            return []
        self._pending = None
        if "error" in box:  # never stop training for an evaluation
            self.disabled = True
            e = box["error"]
            log.warning("train.eval_every disabled: %s", e if isinstance(e, DiffuseError) else f"{type(e).__name__}: {e}")
            return []
        return [box["result"]]

"""`diffuse eval`: generate (or read) images, score them and the floor against a real split, write metrics.json
and print a table."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from diffuse import DiffuseError
from diffuse.features.extractors import KINDS, make_extractor
from diffuse.features.inception_weights import InceptionOptions
from diffuse.generate import GenerationOptions, generate
from diffuse.scoring import ScoreSettings, score_images
from diffuse.ui import interactive, print_metrics, progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions(GenerationOptions):
    """The options of `diffuse eval` (defaults: conf/eval.yaml and conf/generate.yaml)."""

    features: str  # classifier | inception | auto (the classifier for 1-channel labelled sets up to 64 px)
    reference_split: str  # the real split the images are scored against: test | train
    floor: bool  # also score n real images of the other split (the best a model can do)
    kid_subsets: int
    kid_subset_size: int
    pr_k: int  # neighbours for the precision/recall manifolds
    classifier_steps: int  # training steps of the domain classifier at its first use
    inception: InceptionOptions

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 2:
            raise DiffuseError(f"n must be >= 2 (statistics need two images), got {self.n}")
        if self.features not in KINDS:
            raise DiffuseError(f"features must be auto, classifier or inception, got {self.features!r}")
        if self.reference_split not in ("test", "train"):
            raise DiffuseError(f"reference_split must be test or train, got {self.reference_split!r}")
        if not 1 <= self.classifier_steps <= 1_000_000:
            raise DiffuseError(f"classifier_steps must be an integer in 1..1000000, got {self.classifier_steps!r}")
        self.settings  # checks the scoring protocol

    @property
    def settings(self) -> ScoreSettings:
        return ScoreSettings(self.kid_subsets, self.kid_subset_size, self.pr_k, self.seed)


def evaluate(job, opts: EvalOptions) -> Path:
    """`diffuse eval`: the extractor first (a missing weights file fails before minutes of sampling), then the
    images (drawn from job.loaded, or job.samples as read), then the scores; writes metrics.json."""
    t_start = time.perf_counter()
    extractor = make_extractor(job.features, job.reference, job.cache_dir, job.device, opts.classifier_steps,
                               opts.inception)
    record: dict = {"n": opts.n, "seed": opts.seed, "dataset": job.data.name,
                    "reference": {"split": opts.reference_split, "dataset": job.data.name},
                    "features": {"name": extractor.name, "weights_sha256": extractor.weights_sha256, **extractor.info}}
    if job.loaded is not None:
        batches = -(-opts.n // opts.batch_size)
        with progress_bar("generating", batches * opts.steps, interactive()) as bar:
            drawn = generate(job.loaded.model, job.sampler, opts, job.device, job.classes, on_step=bar.update)
        images, labels = drawn.images, drawn.labels
        if labels is not None:
            record.update(labels=job.classes, guidance=opts.guidance)
        record.update(checkpoint=str(job.loaded.path), checkpoint_step=job.loaded.step, sampler=job.sampler.name,
                      settings={**job.sampler.settings, "spacing": job.sampler.spacing}, steps=opts.steps,
                      nfe=drawn.nfe_per_image, precision=drawn.precision, generate_seconds=round(drawn.seconds, 2))
        source = f"ckpt {job.loaded.path}"
    else:
        images, labels = job.samples, None
        record.update(samples=str(job.samples_path), n=len(images))
        source = f"samples {job.samples_path}"
    result = score_images(images, job.reference, opts.reference_split, extractor, opts.settings, job.cache_dir,
                          labels, opts.floor)
    record.update(metrics=result["model"], floor=result["floor"], score_seconds=result["score_seconds"],
                  wall_seconds=round(time.perf_counter() - t_start, 2), options=asdict(opts))
    job.out_dir.mkdir(parents=True, exist_ok=True)
    (job.out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print_metrics(f"{source}: {len(images)} images vs {job.data.name} {opts.reference_split} "
                  f"({extractor.name} features)", result["model"], result["floor"])
    log.info("wrote %s (%.1f s)", job.out_dir / "metrics.json", record["wall_seconds"])
    return job.out_dir

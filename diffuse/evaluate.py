"""`diffuse eval`: generate (or read) images, score them and the floor against a real split, write metrics.json
and print a table."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.cas import classification_accuracy_score
from diffuse.features.extractors import KINDS, Extractor, make_extractor
from diffuse.features.inception_weights import InceptionOptions
from diffuse.features.reference import Reference, reference_features, write_stats
from diffuse.generate import generate
from diffuse.scoring import ScoreSettings, score_images
from diffuse.images import to_uint8
from diffuse.start_images import StartImages, StartOptions, faithfulness, start_record
from diffuse.superres import superres_scores, upsample
from diffuse.ui import interactive, print_metrics, progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions(StartOptions):
    """The options of `diffuse eval` (defaults: conf/eval.yaml, conf/start.yaml and conf/generate.yaml)."""

    features: str  # classifier | inception | auto (the classifier for 1-channel labelled sets up to 64 px)
    reference_split: str  # the real split the images are scored against: test | train
    floor: bool  # also score n real images of the other split (the best a model can do)
    kid_subsets: int
    kid_subset_size: int
    pr_k: int  # neighbours for the precision/recall manifolds
    classifier_steps: int  # training steps of the domain classifier at its first use
    inception: InceptionOptions
    samples_range: list[float] | None  # the value range of float images read with samples= ([0,1] or [-1,1])
    save_reference: bool  # also write the reference's statistics to reference_stats.npz
    cas: bool  # also the classification accuracy score (labelled images): a classifier trained on them alone
    cas_steps: int  # training steps of that classifier (and of the real baseline beside it)


    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 2:
            raise DiffuseError(f"n must be >= 2 (statistics need two images), got {self.n}")
        if self.features not in KINDS:
            raise DiffuseError(f"features must be auto, classifier or inception, got {self.features!r}")
        if self.reference_split not in ("test", "train"):
            raise DiffuseError(f"reference_split must be test or train, got {self.reference_split!r}")
        for name in ("classifier_steps", "cas_steps"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                raise DiffuseError(f"{name} must be an integer in 1..1000000, got {getattr(self, name)!r}")
        self.settings  # checks the scoring protocol
        r = self.samples_range
        if r is not None:
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, (int, float)) and
                                                                        not isinstance(v, bool) for v in r) and r[0] < r[1]):
                raise DiffuseError(f"samples_range must be [LOW,HIGH] with LOW < HIGH, e.g. [0,1] or [-1,1]; got {r!r}")
            object.__setattr__(self, "samples_range", (float(r[0]), float(r[1])))

    @property
    def settings(self) -> ScoreSettings:
        return ScoreSettings(self.kid_subsets, self.kid_subset_size, self.pr_k, self.seed)


def evaluate(job, opts: EvalOptions) -> Path:
    """`diffuse eval`: the extractor first (a missing weights file fails before minutes of sampling), then the
    images (drawn from job.loaded, or as read from files), then the scores; writes metrics.json (and the
    reference's statistics, reference_stats.npz)."""
    t_start = time.perf_counter()
    if not job.world.main:  # under torchrun: share the drawing; rank 0 scores
        if job.loaded is not None:
            generate(job.loaded.model, job.sampler, opts, job.device, job.classes, world=job.world, images=job.images)
        return job.out_dir
    extractor = make_extractor(job.features, job.reference, job.cache_dir, job.device, opts.classifier_steps,
                               opts.inception)
    ref, against, description = reference(job, opts, extractor)
    record: dict = {"n": opts.n, "seed": opts.seed, "dataset": job.data.name if job.data else None,
                    "reference": against,
                    "features": {"name": extractor.name, "weights_sha256": extractor.weights_sha256, **extractor.info}}
    if job.loaded is not None:
        batches = -(-len(job.world.shard(opts.n)) // opts.batch_size)
        with progress_bar("generating", batches * opts.steps, interactive()) as bar:
            drawn = generate(job.loaded.model, job.sampler, opts, job.device, job.classes, on_step=bar.update,
                             world=job.world, images=job.images)
        images, labels = drawn.images, drawn.labels
        if labels is not None:
            record.update(labels=job.classes, guidance=opts.guidance)
        record.update(checkpoint=str(job.loaded.path), checkpoint_step=job.loaded.step, sampler=job.sampler.name,
                      settings={**job.sampler.settings, "spacing": job.sampler.spacing},
                      spacing=job.sampler.spacing_for(job.loaded.model.schedule, opts.steps), steps=opts.steps,
                      timesteps=drawn.timesteps, nfe=drawn.nfe_per_image, precision=drawn.precision,
                      generate_seconds=round(drawn.seconds, 2), start=start_record(job.images, drawn.timesteps))
        if "distill" in job.loaded.config:  # a student: which method made it (diffuse report keeps them apart)
            record["student"] = job.loaded.config["distill"].get("method")
        source = f"ckpt {job.loaded.path}"
    else:
        images, labels = job.samples.images, job.samples.labels
        record.update(samples=str(job.samples_path), n=len(images), labels_from_file=labels is not None)
        source = f"samples {job.samples_path}"
    floor = None
    if opts.floor:
        other = "train" if opts.reference_split == "test" else "test"
        floor = reference_features(job.reference(other), other, extractor, job.cache_dir, n=len(images))
    result = score_images(images, ref, extractor, opts.settings, labels, floor)
    if floor is not None:
        result["floor"]["protocol"]["images"] = f"{len(floor.features)} real {other} images"
    baseline = None
    if job.images is not None and job.images.superres:  # beside bicubic upsampling of the same inputs
        record["superres"] = sr = upsampling_scores(images, job.images, ref, extractor, opts)
        result["model"].update(table_row(sr["model"]))
        baseline = ("bicubic", {**table_row(sr["bicubic"]), "fid": sr["bicubic"]["fid"]})
    elif job.images is not None and job.images.mask is None:  # SDEdit's faithfulness: each image's distance to its
        # init image (inpainting keeps the known pixels exactly, so the distance says little there)
        record["faithfulness"] = faithfulness(images, job.images)
        result["model"]["start_rmse"] = record["faithfulness"]["rmse"]
    if opts.cas:  # the recipe on the images, tested on the real test split, beside it on as many real images
        cas = classification_accuracy_score(images, labels, job.reference("train"), job.reference("test"),
                                            steps=opts.cas_steps, seed=opts.seed, device=job.device,
                                            cache_dir=job.cache_dir)
        record["cas"] = cas
        result["model"]["cas"] = cas["accuracy"]
        if result["floor"] is not None:
            result["floor"]["cas"] = cas["real_accuracy"]
    record.update(metrics=result["model"], floor=result["floor"], score_seconds=result["score_seconds"],
                  wall_seconds=round(time.perf_counter() - t_start, 2), options=asdict(opts))
    job.out_dir.mkdir(parents=True, exist_ok=True)
    (job.out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    if opts.save_reference and job.stats_file is None:
        write_stats(job.out_dir / "reference_stats.npz", ref, extractor, job.data, opts.reference_split)
    print_metrics(f"{source}: {len(images)} images vs {description} ({extractor.name} features)",
                  result["model"], result["floor"], baseline)
    log.info("wrote %s (%.1f s)", job.out_dir / "metrics.json", record["wall_seconds"])
    return job.out_dir


def upsampling_scores(images: np.ndarray, start: StartImages, ref: Reference, extractor: Extractor,
                      opts: EvalOptions) -> dict:
    """A super-resolution model's images (n,H,W,C) uint8 and bicubic upsampling of the same low-res inputs, each
    scored against the originals (PSNR, SSIM, when known) and its own input (consistency); bicubic's FID too."""
    index = torch.arange(len(images)) % len(start.images)
    low, truth = start.images[index], None if start.truth is None else start.truth[index.numpy()]  # (n,C,h,w)
    bicubic = to_uint8(upsample(low, images.shape[1]))  # (n,H,W,C)
    out = {"model": superres_scores(images, low, truth), "bicubic": superres_scores(bicubic, low, truth)}
    out["bicubic"]["fid"] = score_images(bicubic, ref, extractor, opts.settings)["model"]["fid"]
    return out


def table_row(scores: dict) -> dict:
    """The metrics table's entries of `superres_scores`."""
    return {"psnr_db": scores.get("psnr_db"), "ssim": scores.get("ssim"),
            "consistency": scores["consistency"]["mean_abs_uint8"] / 255}


def reference(job, opts: EvalOptions, extractor: Extractor) -> tuple[Reference, dict, str]:
    """What the images are scored against, its record and its name: the features of the real split (cached), or
    the statistics of a reference= file, which the same extractor must have made."""
    if job.stats_file is None:
        ref = reference_features(job.data, opts.reference_split, extractor, job.cache_dir)
        return ref, {"split": opts.reference_split, "dataset": job.data.name}, f"{job.data.name} {opts.reference_split}"
    stats = job.stats_file
    if stats.extractor is None:
        log.warning("reference=%s records no extractor: taken as FID Inception statistics (as pytorch-fid and ADM "
                    "write them)", stats.path)
    elif stats.extractor != extractor.id:
        raise DiffuseError(f"reference={stats.path} was computed with {stats.extractor}, and this evaluation's "
                           f"extractor is {extractor.id}: statistics of other features cannot be compared")
    return (Reference(stats.stats), {"file": str(stats.path), "statistics_of": stats.source, "extractor": stats.extractor},
            f"{stats.path.name} ({stats.source})")

"""`diffuse distill search_walks=[2]`: the timesteps a consistency student's k-step walk takes, chosen among those it
was distilled on by the classifier FID of its images against the training split (step_search.search_subwalk), and
written into its checkpoint (`walk_at` in its distill record), which `diffuse sample` then walks at k steps."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from diffuse.checkpoint import load_checkpoint, load_model, metadata_config, save_checkpoint
from diffuse.features.classifier import classifier_extractor
from diffuse.features.reference import reference_features
from diffuse.generate import GenerationOptions, generate
from diffuse.metrics import frechet_distance, gaussian_stats
from diffuse.sampler_choice import checked_sampler
from diffuse.step_search import search_subwalk

log = logging.getLogger(__name__)

SEED = 1  # the searched images' noises: not diffuse sample's and eval's default seed (0), which score the walk after


def search_walks(job, opts, checkpoint: Path) -> dict[str, dict]:
    """For each k in opts.search_walks: the k-step walk of the student at `checkpoint` (EMA weights) through its
    distilled timesteps whose opts.search_n images have the lowest FID against the training split (the domain
    classifier's features, as train.eval_every scores). Writes the walks into the checkpoint's distill record as
    walk_at {k: timesteps}; returns {k: {timesteps, fid, start_fid, fid_of}} for student.json."""
    loaded = load_model(checkpoint, "ema")
    model, record = loaded.model, loaded.config["distill"]
    network = model.network.to(job.device).eval()
    classes = list(range(network.num_classes)) if network.conditional else None
    extractor = classifier_extractor(job.reference("train"), job.reference("test"), job.cache_dir, job.device)
    reference = reference_features(job.reference("train"), "train", extractor, job.cache_dir)
    found: dict[str, dict] = {}
    for k in opts.search_walks:
        generation = GenerationOptions(n=opts.search_n, batch_size=min(opts.search_n, 500), steps=k, seed=SEED,
                                       precision=opts.train.precision, clip_x0=opts.clip_x0, dynamic_threshold=0.0,
                                       guidance=1.0, guidance_rescale=0.0)

        def fid(walk: list[float]) -> float:
            sampler = checked_sampler(job.config["sampler"], model.schedule, k, tuple(walk), "distilled")
            features, _ = extractor(generate(model, sampler, generation, job.device, classes).images)
            value = frechet_distance(gaussian_stats(features), reference.stats)
            log.info("search_walks: %d steps through %s: FID %.3f (%d images, against the training split)", k,
                     [round(t, 1) for t in walk[:-1]], value, opts.search_n)
            return value

        t0 = time.perf_counter()
        searched, scores = search_subwalk(fid, record["timesteps"], k)
        found[str(k)] = {"timesteps": searched.timesteps, "fid": searched.loss, "start_fid": searched.start_loss,
                         "seconds": round(time.perf_counter() - t0, 1),
                         "fid_of": [{"timesteps": list(w), "fid": v} for w, v in scores.items()]}
        log.info("search_walks: the %d-step walk goes through %s (FID %.3f; every (N/k)-th: %.3f)", k,
                 [round(t, 1) for t in searched.timesteps[:-1]], searched.loss, searched.start_loss)
    tensors, metadata = load_checkpoint(checkpoint)
    config = metadata_config(metadata)
    config["distill"]["walk_at"] = {k: v["timesteps"] for k, v in found.items()}
    metadata["config"] = json.dumps(config, sort_keys=True)
    save_checkpoint([checkpoint], tensors, metadata)
    return found

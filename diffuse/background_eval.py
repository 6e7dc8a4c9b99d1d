"""`train.eval_every`: score snapshots of the EMA weights in one worker thread while training goes on."""

from __future__ import annotations

import copy
import logging
import threading
import time

import numpy as np
import torch

from diffuse import DiffuseError
from diffuse.denoiser import DiffusionModel
from diffuse.features.classifier import classifier_extractor
from diffuse.features.reference import reference_features
from diffuse.generate import GenerationOptions, generate
from diffuse.scoring import ScoreSettings, score

log = logging.getLogger(__name__)

KID_SUBSETS = 10  # a tenth of diffuse eval's: the evaluation must keep up with training
KID_SUBSET_SIZE = 1000  # capped at the number of images
PR_K = 3


class BackgroundEval:
    """Scores the EMA weights in one worker thread. The classifier and reference features are prepared in the
    worker too (at the first request). A request while the previous evaluation still runs is skipped, not
    queued; a failure disables evaluation with a warning and never stops training. Uses no global RNG state,
    so training stays reproducible. `job`: the TrainJob; `generation`: how its images are drawn."""

    def __init__(self, job, generation: GenerationOptions):
        self.job, self.generation = job, generation
        self.settings = ScoreSettings(KID_SUBSETS, KID_SUBSET_SIZE, PR_K, generation.seed)
        self._pending: tuple[threading.Thread, dict] | None = None  # a daemon thread: never holds up exit
        self._prepared: tuple | None = None
        self.disabled = False

    def _prepare(self) -> tuple:
        if self._prepared is None:
            job = self.job
            extractor = classifier_extractor(job.reference("train"), job.reference("test"), job.cache_dir, job.device)
            self._prepared = (extractor, reference_features(job.reference("test"), "test", extractor, job.cache_dir))
        return self._prepared

    def _evaluate(self, step: int, network: torch.nn.Module) -> tuple[int, dict]:
        extractor, ref = self._prepare()
        t0 = time.perf_counter()
        model = DiffusionModel(network, self.job.model.objective, self.job.model.schedule, self.job.model.shape)
        classes = list(range(network.num_classes)) if network.conditional else None
        drawn = generate(model, self.job.sampler, self.generation, self.job.device, classes)
        features, logits = extractor(drawn.images)
        asked = None if drawn.labels is None else torch.from_numpy(np.asarray(drawn.labels))
        result = score(features, logits, ref, self.settings, asked)
        result["eval_seconds"] = time.perf_counter() - t0
        return step, result

    def submit(self, step: int, ema: torch.nn.Module) -> None:
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

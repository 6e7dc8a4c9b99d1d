"""The baseline users would pick instead: a HuggingFace diffusers `UNet2DModel` trained the way diffusers'
`examples/unconditional_image_generation/train_unconditional.py` trains, and sampled with `DDIMPipeline`.

    python benchmarks/diffusers_baseline.py train --out DIR [--minutes 30] [--snapshots 10,30] [--batch-size 128]
    python benchmarks/diffusers_baseline.py sample --ckpt DIR/ema_30min.safetensors --n 2000 --steps 20 --out x.npz

Model: block channels 32/64/64, one ResNet layer per block, attention at the middle level (AttnDownBlock2D /
AttnUpBlock2D) plus diffusers' mid-block attention: 1.11M parameters, within 10% of diffuse's default
`unet_mnist` (1.11M; 1.19M before its shape was chosen for speed). Recipe, as the example's defaults:
DDPMScheduler (1000 linear steps, epsilon), AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6, eps 1e-8),
a cosine schedule with 500 warm-up steps over the planned steps, gradient clipping at 1.0, EMAModel (0.9999,
warm-up power 3/4), a torchvision DataLoader with per-image transforms (Resize, CenterCrop, ToTensor,
Normalize), `loss.item()` every step for the progress bar.
Mixed precision is what accelerate does on a CPU: `torch.autocast("cpu", bfloat16)` around the forward;
`--precision auto` (the default) picks it where the CPU computes bf16 natively, as diffuse's `auto` does.

Weights are written as safetensors (diffuse never unpickles anything). Needs `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffuse.precision import resolve

MNIST_ROOT = os.environ.get("DIFFUSE_DATA_ROOT", "./data")


def build_unet():
    """The matched-size diffusers UNet for 28x28x1 (1.11M parameters)."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        sys.exit("diffusers is not installed: pip install -e \".[bench]\" (it is a benchmark extra, not a dependency)")
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def loader(batch_size: int, seed: int):
    """MNIST through torchvision transforms and a DataLoader, as the example feeds its images."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(28, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.CenterCrop(28), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    try:
        data = datasets.MNIST(MNIST_ROOT, train=True, transform=tf, download=False)
    except RuntimeError as e:
        sys.exit(f"MNIST not found under {MNIST_ROOT}/MNIST/raw ({e}); set DIFFUSE_DATA_ROOT")
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True,
                                       generator=g)


class Trainer:
    """The example's training step, one call per optimizer step."""

    def __init__(self, batch_size: int = 128, precision: str = "fp32", planned_steps: int = 1000, seed: int = 0,
                 lr: float = 1e-4, warmup: int = 500):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        self.model = build_unet().train()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6,
                                           eps=1e-8)
        self.lr_scheduler = get_scheduler("cosine", optimizer=self.optimizer, num_warmup_steps=warmup,
                                          num_training_steps=planned_steps)
        self.ema = EMAModel(self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                            model_cls=type(self.model), model_config=self.model.config)
        self.batch_size, self.precision = batch_size, precision
        self.batches = self._batches(seed)
        self.step_count = 0

    def _batches(self, seed: int):
        epoch = 0
        while True:
            for x, _ in loader(self.batch_size, seed + epoch):
                yield x
            epoch += 1

    def step(self) -> float:
        clean = next(self.batches)
        noise = torch.randn(clean.shape)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (clean.shape[0],)).long()
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(noisy, timesteps).sample
        loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        self.ema.step(self.model.parameters())
        self.step_count += 1
        return loss.detach().item()  # the example logs it to the progress bar every step

    def ema_state(self) -> dict[str, torch.Tensor]:
        shadow = build_unet()
        self.ema.copy_to(shadow.parameters())
        return {k: v.contiguous() for k, v in shadow.state_dict().items()}


def ddim_pipeline(state: dict[str, torch.Tensor] | None = None):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler

    unet = build_unet().eval()
    if state is not None:
        unet.load_state_dict(state)
    scheduler = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").config)
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, n: int, steps: int, batch_size: int, seed: int, precision: str = "fp32") -> np.ndarray:
    """n images (n,28,28,1) uint8 from DDIMPipeline (eta 0), as a user would call it (bf16: under autocast)."""
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        g = torch.Generator().manual_seed(seed + start)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            images = pipe(batch_size=b, generator=g, num_inference_steps=steps, output_type="np").images  # (b,H,W,1)
        out.append(np.clip(np.round(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def cmd_train(args) -> None:
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snapshots = sorted(float(s) for s in args.snapshots.split(",")) if args.snapshots else [args.minutes]
    planned = args.planned_steps or max(1, round(args.minutes * 60 * args.rate / args.batch_size))
    precision = resolve(args.precision, torch.device("cpu"))  # auto: bf16 where native, as diffuse decides
    print(json.dumps({"precision": precision, "planned_steps": planned}), flush=True)
    trainer = Trainer(args.batch_size, precision, planned, args.seed)
    log = open(out / "log.csv", "w")
    log.write("step,loss,elapsed_s\n")
    t0 = time.perf_counter()
    pending = list(snapshots)
    while pending:
        loss = trainer.step()
        elapsed = time.perf_counter() - t0
        if trainer.step_count % 25 == 0:
            log.write(f"{trainer.step_count},{loss:.5f},{elapsed:.1f}\n")
            log.flush()
        if elapsed >= pending[0] * 60:
            minutes = pending.pop(0)
            name = f"ema_{minutes:g}min.safetensors"
            save_file(trainer.ema_state(), str(out / name), metadata={"step": str(trainer.step_count),
                                                                       "elapsed_s": f"{elapsed:.1f}"})
            print(json.dumps({"snapshot": name, "step": trainer.step_count, "images": trainer.step_count * args.batch_size,
                              "elapsed_s": round(elapsed, 1), "planned_steps": planned}), flush=True)
            t0 += time.perf_counter() - t0 - elapsed  # saving is not training time


def cmd_sample(args) -> None:
    from safetensors.torch import load_file

    pipe = ddim_pipeline(load_file(args.ckpt))
    t0 = time.perf_counter()
    precision = resolve(args.precision, torch.device("cpu"))
    images = generate(pipe, args.n, args.steps, args.batch_size, args.seed, precision)
    np.savez(args.out, images=images)
    print(json.dumps({"n": args.n, "steps": args.steps, "precision": precision,
                      "seconds": round(time.perf_counter() - t0, 1)}))


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=30.0)
    t.add_argument("--snapshots", default="", help="minutes at which to save EMA weights (default: --minutes)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    t.add_argument("--rate", type=float, default=50.0, help="expected images/s, to plan the cosine schedule")
    t.add_argument("--planned-steps", type=int, default=0, help="cosine horizon (default: minutes x rate / batch)")
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("sample")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--batch-size", type=int, default=250)
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    args = ap.parse_args()
    {"train": cmd_train, "sample": cmd_sample}[args.cmd](args)


if __name__ == "__main__":
    main()

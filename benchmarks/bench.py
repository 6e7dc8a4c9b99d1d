"""`make bench`: diffuse's default MNIST model against a diffusers UNet2DModel of matched size, side by side.

    python benchmarks/bench.py [--batch-size 128] [--seconds 40] [--sample-n 128] [--levers] [--no-diffusers]

Every figure runs in its own process (clean peak memory, no warm caches shared):
- training images/s, fp32 and bf16 autocast: diffuse through its real training loop (`diffuse.train.train`,
  median of 2-step timing rows after the first); diffusers through the recipe of its
  `train_unconditional.py` example (benchmarks/diffusers_baseline.py; median step after two warm-up steps);
  same batch size, each for about --seconds;
- sampling images/s with DDIM at 10 and 50 network evaluations, --sample-n images at the best precision of
  each (diffuse's `generate` with `precision=auto`, diffusers' `DDIMPipeline` under bf16 autocast where the CPU
  has native bf16, as `auto` decides), after one warm-up call;
- peak resident memory of each process (interpreter, torch, the data set and the work).
`--levers` adds the speed levers, each switched on its own in a replica of diffuse's training step (same
loss, optimizer, EMA and data code) and compared with the shipped settings in the same run.
Training rows also carry FLOPs per image (torch's FlopCounterMode, forward + backward), the achieved FLOP/s
and, for bf16 on a known CUDA GPU, the model FLOP utilisation; on a GPU, every row has its peak GPU memory.
`--compile` adds compiled training rows (`--compile-backend`, default inductor): the model is compiled first
(forward + backward at the training shape, timed and reported), so that the loop's own compile finds the caches
warm. On a GPU, a CIFAR-sized run:

    python benchmarks/bench.py --model unet_cifar --set dataset.channels=3 --set dataset.image_size=32 \
        --precisions bf16 --compile --batch-size 256 --nfe 50

(MNIST resized to 32x32x3 stands in for CIFAR-10: the same tensors, no download; the diffusers baseline
runs only beside the default MNIST model, on the CPU.) Writes benchmarks/results/bench.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
sys.path.insert(0, str(HERE))


def synchronize() -> None:
    """Wait for queued GPU work (it runs asynchronously), so that a timer read after this covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="diffuse.conf", version_base="1.3"):
        return hydra_compose(config_name=name, overrides=overrides)


# ---------------------------------------------------------------------------------------------- measurements


def train_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """FLOPs of one training step per image (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, *shape, device=device)  # (2,C,H,W)
    t = torch.tensor([10.0, 500.0], device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


# Dense bf16 tensor-core peaks (FLOP/s) for model FLOP utilisation; other devices report no MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "RTX 4090": 165e12}


def mfu(flops_per_s: float, device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return None if peak is None else flops_per_s / peak


def train_job(cfg, out: str):
    """diffuse's training job for a composed config, as `diffuse train` builds it: (job, options)."""
    from diffuse.config import options
    from diffuse.run import Context, build_train
    from diffuse.train import TrainOptions

    opts = options(TrainOptions, cfg.train, "train.")
    return build_train(cfg, Context(Path(out)), opts), opts


def train_diffuse(precision: str, batch_size: int, seconds: float, model: str = "unet_mnist",
                  overrides: list[str] = (), compile: bool = False, backend: str = "inductor") -> dict:
    """The real training loop for about `seconds`; images/s from its own metrics.csv rows."""
    from dataclasses import replace

    from diffuse.precision import resolve
    from diffuse.train import train

    cfg = compose("train", [f"model={model}", f"train.precision={precision}", f"train.batch_size={batch_size}",
                            f"train.compile={str(compile).lower()}", f"train.compile_backend={backend}",
                            "train.steps=1000000", "train.log_every=2",
                            "train.sample_every=0", "train.sample_n=1", "train.sample_steps=1", "train.ckpt_every=0",
                            *overrides])
    with tempfile.TemporaryDirectory() as out:
        job, opts = train_job(cfg, out)
        numeric = resolve(precision, job.device)
        network = job.model.network
        params = sum(p.numel() for p in network.parameters())
        flops = train_flops_per_image(network.to(job.device), job.model.shape, job.device)
        compile_s = compile_warmup(job, batch_size, numeric, backend) if compile else 0.0
        # the time budget (set here, once compile_s is known): the loop's deadline counts from its first step,
        # and a compile it repeats (cache miss) must not eat the timing
        train(job, replace(opts, max_minutes=(max(seconds, 1.0) + compile_s) / 60))
        rows = [r for r in csv.DictReader(open(Path(out) / "metrics.csv")) if r["images_per_s"]]
    rates = [float(r["images_per_s"]) for r in rows[1:-1]] or [float(rows[-1]["images_per_s"])]
    ips = statistics.median(rates)
    util = mfu(flops * ips, job.device, numeric)
    return {"params": params, "images_per_s": ips, "steps": int(rows[-1]["step"]), "device": str(job.device),
            "train_GFLOP_per_image": round(flops / 1e9, 3), "achieved_TFLOP_per_s": round(flops * ips / 1e12, 3),
            **({"compile_s": round(compile_s, 1), "compile_backend": backend} if compile else {}),
            **({"mfu": round(util, 4)} if util is not None else {})}


def compile_warmup(job, batch_size: int, numeric: str, backend: str = "inductor") -> float:
    """Seconds to torch.compile the model's training step (forward + backward at the training batch shape),
    done before the timed loop so that the loop's own compile finds the caches warm."""
    from diffuse.loss import diffusion_loss
    from diffuse.precision import autocast

    model = job.model.network.to(job.device).train()
    forward = torch.compile(model, backend=backend)
    x0 = torch.randn(batch_size, *job.model.shape, device=job.device)  # (B,C,H,W)
    generator = torch.Generator(job.device).manual_seed(0)
    t = time.perf_counter()
    for _ in range(2):  # the second call catches a recompile
        with autocast(numeric, job.device):
            loss = diffusion_loss(forward, job.model.objective, job.model.schedule, x0, generator)
        loss.backward()
        synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def time_steps(step, batch_size: int, seconds: float, warmup: int = 2, min_steps: int = 3) -> dict:
    """Call step() `warmup` times, then until `seconds` have passed (at least min_steps); median images/s."""
    for _ in range(warmup):
        step()
    synchronize()
    times, t0 = [], time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - t)
    return {"images_per_s": batch_size / statistics.median(times), "steps": len(times) + warmup}


def train_diffusers(precision: str, batch_size: int, seconds: float) -> dict:
    import diffusers_baseline

    trainer = diffusers_baseline.Trainer(batch_size, precision)
    result = time_steps(trainer.step, batch_size, seconds)
    return {"params": sum(p.numel() for p in trainer.model.parameters()), **result}


def sample_diffuse(nfe: int, n: int, batch_size: int, precision: str = "auto", channels_last: bool = False,
                   model_name: str = "unet_mnist", overrides: list[str] = ()) -> dict:
    from dataclasses import replace

    from diffuse.config import options
    from diffuse.generate import generate
    from diffuse.precision import resolve
    from diffuse.sample import SampleOptions

    cfg = compose("train", [f"model={model_name}", "sampler=ddim", *overrides])
    with tempfile.TemporaryDirectory() as out:
        job, _ = train_job(cfg, out)
    network = job.model.network.to(job.device).eval().requires_grad_(False)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    model = replace(job.model, network=network)
    numeric = resolve(precision, job.device)
    defaults = options(SampleOptions, compose("sample", ["ckpt=x"]), strict=False)  # as diffuse sample (x0 clipped)

    def draw(k: int, steps: int):
        return generate(model, job.sampler, replace(defaults, n=k, batch_size=batch_size, steps=steps, seed=0,
                                                    precision=numeric), job.device)

    draw(min(n, batch_size), 2)  # warm-up
    synchronize()
    t = time.perf_counter()
    draw(n, nfe)  # DDIM: one network evaluation per step
    synchronize()
    return {"images_per_s": n / (time.perf_counter() - t), "precision": numeric}


def sample_diffusers(nfe: int, n: int, batch_size: int) -> dict:
    import diffusers_baseline
    from diffuse.precision import resolve

    numeric = resolve("auto", torch.device("cpu"))  # bf16 autocast where native, as for diffuse
    pipe = diffusers_baseline.ddim_pipeline()
    diffusers_baseline.generate(pipe, min(n, batch_size), 2, batch_size, 0, numeric)  # warm-up
    t = time.perf_counter()
    diffusers_baseline.generate(pipe, n, nfe, batch_size, 0, numeric)
    return {"images_per_s": n / (time.perf_counter() - t), "precision": numeric}


# Each lever on its own, in a replica of diffuse.train's step (the same functions, minus logging and checkpoints).
LEVERS = {  # name -> (what changes, settings)
    "shipped": ("the shipped settings (precision auto, in-memory data, foreach EMA, no per-step sync)", {}),
    "bf16": ("bf16 autocast (forward and loss)", {"precision": "bf16"}),
    "fp32": ("fp32 (no autocast)", {"precision": "fp32"}),
    "channels_last": ("channels_last memory format for weights and batches", {"channels_last": True}),
    "compile": ("torch.compile of the model (compile time excluded)", {"compile": True}),
    "adamw_foreach": ("AdamW foreach=True (multi-tensor)", {"optim": {"foreach": True}}),
    "adamw_fused": ("AdamW fused=True", {"optim": {"fused": True}}),
    "adamw_loop": ("AdamW foreach=False (one kernel per parameter)", {"optim": {"foreach": False}}),
    "ema_loop": ("EMA as a per-parameter loop instead of torch._foreach_lerp_", {"ema": "loop"}),
    "sync_every_step": ("loss.item() every step (a host sync) instead of at log steps", {"sync": True}),
    "dataloader": ("torchvision DataLoader with per-image transforms instead of the in-memory tensor",
                   {"data": "dataloader"}),
    "attn_7": ("self-attention at 7x7 as well as in the middle block", {"model": ["model.attention_levels=[2]"]}),
    "attn_14": ("self-attention at 14x14 and 7x7 as well", {"model": ["model.attention_levels=[1,2]"]}),
    "upsample_keeps_width": ("the up path's conv keeps the width (64 channels enter the 28x28 level, not 32)",
                             {"model": ["model.upsample_narrows=false"]}),
    "upsample_ddpm": ("DDPM's upsampling: 2x nearest, then the conv at the high resolution, keeping the width",
                      {"model": ["model.upsample=nearest_conv", "model.upsample_narrows=false"]}),
    "previous_default": ("the earlier default: DDPM's upsampling and attention at 7x7 too (1.19M parameters)",
                         {"model": ["model.upsample=nearest_conv", "model.upsample_narrows=false",
                                    "model.attention_levels=[2]"]}),
    "narrow_28": ("widths 16/64/64 instead of 32/64/64 (fewer FLOPs at 28x28; 0.92M parameters)",
                  {"model": ["model.channels=16", "model.channel_mult=[1,4,4]"]}),
    "wider": ("widths 48/96/96 instead of 32/64/64 (2.5M parameters)", {"model": ["model.channels=48"]}),
    "two_blocks": ("2 residual blocks per level instead of 1", {"model": ["model.num_res_blocks=2"]}),
    "batch_64": ("batch 64 instead of --batch-size (the MNIST CPU preset's batch)", {"batch": 64}),
}


def train_lever(name: str, batch_size: int, seconds: float, model_name: str = "unet_mnist",
                overrides: list[str] = ()) -> dict:
    from diffuse import precision as prec
    from diffuse.data import BatchIterator
    from diffuse.ema import ema_decay, ema_update
    from diffuse.loss import diffusion_loss

    what, s = LEVERS[name]
    batch_size = s.get("batch", batch_size)
    cfg = compose("train", [f"model={model_name}", f"train.batch_size={batch_size}", *overrides,
                            *[f"+optimizer.{k}={v}" for k, v in s.get("optim", {}).items()], *s.get("model", [])])
    with tempfile.TemporaryDirectory() as out:
        job, _ = train_job(cfg, out)
    device, schedule, objective = job.device, job.model.schedule, job.model.objective
    model = job.model.network.to(device).train()
    fmt = torch.channels_last if s.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = job.optimizer(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if s.get("compile") else model
    numeric = prec.resolve(s.get("precision", cfg.train.precision), device)
    generator = torch.Generator(device).manual_seed(0)
    if s.get("data") == "dataloader":
        import diffusers_baseline

        def batches():
            while True:
                for x, y in diffusers_baseline.loader(batch_size, 0):
                    yield x.to(device), y.to(device)
        data = batches()
    else:
        data = BatchIterator(job.data, batch_size, device, 0)
    ema_params = [p for p in ema.parameters()]
    model_params = [p for p in model.parameters()]
    loss_sum = torch.zeros((), device=device)
    counter = [0]

    def step():
        counter[0] += 1
        x0, _ = next(data)
        x0 = x0.contiguous(memory_format=fmt)
        with prec.autocast(numeric, device):
            loss = diffusion_loss(forward, objective, schedule, x0, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model_params, 1.0)
        optimizer.step()
        decay = ema_decay(counter[0], 0.999, True)
        if s.get("ema") == "loop":
            with torch.no_grad():
                for e, m in zip(ema_params, model_params):
                    e.lerp_(m, 1 - decay)
        else:
            ema_update(ema, model, decay)
        if s.get("sync"):
            loss.item()
        else:
            loss_sum.add_(loss.detach())

    result = time_steps(step, batch_size, seconds, warmup=3 if s.get("compile") else 2)
    return {"params": sum(p.numel() for p in model_params), "precision": numeric, "batch_size": batch_size, **result}


def measure(spec: dict) -> dict:
    kind = spec["kind"]
    model, overrides = spec.get("model", "unet_mnist"), spec.get("overrides", [])
    if kind == "train" and spec["impl"] == "diffuse":
        result = train_diffuse(spec["precision"], spec["batch_size"], spec["seconds"], model, overrides,
                               spec.get("compile", False), spec.get("compile_backend", "inductor"))
    elif kind == "train":
        result = train_diffusers(spec["precision"], spec["batch_size"], spec["seconds"])
    elif kind == "sample" and spec["impl"] == "diffuse":
        result = sample_diffuse(spec["nfe"], spec["n"], spec["batch_size"], spec.get("precision", "auto"),
                                spec.get("channels_last", False), model, overrides)
    elif kind == "sample":
        result = sample_diffusers(spec["nfe"], spec["n"], spec["batch_size"])
    else:
        result = train_lever(spec["lever"], spec["batch_size"], spec["seconds"], model, overrides)
    result["images_per_s"] = round(result["images_per_s"], 2)
    gpu = {"peak_gpu_MB": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if torch.cuda.is_available() else {}
    return {**spec, **result, "peak_rss_MB": peak_rss_mb(), **gpu, "threads": torch.get_num_threads()}


def run_one(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"benchmark {spec} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {json.dumps(result)}", flush=True)
    return result


# ---------------------------------------------------------------------------------------------- the report


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cap = torch.backends.cpu.get_cpu_capability()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{name} ({cap}), {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def fmt(x: float | None, unit: str = "") -> str:
    return "—" if x is None else f"{x:,.1f}{unit}"


def table(results: list[dict], have_diffusers: bool) -> list[str]:
    def get(impl, kind, **kw):
        for r in results:
            if r["impl"] == impl and r["kind"] == kind and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    impls = ["diffuse", "diffusers"] if have_diffusers else ["diffuse"]
    model = results[0].get("model", "unet_mnist")
    head = f"| | diffuse `{model}` | diffusers `UNet2DModel` | diffuse ÷ diffusers |" if have_diffusers else \
        f"| | diffuse `{model}` on {results[0].get('device', 'cpu')} |"
    lines = [head, "|---|---|---|---|" if have_diffusers else "|---|---|"]

    def row(label, values, higher_better=True):
        cells = [fmt(v) for v in values]
        if have_diffusers:
            a, b = values
            ratio = "—" if a is None or b is None else f"**{(a / b if higher_better else b / a):.2f}x**"
            cells.append(ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    train = {(i, p): get(i, "train", precision=p, compile=None) for i in impls for p in ("fp32", "bf16")}
    params = [next((r["params"] / 1e6 for r in results if r["impl"] == i and "params" in r), None) for i in impls]
    lines.append("| parameters | " + " | ".join(f"{p:.2f}M" if p else "—" for p in params)
                 + (f" | {params[0] / params[1]:.2f} |" if have_diffusers and all(params) else " |"))
    for p in ("fp32", "bf16"):
        if any(train[(i, p)] for i in impls):
            row(f"training images/s, {p}", [train[(i, p)]["images_per_s"] if train[(i, p)] else None for i in impls])
    best = {i: max((train[(i, p)] for p in ("fp32", "bf16") if train[(i, p)]), key=lambda r: r["images_per_s"],
                   default=None) for i in impls}
    row("training images/s, each at its best precision (" + " / ".join(
        best[i]["precision"] if best[i] else "—" for i in impls) + ")",
        [best[i]["images_per_s"] if best[i] else None for i in impls])
    for p in ("fp32", "bf16"):
        compiled = get("diffuse", "train", precision=p, compile=True)
        if compiled:
            row(f"training images/s, {p}, torch.compile", [compiled["images_per_s"]] + [None] * (len(impls) - 1))
            row(f"torch.compile time (forward + backward, before the timed loop), {p}, s",
                [compiled["compile_s"]] + [None] * (len(impls) - 1), higher_better=False)
    flops = next((r for r in results if r["kind"] == "train" and "train_GFLOP_per_image" in r), None)
    if flops:
        row("training GFLOP per image (forward + backward)", [flops["train_GFLOP_per_image"]] + [None] * (len(impls) - 1))
        for r in results:
            if r["kind"] == "train" and r["impl"] == "diffuse":
                label = f"{r['precision']}{', compiled' if r.get('compile') else ''}"
                util = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
                lines.append(f"| achieved TFLOP/s, {label} | {r['achieved_TFLOP_per_s']:.3f}{util} |"
                             + (" | |" if have_diffusers else ""))
    for nfe in sorted({r["nfe"] for r in results if r["kind"] == "sample"}):
        row(f"sampling images/s, DDIM {nfe} NFE", [(get(i, "sample", nfe=nfe) or {}).get("images_per_s") for i in impls])
    row("peak RSS of the best-precision training process, MB",
        [best[i]["peak_rss_MB"] if best[i] else None for i in impls], higher_better=False)
    if any(best[i] and "peak_gpu_MB" in best[i] for i in impls):
        row("peak GPU memory allocated by it, MB", [(best[i] or {}).get("peak_gpu_MB") for i in impls],
            higher_better=False)
    return lines


def lever_table(results: list[dict]) -> list[str]:
    base = next(r for r in results if r["lever"] == "shipped")["images_per_s"]
    lines = ["| lever | what changes | images/s | vs shipped |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['lever']} | {LEVERS[r['lever']][0]} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / base:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=40.0, help="timed seconds per training figure")
    ap.add_argument("--sample-n", type=int, default=128)
    ap.add_argument("--sample-batch", type=int, default=128)
    ap.add_argument("--nfe", default="10,50")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--no-diffusers", action="store_true", help="skip the diffusers baseline")
    ap.add_argument("--model", default="unet_mnist", help="diffuse model config (the baseline runs for unet_mnist only)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for diffuse, e.g. --set dataset.channels=3 --set dataset.image_size=32")
    ap.add_argument("--compile", action="store_true", help="also train with train.compile=true")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile's backend for --compile")
    ap.add_argument("--levers", nargs="?", const="all", default="", help="also measure the levers (all or a,b,c)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for bench.json and bench.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    impls = ["diffuse"]
    if not args.no_diffusers and args.model == "unet_mnist" and not args.set:
        if importlib.util.find_spec("diffusers") is None:
            sys.exit('the diffusers baseline needs `pip install -e ".[bench]"`, or pass --no-diffusers')
        impls.append("diffusers")
    base = {"model": args.model, "overrides": args.set}
    specs = [{"kind": "train", "impl": i, "precision": p, "batch_size": args.batch_size, "seconds": args.seconds,
              **base} for p in args.precisions.split(",") for i in impls]
    if args.compile:
        specs += [{"kind": "train", "impl": "diffuse", "precision": p, "batch_size": args.batch_size,
                   "seconds": args.seconds, "compile": True, "compile_backend": args.compile_backend, **base}
                  for p in args.precisions.split(",")]
    specs += [{"kind": "sample", "impl": i, "nfe": int(nfe), "n": args.sample_n, "batch_size": args.sample_batch,
               **base} for nfe in args.nfe.split(",") for i in impls]
    levers = list(LEVERS) if args.levers == "all" else [x for x in args.levers.split(",") if x]
    if levers and "shipped" not in levers:
        levers.insert(0, "shipped")
    specs += [{"kind": "lever", "impl": "diffuse", "lever": name, "batch_size": args.batch_size,
               "seconds": args.seconds, **base} for name in levers]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "command": " ".join(["python", "benchmarks/bench.py", *sys.argv[1:]])}
    print(f"{meta['machine']}: {len(specs)} measurements", flush=True)
    results = [run_one(spec) for spec in specs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    core = [r for r in results if r["kind"] != "lever"]
    lines = [f"{meta['date']}, {meta['machine']}; `{meta['command']}`; model {args.model}; batch {args.batch_size}, "
             f"sampling {args.sample_n} images in batches of {args.sample_batch}", "", *table(core, "diffusers" in impls)]
    lever_rows = [r for r in results if r["kind"] == "lever"]
    if lever_rows:
        lines += ["", *lever_table(lever_rows)]
    (args.out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

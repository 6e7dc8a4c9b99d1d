"""Exact denoisers for data whose posterior mean E[x0 | x_t] is closed form (DESIGN.md sec. 7)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GaussianMixture:
    """1-D data x0 ~ sum_k w_k N(mu_k, s_k^2), applied to every pixel independently."""

    def __init__(self, weights, means, stds):
        self.w, self.mu, self.s = (torch.tensor(v, dtype=torch.float64) for v in (weights, means, stds))

    @property
    def mean(self) -> float:
        return float((self.w * self.mu).sum())

    @property
    def std(self) -> float:
        second = (self.w * (self.s**2 + self.mu**2)).sum()
        return float((second - self.mean**2).sqrt())

    def cdf(self, x: float) -> float:
        z = (x - self.mu) / (self.s * math.sqrt(2))
        return float((self.w * 0.5 * (1 + torch.erf(z))).sum())

    def quantile(self, p: Tensor) -> Tensor:
        """F^{-1}(p) for probabilities p (n,), by bisection on the CDF to float64 round-off."""
        lo = torch.full_like(p, float((self.mu - 40 * self.s).min()))
        hi = torch.full_like(p, float((self.mu + 40 * self.s).max()))
        for _ in range(80):
            mid = (lo + hi) / 2
            below = (self.w * 0.5 * (1 + torch.erf((mid.unsqueeze(-1) - self.mu) / (self.s * math.sqrt(2))))).sum(-1) < p
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    def x0_mean(self, x_t: Tensor, alpha: float, sigma: float) -> Tensor:
        """E[x0 | x_t] for x_t = alpha x0 + sigma eps: responsibilities times per-component posterior means."""
        x = x_t.double().unsqueeze(-1)  # (..., 1) against (K,)
        var = alpha**2 * self.s**2 + sigma**2  # marginal variance of x_t per component
        log_r = self.w.log() - 0.5 * (x - alpha * self.mu) ** 2 / var - 0.5 * var.log()
        r = torch.softmax(log_r, dim=-1)
        post = self.mu + alpha * self.s**2 / var * (x - alpha * self.mu)
        return (r * post).sum(-1).to(x_t.dtype)

    def denoiser(self, schedule):
        """(x_t, t) -> (eps, x0) with the exact x0 = E[x0 | x_t]."""

        def denoise(x_t: Tensor, t: float):
            alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
            x0 = self.x0_mean(x_t, alpha, sigma)
            return (x_t - alpha * x0) / sigma, x0

        return denoise


class ImageMixture:
    """Images x0 ~ (1/N) sum_k N(mu_k, s^2 I) for N real images mu_k (N,C,H,W) in [-1, 1]: a Gaussian mixture with
    the structure of images at every noise level, whose E[x0 | x_t] is still closed form."""

    def __init__(self, images: Tensor, std: float, dtype: torch.dtype = torch.float64):
        self.mu, self.s = images.to(dtype).flatten(1), std  # (N,D), computed in `dtype`
        self.shape, self.norms = images.shape[1:], (self.mu**2).sum(1)  # (C,H,W), (N,)

    def x0_mean(self, x_t: Tensor, alpha: float, sigma: float) -> Tensor:
        """E[x0 | x_t] for x_t = alpha x0 + sigma eps (B,C,H,W): equal-weight responsibilities (the components share
        one variance) times each component's posterior mean mu_k + alpha s^2 / var (x_t - alpha mu_k)."""
        x = x_t.to(self.mu.dtype).flatten(1)  # (B,D)
        var = alpha**2 * self.s**2 + sigma**2
        r = torch.softmax((2 * alpha * x @ self.mu.T - alpha**2 * self.norms) / (2 * var), dim=1)  # (B,N)
        mean = r @ self.mu  # (B,D)
        return (mean + alpha * self.s**2 / var * (x - alpha * mean)).view(x_t.shape).to(x_t.dtype)

    denoiser = GaussianMixture.denoiser


# The defaults' exact answer (tests/test_default_spacings.py, benchmarks/defaults.py): MNIST digits in the mixture,
# each digit's std, starts walked; a spacing within TOLERANCE x the best error plus SLACK counts as the best (SLACK:
# an RMS error of 0.01 is 1.3 grey levels of 255, and about what one start of 64 landing on another digit adds).
IMAGES, STD, NOISES, TOLERANCE, SLACK = 256, 0.2, 64, 1.1, 0.01


def mnist_mixture(root, n: int, std: float, seed: int = 0, dtype: torch.dtype = torch.float64) -> ImageMixture:
    """The ImageMixture of `n` MNIST training digits (a seeded draw) read from `root`, each a Gaussian of `std`."""
    from diffuse.datasets.mnist import mnist
    from diffuse.images import from_uint8

    data = mnist(str(root), train=True, download=False)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return ImageMixture(from_uint8(data.images[pick].permute(0, 2, 3, 1).numpy()), std, dtype)


def ode_w1(sampler, schedule, steps: int, data: GaussianMixture, n: int = 2000) -> float:
    """W1 between `data` and what a deterministic sampler makes of N(0, 1) through data's exact denoiser, free of
    sampling noise: the start is N(0, 1)'s quantiles at (i + 1/2)/n, the walk in 1-D keeps their order, so the
    sorted result is its quantile function, compared with data's at the same points (midpoint rule)."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x_T = (math.sqrt(2) * torch.erfinv(2 * p - 1)).view(n, 1, 1, 1)  # (n,1,1,1)
    x = sampler(data.denoiser(schedule), schedule, x_T, sampler.check(schedule, steps)).flatten().sort().values
    return (x - data.quantile(p)).abs().mean().item()


def steps_for_nfe(sampler, schedule, nfe: int) -> int | None:
    """The most steps whose model evaluations (as the sampler declares them) do not exceed `nfe`."""
    fits = [s for s in range(1, schedule.T + 1) if sampler.facts.evaluations(s) <= nfe]
    return max(fits) if fits else None


def spacing_errors(sampler, schedule, nfe: int, denoise, x_T: Tensor, reference: Tensor) -> tuple[int, dict]:
    """One deterministic sampler at `nfe` evaluations with each spacing it can take on `schedule`: the steps, and
    spacing -> the mean over starts x_T (B,C,H,W) of the RMS pixel distance between the walk's end and `reference`
    (the same starts walked to convergence: the ODE's exact answer). Spacings the sampler refuses are left out."""
    import dataclasses

    from diffuse import DiffuseError
    from diffuse.schedule import SPACINGS

    steps, errors = steps_for_nfe(sampler, schedule, nfe), {}
    for spacing in SPACINGS:
        walker = dataclasses.replace(sampler, spacing=spacing)
        try:
            ts = walker.check(schedule, steps)
        except DiffuseError:
            continue
        x = walker(denoise, schedule, x_T, ts)
        errors[spacing] = (x - reference).pow(2).flatten(1).mean(1).sqrt().mean().item()
    return steps, errors


def ode_answer(schedule, denoise, x_T: Tensor) -> Tensor:
    """The starts x_T (B,C,H,W) walked to the probability-flow ODE's answer: DPM-Solver++(2M) over 500 trailing
    steps (on the MNIST mixture within ~1e-3 RMS of 1000 steps on DDPM's linear schedule, closer on the others)."""
    from diffuse.samplers.dpmpp_2m import dpmpp_2m

    return dpmpp_2m(denoise, schedule, x_T, schedule.timesteps(500, "trailing"))


def point_mass_denoiser(c: float, schedule):
    """Data that is always c: the exact x0 is c, and eps follows from x_t."""

    def denoise(x_t: Tensor, t: float):
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        x0 = torch.full_like(x_t, c)
        return (x_t - alpha * x0) / sigma, x0

    return denoise


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """The slope of -log(error) against log(steps), by least squares."""
    xs, ys = [math.log(s) for s in steps], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def exact_network(objective, schedule, data: GaussianMixture):
    """The minimiser of `objective`'s training loss for `data`: at time input `time` its input is a x0 + b eps
    (objective.noising), so E[x0 | input] is closed form, and E[target | input] is the objective's target at
    (E[x0 | input], E[eps | input]), the target being affine in (x0, eps). (x (B,C,H,W), time (B,)) -> output."""

    def network(x: Tensor, time: Tensor, labels=None) -> Tensor:
        a, b = objective.noising(schedule, time)  # (B,1,1,1) each
        x0 = data.x0_mean(x.double(), a.double()[..., None], b.double()[..., None])
        return objective.target(schedule, x0, (x.double() - a * x0) / b, time)

    return network


def objective_denoiser(objective, schedule, data: GaussianMixture):
    """A sampler's denoiser (x_t, t) -> (eps, x0) that reads the exact network through the objective, as a trained
    network is read (diffuse.denoiser.ModelDenoiser, without its float32 cast)."""
    network = exact_network(objective, schedule, data)

    def denoise(x_t: Tensor, t: float):
        x_in, time = objective.network_input(schedule, x_t, t)
        return objective.to_eps_x0(network(x_in, time.double()), x_t, schedule, t)

    return denoise

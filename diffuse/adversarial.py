"""An adversarial term for a distillation loss (as adversarial diffusion distillation adds one to its distillation
loss: Sauer et al. 2023, eq. 5): a discriminator trained beside the student, with the hinge loss (Lim & Ye 2017) and
spectral normalisation (Miyato et al. 2018), tells the training split's images from the student's x0; the student's
loss gains -weight * D(x0). Pure: no I/O; the discriminator's weights start from the caller's seed."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffuse import DiffuseError
from diffuse.consistency import ConsistencyLoss, Curriculum
from diffuse.objectives import Objective
from diffuse.progressive import ProgressiveLoss
from diffuse.schedule import Schedule
from diffuse.train_state import optimizer_tensors, restore_optimizer

# the discriminator's Adam (learning rate, betas): a constant rate, as the hinge-loss GANs it follows train theirs
LR, BETAS = 2e-4, (0.0, 0.99)
PREFIX = "disc."  # its weights and moments in a checkpoint: disc.weights.*, disc.optim.*


def discriminator(channels: int, size: int) -> nn.Module:
    """A small convolutional critic of (B,channels,size,size) images in [-1, 1] -> (B,): spectrally normalised
    stride-2 convolutions (32, 64, 128, then 256 channels) down to 4x4 or less, then a linear layer of their mean."""
    norm, layers, width, side = nn.utils.parametrizations.spectral_norm, [], channels, size
    while True:
        out = min(32 << len(layers) // 2, 256)
        layers += [norm(nn.Conv2d(width, out, 4 if side % 2 == 0 else 3, 2, 1)), nn.LeakyReLU(0.2)]
        width, side = out, (side + 1) // 2
        if side <= 4:
            break
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), norm(nn.Linear(width, 1)), nn.Flatten(0))


class AdversarialLoss:
    """A distillation loss (`base`: a halving round's, a consistency run's, or a consistency Curriculum) plus `weight`
    times the hinge generator loss -D(x0) of the student's x0 (clamped to [-1, 1] as sampling does). Each call first
    trains the discriminator one Adam step on the batch's real images against the student's (detached) x0:
    mean(relu(1 - D(real))) + mean(relu(1 + D(fake))). Under torch.distributed, its gradients are averaged over the
    ranks, as DDP averages the student's. `state_tensors` / `load_state` carry the discriminator and its Adam moments
    through a checkpoint, so a resumed run continues exactly."""

    def __init__(self, base: ProgressiveLoss | ConsistencyLoss | Curriculum, weight: float,
                 shape: tuple[int, int, int], seed: int):
        if shape[1] != shape[2]:
            raise DiffuseError(f"the adversarial term's discriminator takes square images, got {list(shape)}")
        self.base, self.weight, self.teacher = base, weight, base.teacher
        with torch.random.fork_rng(devices=[]):  # its initial weights: the seed's, whatever ran before
            torch.manual_seed(seed)
            self.disc = discriminator(shape[0], shape[1])
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=LR, betas=BETAS)  # its state: made at its first step

    def to(self, device: torch.device) -> AdversarialLoss:
        """The critic on the student's device (its builders call this once, not every step)."""
        self.disc.to(device)  # in place: the optimizer's parameters move with it
        return self

    def at(self, step: int, end: int) -> AdversarialLoss:
        """The term over a Curriculum's loss of step `step` of `end` (the same critic); itself over any other loss."""
        if not isinstance(self.base, Curriculum):
            return self
        staged = copy.copy(self)
        staged.base = self.base.at(step, end)
        return staged

    def __call__(self, network: nn.Module, objective: Objective, schedule: Schedule, x0: Tensor,
                 generator: torch.Generator, labels: Tensor | None = None, drop_prob: float = 0.0,
                 null_label: int | None = None, part: slice = slice(None)) -> Tensor:
        """The base loss (its draws, unchanged) + weight * mean(-D(x0_student)), after one discriminator step."""
        loss, x0_student = self.base.terms(network, objective, schedule, x0, generator, labels, drop_prob,
                                           null_label, part)
        fake, real = x0_student.clamp(-1, 1), x0[part].float()  # (b,C,H,W) each
        with torch.autocast(x0.device.type, enabled=False):  # the critic in fp32: it is small
            d_loss = torch.relu(1 - self.disc(real)).mean() + torch.relu(1 + self.disc(fake.detach())).mean()
            self.opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                for p in self.disc.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
            self.opt.step()
            self.disc.requires_grad_(False)  # the generator's term reaches the student only
            g_loss = -self.disc(fake).mean()
            self.disc.requires_grad_(True)
        return loss + self.weight * g_loss

    def state_tensors(self) -> dict[str, Tensor]:
        """The discriminator's weights (spectral norm's vectors included) and Adam moments, for a checkpoint: copies,
        so that training on does not change them."""
        optim = optimizer_tensors(self.opt)[0]
        weights = {f"{PREFIX}weights.{k}": v.detach().cpu() for k, v in self.disc.state_dict().items()}
        return {k: v.clone(memory_format=torch.contiguous_format) for k, v in
                {**weights, **{PREFIX + k: v for k, v in optim.items()}}.items()}

    def load_state(self, tensors: dict[str, Tensor], source: str, device: torch.device) -> None:
        """Restore what state_tensors wrote from a checkpoint's tensors; a checkpoint without it is refused."""
        own = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        weights = {k[len("weights."):]: v for k, v in own.items() if k.startswith("weights.")}
        if not weights:
            raise DiffuseError(f"resume={source}: the checkpoint holds no discriminator ({PREFIX}* tensors) for this "
                               f"round's adversarial term; it was written by a round without one")
        try:
            self.disc.load_state_dict(weights)
        except RuntimeError as e:
            raise DiffuseError(f"resume={source}: its discriminator does not fit this one ({str(e)[:200]})") from None
        self.to(device)
        groups = self.opt.state_dict()["param_groups"]  # constant: the learning rate does not change
        restore_optimizer(self.opt, {k: v for k, v in own.items() if k.startswith("optim.")}, groups)

"""The halving rounds' adversarial term (diffuse.adversarial): its critic learns to tell real images from a student's,
the term moves the student towards what the critic calls real, and its state goes through a checkpoint exactly."""

import pytest
import torch
from torch import nn

from diffuse import DiffuseError
from diffuse.adversarial import AdversarialLoss, discriminator
from diffuse.consistency import ConsistencyLoss, Curriculum
from diffuse.objectives.ddpm import DDPM
from diffuse.progressive import ProgressiveLoss
from diffuse.schedules.linear import linear

SHAPE = (1, 8, 8)


class Constant(nn.Module):
    """An x0-predicting network (DDPM's x0 objective) whose x0 is one learnt image, whatever its input."""

    def __init__(self, value: float):
        super().__init__()
        self.image, self.conditional, self.num_classes = nn.Parameter(torch.full(SHAPE, value)), False, 0

    def forward(self, x, time, labels=None):
        return self.image.expand(x.shape[0], *SHAPE)


def round_loss(weight: float, seed: int = 0) -> AdversarialLoss:
    """A 1-step round's loss (a 2-step walk halved) whose teacher's x0 is -0.5 everywhere."""
    walk = linear().timesteps(2, "trailing")
    return AdversarialLoss(ProgressiveLoss(Constant(-0.5), walk, clip_x0=True), weight, SHAPE, seed)


def real_images(n: int, seed: int) -> torch.Tensor:
    """(n,1,8,8) images in [-1, 1]: 0.5 and noise."""
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.1 * torch.randn(n, *SHAPE, generator=g)).clamp(-1, 1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 64)])
def test_the_critic_scores_each_image_of_any_square_size(shape):
    critic = discriminator(shape[0], shape[1])
    assert critic(torch.zeros(5, *shape)).shape == (5,)


def test_a_non_square_image_is_refused():
    with pytest.raises(DiffuseError, match=r"takes square images, got \[1, 8, 12\]"):
        AdversarialLoss(round_loss(0.5).base, 0.5, (1, 8, 12), 0)


def test_the_critic_learns_real_from_fake_and_its_term_moves_the_student_towards_real():
    """The student's x0 is a flat -0.5, the teacher's too (the base loss is at its minimum), the real images about
    0.5. After 100 steps the critic scores fresh real images well above the student's; at weight 0 the student stays
    put (the base loss is 0 there), and at weight 0.5 the term's gradient moves its x0 up, towards the real images."""
    schedule, objective = linear(), DDPM(prediction="x0")
    moved = {}
    for weight in (0.0, 0.5):
        loss, student = round_loss(weight), Constant(-0.5)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.2)
        g = torch.Generator().manual_seed(1)
        for step in range(100):
            out = loss(student, objective, schedule, real_images(16, step), g)
            optimizer.zero_grad()
            out.backward()
            optimizer.step()
        with torch.no_grad():
            real, fake = loss.disc(real_images(64, 1000)).mean(), loss.disc(student.image.expand(64, *SHAPE)).mean()
        assert real > fake + 0.5, (weight, real, fake)
        moved[weight] = student.image.detach()
    assert torch.equal(moved[0.0], torch.full(SHAPE, -0.5))
    assert moved[0.5].mean() > -0.5 + 0.03, moved[0.5]


@pytest.mark.parametrize("kind", [ProgressiveLoss, ConsistencyLoss])
def test_the_term_adds_weight_times_the_critics_verdict_to_the_base_loss_with_the_same_draws(kind):
    """loss = base + weight * -D(x0) with D after its step, over a halving round's loss or a consistency run's; the
    generator's draws are the base loss's alone."""
    schedule, objective = linear(), DDPM(prediction="x0")
    x0, student = real_images(8, 0), Constant(-0.2)
    plain = kind(Constant(-0.5), linear().timesteps(2, "trailing"))
    base = plain(student, objective, schedule, x0, torch.Generator().manual_seed(3))
    loss = AdversarialLoss(kind(Constant(-0.5), linear().timesteps(2, "trailing")), 0.25, SHAPE, 0)
    g = torch.Generator().manual_seed(3)
    total = loss(student, objective, schedule, x0, g)
    assert torch.equal(g.get_state(), plain_state(plain, student, objective, schedule, x0))
    verdict = -loss.disc(student.image.expand(8, *SHAPE).clamp(-1, 1)).mean()
    torch.testing.assert_close(total, base + 0.25 * verdict)


def test_over_a_curriculum_each_step_takes_its_stages_loss_and_the_one_critic():
    """A consistency curriculum's term: `at(step, end)` gives the term over that step's loss (the training loop asks
    it), with the critic and its optimizer shared, so every stage trains the one critic; over a loss without stages
    `at` is the term itself."""
    losses = [ConsistencyLoss(Constant(-0.5), linear().timesteps(n, "trailing")) for n in (2, 4)]
    loss = AdversarialLoss(Curriculum(losses), 0.5, SHAPE, 0)
    first, last = loss.at(1, 10), loss.at(10, 10)
    assert (first.base, last.base) == (losses[0], losses[1]) and loss.teacher is losses[-1].teacher
    assert first.disc is last.disc is loss.disc and first.opt is last.opt is loss.opt
    before = {k: v.clone() for k, v in loss.disc.state_dict().items()}
    first(Constant(-0.2), DDPM(prediction="x0"), linear(), real_images(8, 0), torch.Generator().manual_seed(0))
    assert any(not torch.equal(before[k], v) for k, v in loss.disc.state_dict().items())
    assert any(k.startswith("disc.optim.") for k in loss.state_tensors())  # the moments of the stage's step
    single = AdversarialLoss(losses[0], 0.5, SHAPE, 0)
    assert single.at(1, 10) is single


def plain_state(plain, student, objective, schedule, x0) -> torch.Tensor:
    """The generator's state after one call of the base loss alone from seed 3."""
    g = torch.Generator().manual_seed(3)
    plain(student, objective, schedule, x0, g)
    return g.get_state()


def test_the_critics_state_goes_through_a_checkpoint_exactly():
    """A loss that read another's state_tensors (a critic from another seed, no Adam moments yet) continues exactly
    as the other does: the same losses, bitwise, and the same critic; without them it differs."""
    schedule, objective = linear(), DDPM(prediction="x0")
    first = round_loss(0.5, seed=0)
    for step in range(3):
        first(Constant(-0.3), objective, schedule, real_images(8, step), torch.Generator().manual_seed(step))
    saved = first.state_tensors()
    assert any(k.startswith("disc.optim.") for k in saved) and any(k.startswith("disc.weights.") for k in saved)
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in saved.values())
    restored, fresh = round_loss(0.5, seed=7), round_loss(0.5, seed=7)
    restored.load_state(saved, "test", torch.device("cpu"))
    losses = {}
    for name, loss in (("first", first), ("restored", restored), ("fresh", fresh)):
        losses[name] = [loss(Constant(-0.3), objective, schedule, real_images(8, 10 + k),
                             torch.Generator().manual_seed(10 + k)) for k in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(losses["first"], losses["restored"]))
    assert not torch.equal(losses["first"][0], losses["fresh"][0])
    assert all(torch.equal(v, restored.state_tensors()[k]) for k, v in first.state_tensors().items())


def test_a_checkpoint_without_a_critic_is_refused_in_one_line():
    with pytest.raises(DiffuseError, match=r"resume=ckpt.safetensors: the checkpoint holds no discriminator"):
        round_loss(0.5).load_state({"model.x": torch.zeros(1)}, "ckpt.safetensors", torch.device("cpu"))
    saved = round_loss(0.5).state_tensors()
    other = AdversarialLoss(round_loss(0.5).base, 0.5, (3, 32, 32), 0)
    with pytest.raises(DiffuseError, match="its discriminator does not fit this one"):
        other.load_state(saved, "ckpt.safetensors", torch.device("cpu"))

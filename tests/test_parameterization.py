import pytest
import torch

from diffuse import DiffuseError
from diffuse.parameterization import PARAMETERIZATIONS, target, to_eps_x0


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_a_perfect_prediction_recovers_eps_and_x0(parameterization):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    abar = torch.tensor([0.999, 0.7, 0.2, 0.01]).view(4, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * x0 + sigma * eps
    out = target(x0, eps, alpha, sigma, parameterization)
    eps_hat, x0_hat = to_eps_x0(out, x_t, alpha, sigma, parameterization)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)


def test_v_is_the_salimans_ho_definition():
    x0, eps = torch.ones(1), torch.full((1,), 2.0)
    alpha, sigma = torch.tensor(0.6), torch.tensor(0.8)
    assert target(x0, eps, alpha, sigma, "v").item() == pytest.approx(0.6 * 2 - 0.8 * 1)


def test_unknown_parameterization():
    with pytest.raises(DiffuseError, match="eps, x0, v"):
        target(torch.ones(1), torch.ones(1), 1.0, 0.0, "score")

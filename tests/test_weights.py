"""DADS weights, PACED weights, schedules, the adaptive KL controller."""

import math

import pytest
import torch

from rlkit.functional import AdaptiveKLController, dads_weights, paced_weights, scheduled_coef


def test_dads_formula_and_special_cases():
    acc = torch.tensor([0.25, 0.25, 0.75, 1.0, 0.0, 0.5])
    adv = torch.tensor([1.0, -1.0, 0.3, 0.0, 0.0, 0.0])
    w = dads_weights(acc, adv, eta=2.0)
    assert w[0].item() == pytest.approx(1 - math.exp(-2.0 * 0.25))  # positive advantage: 1 - exp(-eta acc)
    assert w[1].item() == 1.0  # negative advantage keeps full KL
    assert w[2].item() == pytest.approx(1 - math.exp(-1.5))
    assert w[3].item() == 1.0 and w[4].item() == 1.0  # acc in {0, 1}
    assert w[5].item() == 1.0  # zero advantage is not positive


def test_dads_harder_prompts_get_less_kl():
    acc = torch.linspace(0.1, 0.9, 9)
    w = dads_weights(acc, torch.ones(9))
    assert torch.all(w[1:] > w[:-1])


def test_dads_token_level_advantages_and_errors():
    adv = torch.tensor([[0.5, 0.5], [-1.0, -1.0]])
    w = dads_weights(torch.tensor([0.5, 0.5]), adv)
    assert w[0] < 1 and w[1] == 1
    with pytest.raises(ValueError, match="eta"):
        dads_weights(torch.ones(1), torch.ones(1), eta=0)


def test_paced():
    w = paced_weights(torch.tensor([0.0, 0.5, 1.0, 0.25]), a=1, b=1)
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 0.0, 0.75]))


def test_schedules():
    assert scheduled_coef(0, 1.0, 0.0, 10) == 1.0
    assert scheduled_coef(5, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert scheduled_coef(20, 1.0, 0.0, 10) == 0.0
    assert scheduled_coef(3, 1.0, 0.0, 10, warmup_steps=5) == 1.0
    assert scheduled_coef(5, 1.0, 0.0, 10, kind="cosine") == pytest.approx(0.5)
    assert scheduled_coef(2, 1.0, 0.0, 10, kind="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    with pytest.raises(ValueError):
        scheduled_coef(1, 1, 0, 10, kind="step")


def test_adaptive_controller_follows_ziegler():
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(12.0, n_steps=10)  # err clipped to 0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    v = c.value
    c.update(5.4, n_steps=10)  # err = -0.1
    assert c.value == pytest.approx(v * (1 - 0.1 * 10 / 100))
    state = c.state_dict()
    d = AdaptiveKLController(1.0, 1.0, 1)
    d.load_state_dict(state)
    assert d.value == c.value and d.target == 6.0 and d.horizon == 100

"""Lp-Reg's proxy against an explicit construction; soup averaging and its errors."""

import math

import numpy as np
import pytest
import torch

from rlkit.functional import lp_reg_proxy_logprobs, soup_state_dict
from rlkit.divergences import FILTERED_LOGPROB


def _np_proxy(logits, tok, min_p, temp, relative=True):
    z = logits / temp
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = p >= (min_p * p.max() if relative else min_p)
    if not keep[tok]:
        return None
    return math.log(p[tok] / p[keep].sum())


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_proxy_matches_explicit_filter_and_renormalise(relative, temp):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 20, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, 20, (4, 5), generator=g)
    min_p = 0.05
    out = lp_reg_proxy_logprobs(
        logits, tokens, min_p=min_p, temperature=temp, threshold="relative" if relative else "absolute"
    )
    n_filtered = 0
    for i in range(4):
        for j in range(5):
            want = _np_proxy(logits[i, j].numpy(), tokens[i, j].item(), min_p, temp, relative)
            if want is None:
                assert out[i, j].item() == FILTERED_LOGPROB
                n_filtered += 1
            else:
                assert out[i, j].item() == pytest.approx(want, abs=1e-5)
    assert 0 < n_filtered < 20  # both branches exercised


def test_proxy_raises_kept_tokens_and_has_no_grad():
    logits = torch.tensor([[4.0, 3.0, 0.0, -6.0]], requires_grad=True)
    tokens = torch.tensor([[1, 3]]).T.reshape(1, 2)
    lg = logits.expand(2, 4).unsqueeze(0)[:, :, :]  # [1, 2, 4]
    out = lp_reg_proxy_logprobs(lg, tokens, min_p=0.02)
    assert not out.requires_grad
    assert out[0, 0] > torch.log_softmax(logits, -1)[0, 1]  # renormalisation raises a kept token
    assert out[0, 1] == FILTERED_LOGPROB  # p(-6) << 0.02 * p_max


def test_proxy_chunking_identical():
    logits = torch.randn(3, 9, 30)
    tokens = torch.randint(0, 30, (3, 9))
    torch.testing.assert_close(
        lp_reg_proxy_logprobs(logits, tokens, chunk_size=4), lp_reg_proxy_logprobs(logits, tokens)
    )


def test_soup_weighted_average_float32():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "step": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0], dtype=torch.bfloat16), "step": torch.tensor(3)}
    out = soup_state_dict([a, b])
    assert out["w"].dtype == torch.float32
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(soup_state_dict([a, b], weights=[3, 1])["w"], torch.tensor([1.5, 3.0]))
    assert out["step"].item() == 3


def test_soup_of_real_models_is_parameter_average():
    torch.manual_seed(0)
    m1, m2 = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    soup = soup_state_dict([m1.state_dict(), m2.state_dict()], [0.25, 0.75])
    torch.testing.assert_close(soup["weight"], 0.25 * m1.weight.detach() + 0.75 * m2.weight.detach())
    m3 = torch.nn.Linear(4, 3)
    m3.load_state_dict(soup)


def test_soup_errors_name_the_key():
    a = {"x": torch.zeros(2), "y": torch.zeros(3)}
    with pytest.raises(ValueError, match="'y'.*missing from checkpoint 1"):
        soup_state_dict([a, {"x": torch.zeros(2)}])
    with pytest.raises(ValueError, match=r"'y' has shape \(4,\)"):
        soup_state_dict([a, {"x": torch.zeros(2), "y": torch.zeros(4)}])
    with pytest.raises(ValueError, match="'z'.*not in checkpoint 0"):
        soup_state_dict([a, {**a, "z": torch.zeros(1)}])
    with pytest.raises(ValueError, match="weights"):
        soup_state_dict([a, a], weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        soup_state_dict([a, a], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="differs"):
        soup_state_dict([{"n": torch.tensor(1)}, {"n": torch.tensor(2)}])

"""The gradient contract of every divergence regularizer, by exact enumeration.

A tabular autoregressive policy over ``V`` tokens (token 0 is EOS) with horizon ``T``: each state (the prefix so
far) has its own logits, the parameters. Every sequence is enumerated, so ``E_y[grad penalty(y)]`` is a finite
sum: ``grad sum_y sg(P(y)) sum_t penalty_t(y)``, computed through ``build_regularizers`` and ``PolicyBatch`` as the
learner calls them. It must equal, to 1e-6 in float64, the gradient of the divergence the regularizer names,
computed independently from the probability tables:

* token level: ``grad sum_y sg(P(y)) sum_t D(pi(.|s_t) || pi_ref(.|s_t))`` (states held fixed; for reference
  samples ``P_ref`` replaces ``P``);
* sequence level: ``grad KL(P || P_ref)`` or ``grad KL(P_ref || P)`` over whole sequences.

The logged value must be unbiased for the same quantity. The last tests break the implementation on purpose and
check that the contract tests catch each break.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import rlkit.divergences.gradients as G
from rlkit.objectives.ppo import reward_penalty
from rlkit.regularizers import PolicyBatch, build_regularizers

TOL = 1e-6


class Tabular:
    """All sequences of a random tabular policy and reference, as one right-padded batch."""

    def __init__(self, V: int, T: int, seed: int = 0, spread: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.V, self.T = V, T
        states = [()]
        for t in range(1, T):
            states += [s for s in itertools.product(range(1, V), repeat=t)]
        self.index = {s: i for i, s in enumerate(states)}
        self.theta = (spread * torch.randn(len(states), V, generator=g, dtype=torch.float64)).requires_grad_()
        self.ref_table = spread * torch.randn(len(states), V, generator=g, dtype=torch.float64)
        seqs = []

        def walk(prefix):
            for a in range(V):
                y = prefix + (a,)
                if a == 0 or len(y) == T:
                    seqs.append(y)
                else:
                    walk(y)

        walk(())
        self.seqs = seqs
        N = len(seqs)
        self.state_idx = torch.zeros(N, T, dtype=torch.long)
        self.tokens = torch.zeros(N, T, dtype=torch.long)
        self.mask = torch.zeros(N, T)
        for n, y in enumerate(seqs):
            for t, a in enumerate(y):
                self.state_idx[n, t], self.tokens[n, t], self.mask[n, t] = self.index[y[:t]], a, 1.0

    # tensors of the batch (functions of theta, so gradients flow)
    def logits(self):
        return self.theta[self.state_idx]

    def ref_logits(self):
        return self.ref_table[self.state_idx]

    def _lp(self, logits):
        lp = torch.log_softmax(logits, -1).gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)
        return lp * self.mask

    def logprobs(self):
        return self._lp(self.logits())

    def ref_logprobs(self):
        return self._lp(self.ref_logits())

    def seq_logprob(self):
        return self.logprobs().sum(-1)

    def ref_seq_logprob(self):
        return self.ref_logprobs().sum(-1)


def textbook_divergence(p_logits, q_logits, name, alpha=0.5):
    """Per-state divergence of softmax(p) from softmax(q), written from the definitions (independent of rlkit)."""
    p, q = torch.softmax(p_logits, -1), torch.softmax(q_logits, -1)
    if name == "reverse_kl":
        return (p * (p.log() - q.log())).sum(-1)
    if name == "forward_kl":
        return (q * (q.log() - p.log())).sum(-1)
    if name == "js":
        m = (p + q) / 2
        return 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    if name == "alpha":
        u = p / q
        return (q * (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))).sum(-1)
    raise ValueError(name)


def target(tab: Tabular, divergence: str, level: str, samples: str, alpha: float = 0.5):
    """``(value, gradient)`` of the named divergence at the given level, from the probability tables."""
    lP, lQ = tab.seq_logprob(), tab.ref_seq_logprob()
    if level == "sequence":
        if divergence == "reverse_kl":
            value = (lP.exp() * (lP - lQ)).sum()
        else:
            value = (lQ.exp() * (lQ - lP)).sum()
    else:
        weights = (lP if samples == "policy" else lQ).exp().detach()
        per_state = textbook_divergence(tab.logits(), tab.ref_logits(), divergence, alpha) * tab.mask
        value = (weights * per_state.sum(-1)).sum()
    (grad,) = torch.autograd.grad(value, tab.theta)
    return float(value.detach()), grad


def expected(tab: Tabular, spec: dict, samples: str):
    """``(E[sum_t value_t], E[grad sum_t penalty_t])`` of the regularizer over all sequences, drawn from the policy
    or from the reference."""
    spec = {**spec, "coef": 1.0}
    if spec["name"] == "kl" and spec.get("mode") != "exact" and spec.get("samples") != "reference":
        # k3's value clamp at 10 (the reference codes' default) bounds the logged value, not the gradient
        spec.setdefault("value_clamp", None)
    (reg,) = build_regularizers([spec])
    batch = PolicyBatch(
        logprobs=tab.logprobs(),
        mask=tab.mask,
        ref_logprobs=tab.ref_logprobs(),
        logits=tab.logits(),
        ref_logits=tab.ref_logits(),
        old_logprobs=tab.logprobs().detach(),
        sampled_from="policy" if samples == "policy" else "ref",
    )
    out = reg(batch)
    weights = (tab.seq_logprob() if samples == "policy" else tab.ref_seq_logprob()).exp().detach()
    total = (weights * out.per_token.sum(-1)).sum()
    (grad,) = torch.autograd.grad(total, tab.theta)
    value = float((weights * out.per_token.detach().sum(-1)).sum())
    return value, grad, out.metrics


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# (spec, samples, named divergence, level, value unbiased for it)
CASES = [
    ({"name": "kl"}, "policy", "reverse_kl", "token", True),
    ({"name": "kl", "estimator": "k1"}, "policy", "reverse_kl", "token", True),
    ({"name": "kl", "estimator": "k2"}, "policy", "reverse_kl", "token", False),
    ({"name": "kl", "estimator": "k3+"}, "policy", "reverse_kl", "token", True),
    ({"name": "kl", "gradient": "sequence"}, "policy", "reverse_kl", "sequence", True),
    ({"name": "kl", "estimator": "k1", "gradient": "sequence"}, "policy", "reverse_kl", "sequence", True),
    ({"name": "kl", "mode": "exact"}, "policy", "reverse_kl", "token", True),
    ({"name": "kl", "mode": "exact", "gradient": "sequence"}, "policy", "reverse_kl", "sequence", True),
    ({"name": "kl", "samples": "reference"}, "reference", "reverse_kl", "token", True),
    ({"name": "kl", "samples": "reference", "gradient": "sequence"}, "reference", "reverse_kl", "sequence", True),
    # GRPO's k3 as the papers run it: unbiased for the reverse KL, but the gradient is the forward KL's
    ({"name": "kl", "gradient": "pathwise"}, "policy", "forward_kl", "token", False),
    ({"name": "kl", "estimator": "k2", "gradient": "pathwise"}, "policy", "reverse_kl", "token", False),
    # ... times the differentiated ratio pi/sg(pi_old) (TRL's use_bias_correction_kl): the reverse KL's again
    ({"name": "kl", "gradient": "pathwise", "importance_correction": True}, "policy", "reverse_kl", "token", True),
    (
        {"name": "kl", "estimator": "k1", "gradient": "pathwise", "importance_correction": True},
        "policy",
        "reverse_kl",
        "token",
        True,
    ),
    ({"name": "kl", "importance_correction": True}, "policy", "reverse_kl", "token", True),
    ({"name": "forward_kl"}, "policy", "forward_kl", "token", True),
    ({"name": "forward_kl", "gradient": "sequence"}, "policy", "forward_kl", "sequence", True),
    ({"name": "forward_kl", "mode": "exact"}, "policy", "forward_kl", "token", True),
    ({"name": "forward_kl", "mode": "exact", "gradient": "sequence"}, "policy", "forward_kl", "sequence", True),
    ({"name": "forward_kl", "samples": "reference"}, "reference", "forward_kl", "token", True),
    ({"name": "forward_kl", "samples": "reference"}, "reference", "forward_kl", "sequence", True),
    (
        {"name": "forward_kl", "samples": "reference", "gradient": "sequence"},
        "reference",
        "forward_kl",
        "sequence",
        True,
    ),
    ({"name": "js"}, "policy", "js", "token", True),
    ({"name": "js", "mode": "exact"}, "policy", "js", "token", True),
    ({"name": "js", "samples": "reference"}, "reference", "js", "token", True),
    ({"name": "alpha", "alpha": 0.2}, "policy", "alpha", "token", True),
    ({"name": "alpha", "alpha": 0.7}, "policy", "alpha", "token", True),
    ({"name": "alpha", "alpha": 0.2, "mode": "exact"}, "policy", "alpha", "token", True),
    ({"name": "alpha", "alpha": 0.5, "samples": "reference"}, "reference", "alpha", "token", True),
]
SIZES = [(3, 3), (4, 3), (3, 4)]


def _id(case):
    spec, samples, _, level, _ = case
    return "-".join(f"{v}" for k, v in spec.items()) + f"-{samples}-{level}"


def check(case, V, T, seed=0):
    spec, samples, divergence, level, unbiased = case
    tab = Tabular(V, T, seed)
    alpha = spec.get("alpha", 0.5)
    want_value, want_grad = target(tab, divergence, level, samples, alpha)
    value, grad, _ = expected(tab, spec, samples)
    return rel_err(grad, want_grad), (abs(value - want_value) / abs(want_value) if unbiased else 0.0)


@pytest.mark.parametrize("V,T", SIZES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_expected_gradient_is_the_named_divergences(case, V, T):
    grad_err, value_err = check(case, V, T)
    assert grad_err < TOL, f"E[grad] off by {grad_err:.2e} (relative)"
    assert value_err < TOL, f"E[value] off by {value_err:.2e} (relative)"


def test_the_level_matters_so_the_test_can_tell_them_apart():
    """Token and sequence gradients differ on this policy (else the contract tests could not fail)."""
    tab = Tabular(3, 3)
    for div in ("reverse_kl", "forward_kl"):
        _, tok = target(tab, div, "token", "policy")
        _, seq = target(tab, div, "sequence", "policy")
        assert rel_err(tok, seq) > 0.05
    _, rkl = target(tab, "reverse_kl", "token", "policy")
    _, fkl = target(tab, "forward_kl", "token", "policy")
    assert rel_err(rkl, fkl) > 0.05


def test_the_default_kl_delivers_the_reverse_kl_gradient_and_k3_pathwise_the_forward():
    tab = Tabular(4, 3, seed=1)
    _, rkl = target(tab, "reverse_kl", "token", "policy")
    _, default, _ = expected(tab, {"name": "kl"}, "policy")
    _, quickstart, _ = expected(tab, {"name": "kl", "estimator": "k3"}, "policy")
    _, pathwise, _ = expected(tab, {"name": "kl_k3_pathwise"}, "policy")
    assert rel_err(default, rkl) < TOL and rel_err(quickstart, rkl) < TOL
    assert rel_err(pathwise, rkl) > 0.1  # the issue measured 0.57 on its policy


def test_reward_placement_k1_delivers_the_sequence_reverse_kl_through_the_return():
    """REINFORCE on ``reward - coef * sum_t k1_t``: ``E[grad log P(y) * penalty(y)] = coef * grad KL(P || P_ref)``."""
    tab = Tabular(4, 3, seed=2)
    _, want = target(tab, "reverse_kl", "sequence", "policy")
    batch = PolicyBatch(logprobs=tab.logprobs().detach(), mask=tab.mask, ref_logprobs=tab.ref_logprobs())
    pen, _ = reward_penalty(batch, build_regularizers([{"name": "kl_reward", "coef": 1.0}]))
    lP = tab.seq_logprob()
    (grad,) = torch.autograd.grad((lP.exp().detach() * pen.sum(-1).detach() * lP).sum(), tab.theta)
    assert rel_err(grad, want) < TOL


def test_forward_kl_sequence_weights_are_logged_and_the_cap_is_explicit():
    tab = Tabular(3, 4, seed=3, spread=2.0)
    _, _, metrics = expected(tab, {"name": "forward_kl", "gradient": "sequence"}, "policy")
    assert metrics["forward_kl_seq/weight_max"] > 2.0
    _, want = target(tab, "forward_kl", "sequence", "policy")
    _, capped, m2 = expected(tab, {"name": "forward_kl", "gradient": "sequence", "weight_cap": 2.0}, "policy")
    assert m2["forward_kl_seq/weight_max"] <= 2.0
    assert rel_err(capped, want) > TOL  # a cap is a bias, and only where asked for


# --- deliberate breaks: each must make the contract tests fail ---------------------------------------------------

MUTANTS = {
    "no surrogate (pathwise estimator)": (
        lambda mp: mp.setattr(G, "straight_through", lambda v, f, lp: v),
        [
            ({"name": "forward_kl"}, "policy", "forward_kl", "token", True),
            ({"name": "js"}, "policy", "js", "token", True),
        ],
    ),
    "no future terms": (
        lambda mp: mp.setattr(G, "future_sum", lambda v, m: torch.zeros_like(v)),
        [
            ({"name": "kl", "gradient": "sequence"}, "policy", "reverse_kl", "sequence", True),
            ({"name": "kl", "mode": "exact", "gradient": "sequence"}, "policy", "reverse_kl", "sequence", True),
        ],
    ),
    "no prefix weights": (
        lambda mp: mp.setattr(G, "prefix_weights", lambda lr, m, cap=None, log_clamp=None: torch.ones_like(lr)),
        [
            ({"name": "forward_kl", "gradient": "sequence"}, "policy", "forward_kl", "sequence", True),
            (
                {"name": "kl", "samples": "reference", "gradient": "sequence"},
                "reference",
                "reverse_kl",
                "sequence",
                True,
            ),
        ],
    ),
    "prefix weights include the current token": (
        lambda mp: mp.setattr(G, "prefix_sum", lambda v, m: (v * m.to(v.dtype)).cumsum(-1)),
        [({"name": "forward_kl", "gradient": "sequence"}, "policy", "forward_kl", "sequence", True)],
    ),
    "uncentred forward-KL factor with the wrong sign": (
        lambda mp: mp.setattr(
            G, "score_factor", lambda lp, ref, d, alpha=0.5, log_ratio_clamp=20.0: torch.exp(ref - lp).detach()
        ),
        [({"name": "forward_kl"}, "policy", "forward_kl", "token", True)],
    ),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_each_deliberate_break_is_caught(mutant, monkeypatch):
    apply, cases = MUTANTS[mutant]
    apply(monkeypatch)
    for case in cases:
        grad_err, value_err = check(case, 3, 3)
        assert max(grad_err, value_err) > 1e-3, f"{mutant} not caught by {_id(case)}"

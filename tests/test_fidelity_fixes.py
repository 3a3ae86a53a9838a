"""Issue 16 (items 5, 6): DADS as APO ran it (eta = e) and STCR, Dr. GRPO's constant normaliser, the KDRL recipe
(annealed teacher KL, incorrect-only masking), PACED's kernel normalisation, TRL's f-DPO alpha conversion by TRL
version, the Lp-Reg recipe's clip range. Each check is against an independent computation written out here."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import rlkit.algorithms.clipped as clipped
from rlkit.advantages import group_advantages, rloo_advantages, stcr_scale
from rlkit.algorithms import ADVANTAGES, AdvantageInputs
from rlkit.config import GRPOConfig, PPOConfig, load_recipe
from rlkit.functional import aggregate, clipped_surrogate, dads_weights, paced_weights
from rlkit.objectives import grpo_loss
from rlkit.regularizers import PolicyBatch, build_regularizers
from rlkit.regularizers.weightings import DadsWeighting
from rlkit.types import ReferenceOutput, TrainBatch
from rlkit.workers.learner import LearnerCore
from rlkit.workers.learner_group import loss_share

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ DADS
def _view_r1_kl_weight(d: float) -> float:
    """View-R1's ``calculate_kl_weight`` (openrlhf/trainer/ray/ppo_actor.py), written out: difficulty d = 1 - acc,
    ``1 - exp(-e (1 - d))`` with ``e = math.exp(1)``, 1 at d in {0, 1}."""
    if d in (0.0, 1.0):
        return 1.0
    return 1 - math.exp(-math.exp(1) * (1 - d))


def test_dads_default_eta_is_euler_as_view_r1():
    assert DadsWeighting(type="dads").eta == math.e
    acc = torch.tensor([0.125, 0.25, 0.5, 0.875, 0.0, 1.0, 0.5, 0.25])
    adv = torch.tensor([1.2, 0.4, 0.1, 0.05, 0.3, 0.2, -0.7, 0.0])
    got = dads_weights(acc, adv)
    # View-R1: KL weight diff2KL_weight(difficulty) where advantage > 0, else 1
    want = [(_view_r1_kl_weight(1 - a) if v > 0 else 1.0) for a, v in zip(acc.tolist(), adv.tolist())]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-7)
    # the dads preset regularizer applies exactly these weights to its per-sample KL
    lp = torch.full((8, 3), -1.0)
    batch = PolicyBatch(logprobs=lp, mask=torch.ones(8, 3), ref_logprobs=lp - 0.3, advantages=adv, accuracy=acc)
    (plain,) = build_regularizers([{"name": "kl", "estimator": "k3", "coef": 1e-3}])
    (dads,) = build_regularizers("dads")
    torch.testing.assert_close(dads(batch).per_token, plain(batch).per_token * torch.tensor(want).unsqueeze(-1))


def test_dads_recipe_has_the_papers_settings():
    r = load_recipe(ROOT / "recipes" / "grpo_dads.yaml")
    (reg,) = build_regularizers(r.regularizers)
    assert reg.cfg.weighting.type == "dads" and reg.cfg.weighting.eta == math.e
    assert reg.cfg.coef == 1e-3 and reg.cfg.estimator == "k3" and reg.cfg.reference.type == "initial"
    # as View-R1: k3 differentiated as written, the weighted KL averaged per sequence, then over samples
    assert reg.cfg.gradient == "pathwise" and reg.cfg.aggregation == "seq-mean-token-mean"
    assert r.grpo.stcr is True and r.grpo.stcr_base == 1.00001


# ------------------------------------------------------------------------------------------------------ STCR
def _stcr_loop(adv, lengths, correct, G, base=1.00001):
    """STCR per sample, plain Python: L+ = mean correct length of the group; a wrong answer with L > L+ gets
    advantage * (1 + 1 - base^-(L - L+)); nothing changes in a group without a correct answer."""
    out = []
    for s in range(0, len(adv), G):
        ok = [correct[i] for i in range(s, s + G)]
        lens = [lengths[i] for i in range(s, s + G)]
        n_ok = sum(ok)
        l_plus = sum(length for length, c in zip(lens, ok) if c) / n_ok if n_ok else None
        for i in range(s, s + G):
            w = 0.0
            if l_plus is not None and not correct[i] and lengths[i] > l_plus:
                w = 1 - base ** (-(lengths[i] - l_plus))
            out.append(adv[i] * (1 + w))
    return out


def test_stcr_scale_against_a_loop():
    G = 4
    lengths = torch.tensor(
        [
            10.0,
            30.0,
            50_000.0,
            5.0,  # correct: 10, 30 -> L+ = 20
            7.0,
            900.0,
            3.0,
            12.0,  # no correct answer: unchanged
            4.0,
            8.0,
            16.0,
            2.0,
        ]
    )  # all correct: unchanged
    correct = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32)
    adv = group_advantages(correct + 0.01 * torch.arange(12.0), G)
    got = stcr_scale(adv, lengths, correct, G)
    want = torch.tensor(_stcr_loop(adv.tolist(), lengths.tolist(), correct.bool().tolist(), G))
    torch.testing.assert_close(got, want)
    assert got[2] / adv[2] == pytest.approx(2 - 1.00001 ** -(50_000 - 20), rel=1e-6)  # long wrong answer: ~1.39x
    assert got[3] == adv[3]  # a wrong answer shorter than L+ keeps its advantage
    assert torch.equal(got[4:], adv[4:])
    # [B, T] advantages: every token of a sample scaled by the same factor
    adv2 = adv.unsqueeze(-1).expand(12, 3)
    torch.testing.assert_close(stcr_scale(adv2, lengths, correct, G), want.unsqueeze(-1).expand(12, 3))
    with pytest.raises(ValueError, match="base"):
        stcr_scale(adv, lengths, correct, G, base=1.0)


def test_learner_advantages_apply_stcr_from_the_mask_and_correct():
    G, scores = 4, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    lens = [2, 4, 9, 1, 3, 6, 2, 8]
    mask = torch.tensor([[1.0] * n + [0.0] * (9 - n) for n in lens])
    inputs = AdvantageInputs(scores=scores, mask=mask, group_size=G, correct=scores)
    for kind in ("grpo", "drgrpo", "rloo"):
        estimator = ADVANTAGES.get(kind)
        got = estimator(GRPOConfig(group_size=G, advantage=kind, stcr=True))(inputs).advantages
        base = rloo_advantages(scores, G) if kind == "rloo" else group_advantages(scores, G, scale_std=kind == "grpo")
        want = torch.tensor(_stcr_loop(base.tolist(), lens, [bool(c) for c in scores.tolist()], G))
        torch.testing.assert_close(got, want)
        assert torch.equal(estimator(GRPOConfig(group_size=G, advantage=kind))(inputs).advantages, base)
    with pytest.raises(ValueError, match="GRPO"):
        PPOConfig(stcr=True)


# ------------------------------------------------------------------------------------------- Dr. GRPO's L
def test_drgrpo_normaliser_is_constant_across_padded_lengths():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 5, generator=g) * 2
    old = lp + 0.05 * torch.randn(4, 5, generator=g)
    ref = lp + 0.2 * torch.randn(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    regs = build_regularizers([{"name": "kl", "estimator": "k3", "coef": 0.1}])

    def loss(extra: int) -> torch.Tensor:  # the same batch with `extra` more padding columns
        pad = lambda x, v=0.0: torch.cat([x, torch.full((4, extra), v)], -1)  # noqa: E731
        b = PolicyBatch(
            logprobs=pad(lp, -1.0),
            old_logprobs=pad(old, -1.0),
            ref_logprobs=pad(ref, -1.0),
            mask=pad(mask),
            advantages=adv,
        )
        return grpo_loss(b, regs, aggregation="drgrpo", norm_length=16)[0]

    # independent: sum over valid tokens of (surrogate + coef k3) / (B * 16)
    ratio = torch.exp(lp - old)
    surr = torch.maximum(-adv[:, None] * ratio, -adv[:, None] * ratio.clamp(0.8, 1.2))
    d = ref - lp
    k3 = torch.exp(d) - d - 1
    want = ((surr + 0.1 * k3) * mask).sum() / (4 * 16)
    torch.testing.assert_close(loss(0), want)
    torch.testing.assert_close(loss(7), want)  # more padding: the same loss (the padded length is not used)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(lp, mask, "drgrpo")
    # data-parallel shares: with one constant L the global normaliser is B * L, so rank k's share is b_k / B
    stats = torch.tensor([[30.0, 8, 10], [10.0, 2, 3]], dtype=torch.float64)
    assert [loss_share(stats, r, "drgrpo") for r in (0, 1)] == [0.8, 0.2]


def test_learner_passes_the_constant_norm_length(tiny_dir, monkeypatch):
    cfg = {"learning_rate": 1e-4, "group_size": 2, "clip_low": 0.2, "clip_high": 0.28, "aggregation": "drgrpo"}
    with pytest.raises(ValueError, match="norm_length"):
        LearnerCore(tiny_dir, cfg, "kl_k3")
    core = LearnerCore(tiny_dir, {**cfg, "norm_length": 12}, "kl_k3")
    seen, real = [], clipped.policy_loss  # the registered policy loss hands grpo.norm_length to the objective
    monkeypatch.setattr(clipped, "policy_loss", lambda *a, **kw: (seen.append(kw["norm_length"]), real(*a, **kw))[1])
    core.train_step(_data())
    assert seen == [12]


def _data(B=4, step=0):
    g = torch.Generator().manual_seed(0)
    comps = [torch.randint(6, 20, (1 + i % 3,), generator=g).tolist() for i in range(B)]
    T = max(len(c) for c in comps)
    return TrainBatch(
        step=step,
        prompt_ids=[[7, 8, 9]] * B,
        completion_ids=comps,
        scores=[float(i % 2) for i in range(B)],
        correct=[float(i % 2) for i in range(B)],
        rollout_logprobs=[[-2.0] * len(c) for c in comps],
        refs={"initial": ReferenceOutput(logprobs=torch.full((B, T), -2.1))},
    )


# --------------------------------------------------------------------------------------------------- KDRL
def test_teacher_recipe_anneals_and_masks_correct_responses():
    r = load_recipe(ROOT / "recipes" / "grpo_teacher.yaml", ["regularizers.0.weighting.only_incorrect=true"])
    (reg,) = build_regularizers(r.regularizers)
    assert reg.cfg.estimator == "k2" and reg.cfg.reference.type == "teacher"
    total = reg.cfg.weighting.total_steps
    # linear 5e-3 -> 1e-3 over total_steps, held at 1e-3 after
    for step, want in ((0, 5e-3), (total // 2, 3e-3), (total, 1e-3), (total + 50, 1e-3)):
        assert reg.weighting.coef(step) == pytest.approx(want)
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0], [-1.5, -1.0]])
    ref = lp + torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.6, 0.2]])
    correct = torch.tensor([1.0, 0.0, 0.0])
    step = total // 2
    batch = PolicyBatch(
        logprobs=lp, mask=torch.ones(3, 2), ref_logprobs={"teacher": ref}, step=step, extras={"correct": correct}
    )
    out = reg(batch)
    want = 3e-3 * 0.5 * (lp - ref) ** 2 * (1 - correct)[:, None]  # k2 = d^2 / 2 on incorrect samples only
    torch.testing.assert_close(out.per_token, want)
    assert out.metrics[f"{reg.label}/weight_mean"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="correct"):
        reg(PolicyBatch(logprobs=lp, mask=torch.ones(3, 2), ref_logprobs={"teacher": ref}))
    # the default recipe keeps every response
    (plain,) = build_regularizers(load_recipe(ROOT / "recipes" / "grpo_teacher.yaml").regularizers)
    assert plain.weighting.sample_weights(batch) is None


def test_only_incorrect_composes_with_per_sample_weights():
    acc = torch.tensor([0.25, 0.25, 0.5, 0.5])
    adv = torch.tensor([1.0, -1.0, 0.5, 0.5])
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0])
    lp = torch.full((4, 2), -1.0)
    batch = PolicyBatch(
        logprobs=lp,
        mask=torch.ones(4, 2),
        ref_logprobs=lp - 0.5,
        advantages=adv,
        accuracy=acc,
        extras={"correct": correct},
    )
    (reg,) = build_regularizers([{"name": "kl", "coef": 1.0, "weighting": {"type": "dads", "only_incorrect": True}}])
    want = torch.tensor([_view_r1_kl_weight(1 - a) if v > 0 else 1.0 for a, v in zip(acc.tolist(), adv.tolist())])
    torch.testing.assert_close(reg.weighting.sample_weights(batch), want * (1 - correct))


def test_learner_puts_correct_into_the_batch(tiny_dir):
    regs = [{"name": "kl", "estimator": "k3", "coef": 0.1, "weighting": {"type": "constant", "only_incorrect": True}}]
    core = LearnerCore(
        tiny_dir,
        {"learning_rate": 1e-4, "group_size": 2, "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token-mean"},
        regs,
    )
    data = dataclasses.replace(_data(), correct=[0.0, 0.0, 0.0, 1.0])
    m = core.train_step(data)
    assert m["kl_k3/weight_mean"] == pytest.approx(0.75)  # one correct sample of four is masked


# -------------------------------------------------------------------------------------------------- PACED
def test_paced_normalize_option():
    p = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.8, 1.0])
    for a, b in ((1.0, 1.0), (2.0, 0.5), (0.5, 3.0)):
        raw = torch.tensor([x**a * (1 - x) ** b for x in p.tolist()])
        torch.testing.assert_close(paced_weights(p, a, b, normalize=False), raw)
        m = a / (a + b)  # the kernel's mode
        torch.testing.assert_close(paced_weights(p, a, b), raw / (m**a * (1 - m) ** b))
    torch.testing.assert_close(paced_weights(p, 1, 1), 4 * p * (1 - p))  # a = b = 1: 4x the raw p (1 - p)
    (reg,) = build_regularizers([{"name": "kl", "coef": 1.0, "weighting": {"type": "paced", "normalize": False}}])
    batch = PolicyBatch(logprobs=torch.zeros(6, 1), mask=torch.ones(6, 1), ref_logprobs=torch.zeros(6, 1), accuracy=p)
    torch.testing.assert_close(reg.weighting.sample_weights(batch), p * (1 - p))


# --------------------------------------------------------------------------------------------------- TRL
def _trl_alpha_coef(alpha: float, version: str) -> float:
    """TRL's ``f_alpha_divergence_coef`` for the f-DPO paper's ``alpha``: TRL 0.20-0.28 wrote the paper's
    ``(1 - u^-a)/a`` (coef = alpha), TRL >= 0.29 ``(t^(a'-1) - 1)/(a'-1)`` (coef = 1 - alpha)."""
    from packaging.version import Version

    v = Version(version)
    if v < Version("0.20"):
        raise ValueError(f"TRL {version} predates rlkit's supported range (>= 0.20)")
    return alpha if v < Version("0.29") else 1.0 - alpha


def test_trl_alpha_conversion_ranges():
    assert _trl_alpha_coef(0.3, "0.20.0") == 0.3 and _trl_alpha_coef(0.3, "0.28.0") == 0.3
    assert _trl_alpha_coef(0.3, "0.29.0") == pytest.approx(0.7) and _trl_alpha_coef(0.3, "1.16.0") == pytest.approx(0.7)


def test_trl_alpha_conversion_matches_the_installed_trl(tmp_path):
    trl = pytest.importorskip("trl")
    from packaging.version import Version

    if Version(trl.__version__) < Version("1.0"):
        pytest.skip(f"TRL {trl.__version__}: examples/trl_dpo_with_rlkit_fdpo.py needs TRL >= 1.0 internals")
    import importlib.util

    from trl import DPOTrainer

    from rlkit.functional import fdpo_loss

    spec = importlib.util.spec_from_file_location("example_fdpo", ROOT / "examples" / "trl_dpo_with_rlkit_fdpo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    alpha = 0.3
    coef = _trl_alpha_coef(alpha, trl.__version__)
    trainer = example.build_trainer(
        str(tmp_path),
        divergence="alpha",
        alpha=alpha,
        beta=1.0,
        ref_seed=1,
        n_pairs=4,
        f_divergence_type="alpha_divergence",
        f_alpha_divergence_coef=coef,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model.train()
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(trainer, model, batch, False)  # the installed TRL's own f-DPO
        pc, pr = trainer.compute_ref_log_probs(model, batch)
        rc, rr = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        ours = fdpo_loss(pc, pr, rc, rr, beta=1.0, divergence="alpha", alpha=alpha).mean()
        unconverted = fdpo_loss(pc, pr, rc, rr, beta=1.0, divergence="alpha", alpha=coef).mean()
    assert (ours - theirs).abs().item() < 1e-5
    assert (unconverted - theirs).abs().item() > 1e-3  # the conversion matters at alpha != 0.5


# ------------------------------------------------------------------------------------------------- Lp-Reg
def test_lp_reg_recipe_uses_the_scripts_clip_range():
    r = load_recipe(ROOT / "recipes" / "grpo_lp_reg.yaml")
    g = r.grpo
    assert (1 - g.clip_low, 1 + g.clip_high) == pytest.approx((1e-4, 10.0))  # the scripts' [0, 10], floor 1e-4
    assert g.aggregation == "token-mean" and g.entropy_coef == 0.0
    (reg,) = build_regularizers(r.regularizers)
    assert (reg.cfg.coef, reg.cfg.min_p, reg.cfg.rho) == (1.0, 0.02, 0.01)
    ratio = torch.tensor([[0.01, 0.5, 3.0, 9.5, 12.0, 0.01, 12.0]])
    adv = torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0]])
    loss, _ = clipped_surrogate(
        ratio.log(), torch.zeros_like(ratio), adv, torch.ones_like(ratio), g.clip_low, g.clip_high
    )
    # independent: max(-A r, -A clip(r, 1e-4, 10)); only r = 12 is clipped for A > 0 (and not for A < 0)
    want = torch.maximum(-adv * ratio, -adv * ratio.clamp(1e-4, 10.0))
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(loss, torch.tensor([[0.01, 0.5, -3.0, -9.5, -10.0, -0.01, 12.0]]))

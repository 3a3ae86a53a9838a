"""The registry: every name builds, combinations work or are refused with the key path, zero at pi == ref."""

import math

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.functional import f_divergence
from rlkit.regularizers import PRESETS, PolicyBatch, available, build_regularizers, check_objective, get, register
from rlkit.regularizers.base import Regularizer, RegularizerConfig


def _batch_from_logits(b=3, t=4, v=9, same=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, requires_grad=True)
    ref_logits = logits.detach().clone() if same else torch.randn(b, t, v, generator=g)
    tokens = torch.randint(0, v, (b, t), generator=g)
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    ref = torch.log_softmax(ref_logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    return PolicyBatch(
        logprobs=lp,
        old_logprobs=lp.detach(),
        ref_logprobs=ref,
        logits=logits,
        ref_logits=ref_logits,
        mask=torch.ones(b, t),
        advantages=torch.tensor([1.0, -1.0, 0.5])[:b],
        accuracy=torch.full((b,), 0.5),
        proxy_logprobs=lp.detach(),
    )


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if p != "none"))
def test_every_preset_builds_and_is_zero_at_equality(preset):
    regs = build_regularizers(preset)
    assert regs
    batch = _batch_from_logits(same=True)
    for reg in regs:  # rehearsal presets take reference samples, the others policy samples
        batch.sampled_from = "ref" if getattr(reg.cfg, "samples", "policy") == "reference" else "policy"
        out = reg(batch)
        assert torch.allclose(out.per_token, torch.zeros_like(out.per_token), atol=1e-6), reg.label
        assert reg.requires() <= {
            "logprobs",
            "ref_logprobs",
            "logits",
            "ref_logits",
            "mask",
            "old_logprobs",
            "advantages",
            "proxy_logprobs",
            "accuracy",
        }


@pytest.mark.parametrize("name", ["kl", "forward_kl", "js", "alpha"])
def test_exact_mode_matches_functional(name):
    batch = _batch_from_logits()
    (reg,) = build_regularizers([{"name": name, "mode": "exact", "coef": 2.0}])
    out = reg(batch)
    div = "reverse_kl" if name == "kl" else name
    want = 2.0 * f_divergence(batch.logits, batch.ref_logits, div, alpha=0.2)
    torch.testing.assert_close(out.per_token, want)
    out.per_token.sum().backward()
    assert batch.logits.grad is not None and batch.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["kl", "forward_kl", "js", "alpha"])
def test_sampled_mode_is_unbiased_for_exact_mode(name):
    """The same regularizer in sampled and exact mode measures the same divergence (MC over policy samples)."""
    g = torch.Generator().manual_seed(3)
    logits, ref_logits = torch.randn(6, generator=g), torch.randn(6, generator=g)
    n = 200_000
    tok = torch.multinomial(torch.softmax(logits, -1), n, replacement=True, generator=g)
    lp, lr = torch.log_softmax(logits, -1)[tok][None], torch.log_softmax(ref_logits, -1)[tok][None]
    (sampled,) = build_regularizers([{"name": name, "coef": 1.0}])
    est = sampled.divergence(PolicyBatch(logprobs=lp, ref_logprobs=lr, mask=torch.ones_like(lp)))
    (exact,) = build_regularizers([{"name": name, "coef": 1.0, "mode": "exact"}])
    want = exact.divergence(
        PolicyBatch(
            logprobs=lp[:, :1], logits=logits[None, None], ref_logits=ref_logits[None, None], mask=torch.ones(1, 1)
        )
    ).item()
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - want) < 5 * se + 1e-7


BAD = [
    ([{"name": "kl", "estimatr": "k3"}], "regularizers[0].estimatr: unknown key"),
    ([{"name": "kl", "estimator": "k5"}], "regularizers[0].estimator:"),
    (["foo"], "regularizers[0]: unknown regularizer 'foo'"),
    ([{"name": "kl", "coef": "x"}], "regularizers[0].coef:"),
    ([{"name": "kl", "coef": -1}], "regularizers[0].coef:"),
    ([{"coef": 1}], "regularizers[0].name: required key is missing"),
    ([{"name": "kl", "reference": "soup"}], "regularizers[0].reference: a soup reference needs 'checkpoints'"),
    ([{"name": "kl", "reference": "teacher"}], "regularizers[0].reference: a teacher reference needs 'model'"),
    ([{"name": "kl", "reference": "nowhere"}], "regularizers[0].reference.type:"),
    ([{"name": "kl", "reference": "proxy"}], "use regularizer 'lp_reg'"),
    ([{"name": "lp_reg", "reference": "initial"}], "regularizers[0].reference: lp_reg always regularizes toward"),
    ([{"name": "lp_reg", "placement": "reward"}], "regularizers[0].placement:"),
    ([{"name": "dads", "placement": "reward"}], "regularizers[0].weighting: 'dads' weights depend on advantages"),
    ([{"name": "kl", "weighting": {"type": "adaptive"}}], "regularizers[0].weighting.target: required key is missing"),
    ([{"name": "kl", "weighting": "bogus"}], "regularizers[0].weighting:"),
    (
        [{"name": "kl", "mode": "exact", "estimator": "k1"}],
        "regularizers[0].estimator: estimators apply to mode 'sampled'",
    ),
    ([{"name": "js", "mode": "exact", "samples": "reference"}], "regularizers[0].samples:"),
    ([{"name": "forward_kl", "samples": "reference", "placement": "reward"}], "regularizers[0].samples:"),
    ([{"name": "kl", "importance_correction": True, "samples": "reference"}], "regularizers[0].importance_correction"),
    (["kl_k3", "kl_k3"], "share the label 'kl_k3'"),
    (42, "regularizers: must be a list"),
]


@pytest.mark.parametrize("spec,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_specs_are_refused_with_key_path(spec, message):
    with pytest.raises(ConfigError) as err:
        build_regularizers(spec)
    assert message in str(err.value)


def test_free_combinations_compose():
    """Combinations no paper ran must still work: JS toward a soup with DADS weights; adaptive forward KL."""
    regs = build_regularizers(
        [
            {"name": "js", "reference": {"type": "soup", "checkpoints": ["a", "b"]}, "weighting": "dads"},
            {"name": "forward_kl", "mode": "exact", "weighting": {"type": "adaptive", "target": 0.1}, "label": "fkl"},
            {"name": "kl_k3", "reference": {"type": "teacher", "model": "path/to/teacher"}, "coef": 0.01},
        ]
    )
    assert [r.reference_key for r in regs] == ["soup", "initial", "teacher"]
    b = _batch_from_logits()
    b.ref_logprobs = {"soup": b.ref_logprobs, "teacher": b.ref_logprobs * 1.1}
    b.ref_logits = {"initial": b.ref_logits}
    for r in regs:
        assert torch.isfinite(r(b).per_token).all()
    b.ref_logprobs = {"initial": b.ref_logprobs["soup"]}
    with pytest.raises(ValueError, match=r"needs ref_logprobs\['soup'\]"):
        regs[0](b)


def test_missing_batch_field_is_named():
    (reg,) = build_regularizers("kl_exact")
    batch = PolicyBatch(logprobs=torch.zeros(1, 2), mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"needs batch\.(ref_)?logits"):
        reg(batch)


def test_sampled_from_mismatch_is_refused():
    (reg,) = build_regularizers([{"name": "forward_kl", "samples": "reference"}])
    b = _batch_from_logits()
    with pytest.raises(ValueError, match="sampled from 'policy'"):
        reg(b)
    b.sampled_from = "ref"
    assert torch.isfinite(reg(b).per_token).all()


def test_adaptive_coefficient_observes_and_checkpoints():
    (reg,) = build_regularizers("kl_adaptive")
    c0 = reg.weighting.coef(0)
    reg.observe(1.0, n_steps=100)  # far above target 0.05 -> coefficient grows
    assert reg.weighting.coef(1) > c0
    state = reg.state_dict()
    (fresh,) = build_regularizers("kl_adaptive")
    fresh.load_state_dict(state)
    assert fresh.weighting.coef(1) == reg.weighting.coef(1)


def test_scheduled_coefficient():
    (reg,) = build_regularizers(
        [{"name": "kl", "coef": 0.1, "weighting": {"type": "linear", "end": 0.0, "total_steps": 10}}]
    )
    b = _batch_from_logits()
    b.step = 5
    assert reg(b).metrics["kl_k3_linear/coef"] == pytest.approx(0.05)


def test_objective_compatibility():
    check_objective(build_regularizers("kl_k3"), "grpo")
    with pytest.raises(ConfigError, match="dpo.divergence"):
        check_objective(build_regularizers("kl_k3"), "dpo")
    check_objective([], "dpo")
    with pytest.raises(ConfigError, match="unknown objective"):
        check_objective([], "sft")


def test_registering_a_new_regularizer_is_one_class_one_line():
    class TVConfig(RegularizerConfig):
        name: str = "tv_test"

    class TV(Regularizer):
        Config = TVConfig

        def requires(self):
            return {"logprobs", "ref_logprobs", "mask"}

        def divergence(self, batch):
            from rlkit.functional import f_divergence_sampled

            return f_divergence_sampled(batch.logprobs, batch.reference("ref_logprobs", "initial", "tv"), "tv")

    register("tv_test")(TV)
    assert "tv_test" in available() and get("tv_test") is TV
    (reg,) = build_regularizers([{"name": "tv_test", "coef": 0.5}])
    assert torch.isfinite(reg(_batch_from_logits()).per_token).all()
    with pytest.raises(ValueError, match="already registered"):
        register("kl")(TV)


def test_docs_catalogue_is_the_registry_catalogue():
    """The preset table of docs/concepts.md (value estimated, gradient delivered) is the one the registry
    generates."""
    import subprocess
    import sys
    from pathlib import Path

    from rlkit.regularizers.registry import catalogue_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text()
    start = page.index("<!-- catalogue:")
    table = page[page.index("\n", start) + 1 : page.index("<!-- /catalogue -->")]
    # the built-in registry, in a fresh interpreter (other tests register names of their own in this one)
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rlkit.regularizers.registry import catalogue_markdown; print(catalogue_markdown(), end='')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert table == fresh
    rows = fresh.splitlines()[2:]
    assert len(rows) == len(PRESETS) + len({"kl", "forward_kl", "js", "alpha", "lp_reg"} - set(PRESETS))
    assert set(catalogue_markdown().splitlines()) >= set(fresh.splitlines())  # this interpreter's adds only
    assert "| `kl` | `kl_k3` | loss | reverse KL, k3 (unbiased) on policy samples | reverse KL (token) |" in rows
    assert any(r.startswith("| `kl_k3_pathwise` ") and r.endswith("| forward KL (token) |") for r in rows)

"""Each extensible axis takes a new member as one file plus one registry line (``docs/extending.md``): the test
writes that file into a temporary module, registers it, and checks a recipe using it takes effect.

One test function per axis; the registries are restored afterwards, so nothing leaks into other tests."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.types import LearnerNeeds


@pytest.fixture
def module_from(tmp_path, monkeypatch):
    """``module_from(name, source)``: ``source`` written to ``tmp_path/<name>.py`` and imported."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return importlib.import_module(name)

    return load


NEW_REFERENCE = '''
    """A reference type for the test: the initial policy with seeded Gaussian noise of scale ``sigma``."""

    from typing import Literal

    import torch
    from pydantic import Field

    from rlkit.references import ReferenceConfig, ReferenceSource, ReferenceType


    class PerturbedConfig(ReferenceConfig):
        type: Literal["perturbed"] = "perturbed"
        sigma: float = Field(gt=0)
        seed: int = 0


    class PerturbedReference(ReferenceType):
        Config = PerturbedConfig

        @classmethod
        def prepare(cls, cfg, setup, path):
            return f"prepared at {path}"

        @classmethod
        def source(cls, cfg, init_paths, prepared=None):
            return ReferenceSource("perturbed", [init_paths[0]],
                                   options={"sigma": cfg.sigma, "seed": cfg.seed, "prepared": prepared})

        @classmethod
        def load_model(cls, source, dtype):
            model, tokenizer = super().load_model(source, dtype)
            g = torch.Generator().manual_seed(source.options["seed"])
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * source.options["sigma"])
            return model, tokenizer
'''


def test_a_new_reference_type_is_one_file_and_one_registry_line(module_from, monkeypatch, tmp_path):
    from rlkit.config import Recipe
    from rlkit.models.lora import load_merged_model
    from rlkit.references import registry
    from rlkit.regularizers import build_regularizers
    from rlkit.trainer.reference_plan import ReferencePlan, resolve_reference
    from rlkit.trainer.references import prepare_references
    from rlkit.workers.local import spawn
    from rlkit.workers.reference import ReferenceWorker

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # restored after the test
    with pytest.raises(
        ConfigError,
        match=r"regularizers\[0\]\.reference\.type: unknown reference type 'perturbed'; "
        r"registered: initial, proxy, soup, teacher",
    ):
        build_regularizers([{"name": "kl", "reference": {"type": "perturbed", "sigma": 0.1}}])

    mod = module_from("my_reference", NEW_REFERENCE)
    registry.register_reference("perturbed")(mod.PerturbedReference)  # the one registry line

    # validation: the type's own fields, errors under the key path; the others' fields and refresh are refused
    spec = {"name": "kl", "reference": {"type": "perturbed", "sigma": 0.05, "seed": 3}}
    (reg,) = build_regularizers([spec])
    assert isinstance(reg.cfg.reference, mod.PerturbedConfig) and reg.reference_key == "perturbed"
    for bad, message in [
        ({"type": "perturbed"}, "reference.sigma: required key is missing"),
        ({"type": "perturbed", "sigma": -1}, "reference.sigma:"),
        ({"type": "perturbed", "sigma": 1, "model": "x"}, "'model' only applies to type 'teacher'"),
        ({"type": "perturbed", "sigma": 1, "refresh_every": 2}, "not 'perturbed'"),
        ({"type": "nowhere"}, "registered: initial, perturbed, proxy, soup, teacher"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_regularizers([{"name": "kl", "reference": bad}])

    # set-up -> resolve -> load, as the online trainer runs them
    prepared = prepare_references(Recipe(regularizers=[spec]), tmp_path, ["tiny"], console=None)
    needs = LearnerNeeds(ref_logprobs=("perturbed",), references={"perturbed": reg.cfg.reference.model_dump()})
    plan = ReferencePlan.from_needs(needs, kl_to_initial=False)
    assert plan.spawned == ("perturbed",) and plan.fixed == ("perturbed",)
    src = resolve_reference(plan.specs["perturbed"], ["tiny"], tmp_path, prepared)
    assert (src.kind, src.paths, src.options) == (
        "perturbed",
        ["tiny"],
        {"sigma": 0.05, "seed": 3, "prepared": "prepared at regularizers[0].reference"},
    )
    worker = spawn(
        ReferenceWorker,
        {},
        src.kind,
        src.paths,
        src.weights,
        load_options=src.options,
        name="perturbed",
        inprocess=True,
    )
    served = dict(worker.instance.model.named_parameters())
    base, _ = load_merged_model("tiny")
    g = torch.Generator().manual_seed(3)
    for name, p in base.named_parameters():
        torch.testing.assert_close(served[name], p + torch.randn(p.shape, generator=g) * 0.05)


NEW_WEIGHTING = '''
    """A weighting for the test: a fixed coefficient ``value`` (whatever the regularizer's ``coef``), and weight
    ``first`` on the batch's first sample."""

    from typing import Literal

    import torch
    from pydantic import Field

    from rlkit.regularizers.weightings import Weighting, WeightingConfig


    class FixedWeighting(WeightingConfig):
        type: Literal["fixed"]
        value: float = Field(ge=0)
        first: float = 1.0


    class Fixed(Weighting):
        Config = FixedWeighting

        def coef(self, step):
            return self.cfg.value

        def weights(self, batch):
            w = torch.ones(batch.logprobs.shape[0])
            w[0] = self.cfg.first
            return w
'''


def test_a_new_weighting_is_one_file_and_one_registry_line(module_from, monkeypatch):
    from rlkit.regularizers import PolicyBatch, build_regularizers
    from rlkit.regularizers.weightings import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # restored after the test
    spec = {"name": "kl", "estimator": "k3", "coef": 0.001, "weighting": {"type": "fixed", "value": 0.5, "first": 3}}
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.weighting: unknown weighting 'fixed'"):
        build_regularizers([spec])

    mod = module_from("my_weighting", NEW_WEIGHTING)
    base.register_weighting("fixed")(mod.Fixed)  # the one registry line

    (fixed,) = build_regularizers([spec])
    (plain,) = build_regularizers([{"name": "kl", "estimator": "k3", "coef": 1.0}])
    assert isinstance(fixed.cfg.weighting, mod.FixedWeighting) and fixed.label == "kl_k3_fixed"
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    batch = PolicyBatch(logprobs=lp, ref_logprobs=ref, mask=torch.ones(3, 4), step=7)
    want = plain(batch).per_token * 0.5
    want[0] *= 3
    out = fixed(batch)
    torch.testing.assert_close(out.per_token, want)
    assert out.metrics["kl_k3_fixed/coef"] == 0.5
    # only_incorrect applies to every weighting, a new one included
    (masked,) = build_regularizers([{**spec, "weighting": {**spec["weighting"], "only_incorrect": True}}])
    batch.extras["correct"] = [True, False, False]
    want[0] = 0
    torch.testing.assert_close(masked(batch).per_token, want)
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.weighting\.value: required key is missing"):
        build_regularizers([{**spec, "weighting": {"type": "fixed"}}])

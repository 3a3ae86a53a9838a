"""LoRA (peft) learner, adapter soups, TR-DPO reference refresh, teacher references; end to end through the CLI."""

import copy
import json
from pathlib import Path

import pytest
import torch

from rlkit.models.forward import collate, completion_logits, token_logprobs
from rlkit.types import TrainBatch

LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}
GRPO = {"learning_rate": 1e-2, "group_size": 4, "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token-mean"}


def _batch_data(tok, step=0):
    prompts = [tok(p)["input_ids"] for p in ("12+7=", "3+4=") for _ in range(4)]
    texts = [
        "<answer>19</answer>",
        "<answer>18</answer>",
        "<answer>9</answer>",
        "<answer>1</answer>",
        "<answer>7</answer>",
        "<answer>7</answer>",
        "<answer>8</answer>",
        "<answer>77</answer>",
    ]
    comps = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    scores = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=scores,
        correct=[s > 0 for s in scores],
        rollout_logprobs=[[-1.0] * len(c) for c in comps],
    )


def _logprobs(model, data, temperature=1.0):
    batch = collate(data.prompt_ids, data.completion_ids, 0)
    with torch.no_grad():
        return token_logprobs(completion_logits(model.eval(), batch, temperature), batch["completion_ids"])


def _perturb_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture
def lora_learner():
    from rlkit.workers.learner import LearnerCore

    return LearnerCore("tiny", GRPO, ["kl_k3"], lora=dict(LORA))


def test_only_adapter_parameters_train(lora_learner):
    from rlkit.models.tiny import build_tiny_model

    learner = lora_learner
    trainable = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt_params = [p for g in learner.opt.param_groups for p in g["params"]]
    assert len(opt_params) == len(trainable) == 2 * 7 * 4  # A and B of 7 linear layers x 4 blocks
    base_before = {k: v.clone() for k, v in build_tiny_model(0).state_dict().items()}
    metrics = learner.train_step(_batch_data(learner.tokenizer))
    # the learner served "initial" itself: the k3 term and the kl_initial diagnostic are there
    assert "kl_k3/value" in metrics and "kl_initial/k3" in metrics
    assert learner.needs().served == ("initial",)
    base_after = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in learner.model.state_dict().items()
        if "lora_" not in k
    }
    assert all(torch.equal(base_after[k], base_before[k]) for k in base_before)  # W0 frozen
    b = [p for n, p in learner.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in b)  # B left zero: the adapters did move


def test_disabled_adapter_logprobs_equal_base_model(lora_learner):
    from rlkit.models.tiny import build_tiny_model

    learner = lora_learner
    _perturb_adapters(learner.model)
    data = _batch_data(learner.tokenizer)
    ref = learner.compute(data.prompt_ids, data.completion_ids, want_logits=True)
    base_lp = _logprobs(build_tiny_model(0), data)  # an independent copy of the base weights
    policy_lp = _logprobs(copy.deepcopy(learner.model), data)
    assert torch.allclose(ref["logprobs"], base_lp, atol=1e-6)
    assert (policy_lp - base_lp).abs().max() > 1e-3  # the perturbed adapters change the policy
    assert ref["logits"].shape[:2] == base_lp.shape
    assert learner.model.training  # the reference pass restored the training mode


def test_merged_sync_equals_merge_and_unload(lora_learner):
    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.rollout import TransformersEngine

    learner = lora_learner
    _perturb_adapters(learner.model)
    weights = learner.get_weights()
    engine_model, tok = load_model_and_tokenizer("tiny", seed=5)  # other weights, overwritten by the sync
    TransformersEngine(engine_model, tok).update_weights(weights)
    expected = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    got = engine_model.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    data = _batch_data(tok)
    assert torch.allclose(_logprobs(engine_model, data), _logprobs(copy.deepcopy(learner.model), data), atol=1e-5)
    assert hasattr(learner.model, "disable_adapter")  # the learner's model was not merged in place
    adapters = learner.get_adapter_weights()
    assert len(adapters) == 56 and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert sum(v.numel() for v in adapters.values()) < 0.15 * sum(v.numel() for v in weights.values())


def test_lora_learner_serves_initial_logits_for_exact_divergences():
    from rlkit.workers.learner import LearnerCore

    learner = LearnerCore("tiny", GRPO, ["js_exact"], lora={**LORA, "kl_to_initial": False})
    _perturb_adapters(learner.model)
    metrics = learner.train_step(_batch_data(learner.tokenizer))
    assert metrics["js_exact/value"] > 0 and "kl_initial/k3" in metrics


def test_full_model_learner_is_unchanged():
    from rlkit.workers.learner import LearnerCore

    learner = LearnerCore("tiny", GRPO, ["kl_k3"])
    assert learner.needs().served == ()
    assert all(p.requires_grad for p in learner.model.parameters())
    with pytest.raises(ValueError, match="no LoRA adapter"):
        learner.get_adapter_weights()


def test_checkpoint_is_merged_model_plus_adapter_and_resumes(lora_learner, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlkit.models.tiny import build_tiny_model, save_tiny
    from rlkit.workers.learner import LearnerCore

    base = save_tiny(tmp_path / "base")
    learner = LearnerCore(str(base), GRPO, ["kl_k3"], lora=dict(LORA))
    learner.train_step(_batch_data(learner.tokenizer))
    _perturb_adapters(learner.model, seed=3)
    out = Path(learner.save(str(tmp_path / "final")))
    assert (out / "model.safetensors").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    assert not list(out.rglob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(out)
    weights = learner.get_weights()
    assert all(torch.equal(merged.state_dict()[k], weights[k]) for k in weights)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and config["r"] == 4
    reloaded = PeftModel.from_pretrained(build_tiny_model(0), str(out / "adapter"))
    data = _batch_data(learner.tokenizer)
    assert torch.allclose(_logprobs(reloaded, data), _logprobs(merged, data), atol=1e-5)
    # resume: base from the initial policy, adapter from the checkpoint
    resumed = LearnerCore(str(out), GRPO, ["kl_k3"], lora={**LORA, "base_path": str(base)})
    assert all(torch.equal(resumed.get_weights()[k], weights[k]) for k in weights)
    assert all(torch.equal(resumed.get_adapter_weights()[k], v) for k, v in learner.get_adapter_weights().items())


def _save_adapter(base_path, path, r, seed):
    from peft import PeftModel  # noqa: F401

    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.models.lora import wrap_lora

    model, _ = load_model_and_tokenizer(str(base_path))
    model = wrap_lora(model, {**LORA, "r": r, "alpha": 2.0 * r}, str(base_path))
    _perturb_adapters(model, seed)
    model.save_pretrained(path, safe_serialization=True)
    return path


def test_soup_of_adapters_averages_merged_weights(tmp_path):
    from safetensors.torch import load_file

    from rlkit.models.lora import is_adapter_dir
    from rlkit.models.tiny import build_tiny_model, save_tiny
    from rlkit.references.soup import load_soup_model

    base = save_tiny(tmp_path / "base")
    a1 = _save_adapter(base, tmp_path / "a1", r=4, seed=1)
    a2 = _save_adapter(base, tmp_path / "a2", r=2, seed=2)  # different ranks are fine: merged weights are averaged
    assert is_adapter_dir(a1) and not is_adapter_dir(base)
    soup, _ = load_soup_model([str(a1), str(a2)], weights=[0.25, 0.75])
    w0 = build_tiny_model(0).state_dict()
    name = "model.layers.1.self_attn.q_proj"

    def delta(adapter, r):  # s * B A from the saved factors, by hand
        sd = load_file(str(adapter / "adapter_model.safetensors"))
        A, B = sd[f"base_model.model.{name}.lora_A.weight"], sd[f"base_model.model.{name}.lora_B.weight"]
        return (2.0 * r / r) * B @ A

    expected = w0[f"{name}.weight"] + 0.25 * delta(a1, 4) + 0.75 * delta(a2, 2)
    assert torch.allclose(soup.state_dict()[f"{name}.weight"], expected, atol=1e-6)
    assert torch.equal(soup.state_dict()["model.embed_tokens.weight"], w0["model.embed_tokens.weight"])


def test_soup_of_mismatched_architectures_names_the_key(tmp_path):
    from rlkit.models.tiny import save_tiny
    from rlkit.references.soup import load_soup_model

    a1 = _save_adapter(save_tiny(tmp_path / "base"), tmp_path / "a1", r=4, seed=1)
    wide = save_tiny(tmp_path / "wide", hidden_size=256, intermediate_size=512)
    a2 = _save_adapter(wide, tmp_path / "a2", r=4, seed=2)
    with pytest.raises(ValueError, match=r"soup reference from .*key 'model\.[a-z_.0-9]+' has shape"):
        load_soup_model([str(a1), str(a2)])


def test_refresh_lerps_reference_toward_policy():
    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.references.refresh import lerp_parameters_

    policy, tok = load_model_and_tokenizer("tiny", seed=1)
    data = _batch_data(tok)
    p_sd = {k: v.clone() for k, v in policy.state_dict().items()}

    ref, _ = load_model_and_tokenizer("tiny", seed=0)
    before = _logprobs(ref, data)
    r0 = {k: v.clone() for k, v in ref.state_dict().items()}
    lerp_parameters_(ref, p_sd, 0.0)
    assert torch.equal(_logprobs(ref, data), before)

    lerp_parameters_(ref, p_sd, 0.5)
    sd = ref.state_dict()
    for k in r0:  # tied embeddings included: updated once, not twice
        assert torch.allclose(sd[k], (r0[k] + p_sd[k]) / 2, atol=1e-7), k

    ref1, _ = load_model_and_tokenizer("tiny", seed=0)
    lerp_parameters_(ref1, p_sd, 1.0)
    assert torch.allclose(_logprobs(ref1, data), _logprobs(policy, data), atol=1e-6)
    assert (before - _logprobs(policy, data)).abs().max() > 1e-2  # the two models did differ

    wide, _ = load_model_and_tokenizer("tiny", hidden_size=256)
    with pytest.raises(ValueError, match="has shape"):
        lerp_parameters_(ref1, wide.state_dict(), 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        lerp_parameters_(ref1, p_sd, 1.5)


def test_refreshed_state_round_trips_exactly_for_a_resume():
    """A refreshed reference saved with ``refreshed_state`` (safetensors bytes, as a checkpoint stores it) and loaded
    into a fresh copy of its source model is bit-identical, tied embeddings still tied."""
    from safetensors.torch import load, save

    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.references.refresh import lerp_parameters_, refreshed_state

    policy, _ = load_model_and_tokenizer("tiny", seed=1)
    ref, _ = load_model_and_tokenizer("tiny", seed=0)
    lerp_parameters_(ref, policy.state_dict(), 0.3)
    blob = save(refreshed_state(ref))
    fresh, _ = load_model_and_tokenizer("tiny", seed=0)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ref.state_dict().values()))
    lerp_parameters_(fresh, load(blob), 1.0)
    for (k, a), b in zip(fresh.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    tied = [(n, p) for n, p in fresh.named_parameters(remove_duplicate=False)]
    assert len({p.data_ptr() for _, p in tied}) == len(list(fresh.parameters()))  # sharing kept as it was


def test_refreshed_reference_has_its_own_key_and_config_errors():
    from rlkit._config import ConfigError
    from rlkit.config import load_recipe
    from rlkit.regularizers import build_regularizers

    r = load_recipe(
        "recipes/quickstart.yaml",
        ["regularizers=[kl_k3, {name: kl, label: tr, reference: {type: initial, refresh_every: 4}}]"],
    )
    keys = [reg.reference_key for reg in build_regularizers(r.regularizers)]
    assert keys == ["initial", "initial-refresh4-1"]  # the kl_initial diagnostic keeps the true initial
    bad = {
        "regularizers=[{name: kl, reference: {type: teacher, model: x, refresh_every: 2}}]": "refresh_every",
        "regularizers=[{name: kl, reference: {type: initial, refresh_rate: 0.5}}]": "refresh_rate",
        "regularizers=[{name: kl, reference: {type: teacher, model: x, tiny_config: {}}}]": "sft:tiny",
        "regularizers=[{name: kl, reference: {type: teacher, model: 'sft:tiny', sft: {max_stepz: 3}}}]": "max_stepz",
        "algorithm=ppo": "model.lora",
        "learner.num_workers=2": "model.lora",
        "model.lora.target_modules=[]": "target_modules",
    }
    for override, needle in bad.items():
        with pytest.raises(ConfigError, match=needle):
            load_recipe("recipes/grpo_lora.yaml", [override])


def test_teacher_must_share_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from rlkit._config import ConfigError
    from rlkit.models.tiny import VOCAB, save_tiny
    from rlkit.trainer.references import check_same_vocabulary

    same = save_tiny(tmp_path / "same", hidden_size=256)
    check_same_vocabulary("tiny", str(same), "regularizers[0].reference.model")  # no error
    other = save_tiny(tmp_path / "other")
    swapped = VOCAB[:4] + VOCAB[5:6] + VOCAB[4:5] + VOCAB[6:]  # two ids exchanged
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(swapped)}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>").save_pretrained(other)
    with pytest.raises(
        ConfigError,
        match=r"regularizers\[0\]\.reference\.model: .*does not share the policy's "
        r"tokenizer.*'</?answer>' has id",
    ):
        check_same_vocabulary("tiny", str(other), "regularizers[0].reference.model")


# ----------------------------------------------------------------------------------------------------------------
# end to end through the CLI (see tests/test_e2e.py)

from test_e2e import SMALL, rlkit  # noqa: E402


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_lora_recipe_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM

    regs = (
        "regularizers=[kl_k3, {name: kl, label: kl_tr, "
        "reference: {type: initial, refresh_every: 1, refresh_rate: 0.5}}]"
    )
    proc = rlkit(
        "train", "recipes/grpo_lora.yaml", f"output_dir={tmp_path}", *SMALL, "sft.max_steps=20", regs, home=tmp_path
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Learner pid=" in log
    assert "ReferenceWorker[initial]" not in log  # the learner's adapter-disabled base serves "initial"
    assert "ReferenceWorker[initial-refresh1-0.5]" in log  # the refreshed reference is a separate, full copy
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"kl_k3/value", "kl_tr/value", "kl_initial/k3", "rollout/logprob_gap"} <= set(rows[-1])
    assert rows[-1]["rollout/logprob_gap"] < 1e-4  # the rollout engine got the merged weights
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "kl_to_initial" in summary["eval_after"]
    final = tmp_path / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in k for k in model.state_dict())
    assert (final / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_teacher_recipe_end_to_end(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    proc = rlkit(
        "train",
        "recipes/grpo_teacher.yaml",
        f"output_dir={tmp_path}",
        *SMALL,
        "sft.max_steps=20",
        "eval.before=false",
        home=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ReferenceWorker[teacher]" in log and "ReferenceWorker[initial]" in log
    teacher = [p for p in (tmp_path / "sft").glob("teacher-*") if (p / "COMPLETE").exists()]
    assert len(teacher) == 1
    cfg = AutoConfig.from_pretrained(teacher[0])
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (256, 6)  # larger than the 128 x 4 student
    rows = _rows(tmp_path)
    # the KDRL recipe: k2 (the reverse-KL gradient) toward the teacher, its coefficient annealed
    assert [r["step"] for r in rows] == [1, 2] and "kl_k2_linear/value" in rows[-1]
    AutoModelForCausalLM.from_pretrained(tmp_path / "final")

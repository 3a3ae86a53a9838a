"""``model.dtype: bf16-mixed``: float32 weights, every forward's matmuls in bfloat16 (autocast), float32 logits."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit.models.loading import load_model_and_tokenizer
from rlkit.models.precision import autocast_region, engine_dtype, weights_dtype

ROOT = Path(__file__).resolve().parents[1]


def _linear_dtypes(model, run) -> list:
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_bf16_mixed_keeps_float32_weights_and_runs_matmuls_in_bfloat16():
    ref, _ = load_model_and_tokenizer("tiny")
    model, _ = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.randint(4, 50, (3, 10))
    seen = _linear_dtypes(model, lambda: model(ids))
    assert seen and set(seen) == {torch.bfloat16}
    assert set(_linear_dtypes(ref, lambda: ref(ids))) == {torch.float32}  # the float32 model is untouched
    a, b = ref(ids).logits, model(ids).logits
    assert b.dtype == torch.float32
    diff = (a - b).abs().max().item()
    assert 0 < diff < 0.05, diff  # bfloat16-rounded, not another model


def test_the_decoder_trunk_is_autocast_too_and_copies_keep_their_own_binding():
    model, _ = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    trunk = model.get_decoder()
    ids = torch.randint(4, 50, (2, 6))
    assert set(_linear_dtypes(model, lambda: trunk(input_ids=ids))) == {torch.bfloat16}  # fused head, PPO critic
    twin = copy.deepcopy(model)  # async rollouts keep a copy of the policy
    assert twin.forward.__self__ is twin and twin.get_decoder().forward.__self__ is twin.get_decoder()
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1)
    assert not torch.equal(twin(ids).logits, model(ids).logits)


def test_gradients_reach_float32_weights():
    model, _ = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    ids = torch.randint(4, 50, (2, 8))
    model(ids).logits.log_softmax(-1)[..., 5].mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and {g.dtype for g in grads} == {torch.float32} and all(torch.isfinite(g).all() for g in grads)


def test_lora_adapters_run_under_autocast():
    from peft import LoraConfig, get_peft_model

    model, _ = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(4, 50, (2, 6))
    assert torch.bfloat16 in _linear_dtypes(peft_model, lambda: peft_model(input_ids=ids))
    assert peft_model(input_ids=ids).logits.dtype == torch.float32
    with autocast_region(peft_model):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_native_sampler_drives_a_bf16_mixed_model(capsys):
    from rlkit.rollout.base import SamplingParams
    from rlkit.rollout.hf import TransformersEngine

    model, tok = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    out = TransformersEngine(model, tok, batch_size=8).generate(
        [tok("12+7=")["input_ids"]], SamplingParams(n=2, max_new_tokens=4, seed=0)
    )
    assert len(out) == 2 and "cannot drive" not in capsys.readouterr().out


def test_bf16_mixed_forwards_are_checked_with_the_bfloat16_tolerance():
    """The shared-prompt forward's one-time check takes its tolerance from the compute dtype: float32 weights
    under bf16 autocast round like bfloat16 weights (at 35M parameters the two forwards differ by ~1e-2 of the
    largest logit, which the float32 tolerance refused, switching the shared-prompt forward off)."""
    from rlkit.models.precision import compute_dtype
    from rlkit.models.prefix import agreement_tolerance

    mixed, tok = load_model_and_tokenizer("tiny", dtype="bf16-mixed")
    plain, _ = load_model_and_tokenizer("tiny")
    assert compute_dtype(mixed) == torch.bfloat16 and compute_dtype(plain) == torch.float32
    assert agreement_tolerance(mixed) == 2e-2 and agreement_tolerance(plain) == 1e-4


def test_precision_names():
    assert weights_dtype("bf16-mixed") == "float32" and engine_dtype("bf16-mixed") == "bfloat16"  # vLLM's dtype
    assert weights_dtype("bfloat16") == engine_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="bf16-mixed"):
        load_model_and_tokenizer("tiny", dtype="bf16")


@pytest.mark.slow
def test_grpo_trains_in_bf16_mixed(tmp_path):
    args = [
        "train",
        "recipes/quickstart.yaml",
        f"output_dir={tmp_path}",
        "sft.enabled=false",
        "grpo.steps=2",
        "grpo.prompts_per_step=4",
        "grpo.group_size=4",
        "eval.before=false",
        "eval.num_prompts=4",
        "eval.n_samples=2",
        "eval.ks=[1,2]",
        "logging.plot=false",
        "logging.tensorboard=false",
        "ray.torch_threads=1",
        "model.dtype=bf16-mixed",
    ]
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cannot drive" not in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    gaps = [r["rollout/logprob_gap"] for r in rows]
    assert all(1e-6 < g < 0.05 for g in gaps), gaps  # bfloat16 decode vs full forward: small, not float32-exact
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "final" / "model.safetensors")).values()} == {torch.float32}

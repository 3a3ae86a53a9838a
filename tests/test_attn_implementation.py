"""``model.attn_implementation``: one recipe key sets the attention kernel of every transformers model a run loads
(SFT warm start, learner, rollout engine copy, references, a PPO critic, DPO's policy and reference), checked by
the kernels that actually run: an SDPA op is dispatched under the default and never under ``eager``."""

import io
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlkit._config import ConfigError
from rlkit.config import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "sft.max_steps=3",
    "sft.num_examples=16",
    "grpo.steps=1",
    "grpo.prompts_per_step=2",
    "grpo.group_size=2",
    "eval.before=false",
    "eval.num_prompts=2",
    "eval.n_samples=2",
    "eval.ks=[1,2]",
    "logging.plot=false",
    "logging.tensorboard=false",
    "checkpoint.save_final=false",
    "data.params={n_train: 16, n_eval: 4}",
    "ray.mode=inprocess",
    "ray.torch_threads=1",
]


class CountSDPA(TorchDispatchMode):
    """Counts the aten ops of scaled-dot-product attention dispatched while active (in this thread)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += "scaled_dot_product" in func.__name__
        return func(*args, **(kwargs or {}))


def test_unknown_kernel_name_is_refused_at_its_key():
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: 'flash' is not an attention kernel"):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["model.attn_implementation=flash"])
    for ok in ("eager", "sdpa", "flash_attention_2", "kernels-community/flash-attn"):
        assert load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"model.attn_implementation={ok}"])


def test_unavailable_kernel_fails_in_the_driver_naming_the_key(tmp_path):
    from rlkit.trainer.online import OnlineTrainer

    pytest.importorskip("transformers")
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [f"output_dir={tmp_path}", *FAST, "sft.enabled=false", "model.attn_implementation=flash_attention_2"],
    )
    t = OnlineTrainer(recipe)
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: 'flash_attention_2' cannot be used here"):
        t.setup()
    assert not hasattr(t, "reward")  # before any worker started (the reward worker is the first)


@pytest.mark.parametrize("attn", [None, "eager"])
def test_the_kernel_reaches_every_model_of_a_grpo_run(tmp_path, attn):
    """SFT warm start, then a GRPO step whose rollout engine holds its own copy (``rollout.dtype``) and whose k3
    penalty needs the initial reference: with ``eager`` no SDPA kernel runs anywhere; by default all of them use it."""
    from rich.console import Console

    from rlkit.trainer.online import OnlineTrainer

    over = [f"output_dir={tmp_path}", *FAST, "rollout.dtype=bfloat16"]
    over += [f"model.attn_implementation={attn}"] if attn else []
    t = OnlineTrainer(load_recipe(ROOT / "recipes" / "quickstart.yaml", over), console=Console(file=io.StringIO()))
    with CountSDPA() as count:
        t.run()
    want = attn or "sdpa"
    models = {
        "learner": t.learner.instance.model,
        "rollout": t.rollout_workers[0].instance.engine.model,
        "reference": t.references["initial"].instance.model,
    }
    assert models["rollout"] is not models["learner"]
    assert {k: m.config._attn_implementation for k, m in models.items()} == dict.fromkeys(models, want)
    assert (count.n == 0) if attn == "eager" else (count.n > 0)


def test_lora_learner_gets_the_kernel(tmp_path):
    from rlkit.trainer.online import OnlineTrainer

    over = [f"output_dir={tmp_path}", *FAST, "sft.enabled=false", "model.lora={r: 4}"]
    over.append("model.attn_implementation=eager")
    t = OnlineTrainer(load_recipe(ROOT / "recipes" / "quickstart.yaml", over))
    t.setup()
    model = t.learner.instance.model
    assert type(model).__name__.startswith("PeftModel")
    assert model.base_model.model.config._attn_implementation == "eager"


def test_ppo_separate_critic_gets_the_kernel(tmp_path):
    from rlkit.trainer.online import OnlineTrainer

    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            *[o for o in FAST if not o.startswith("grpo.")],
            "sft.enabled=false",
            "algorithm=ppo",
            "grpo={}",  # the quickstart's grpo: section, which PPO would not read
            "ppo.critic=separate",
            "model.attn_implementation=eager",
        ],
    )
    t = OnlineTrainer(recipe)
    t.setup()
    learner = t.learner.instance
    assert learner.model.config._attn_implementation == "eager"
    assert learner.critic.trunk.config._attn_implementation == "eager"


def test_dpo_policy_and_live_reference_get_the_kernel(tmp_path):
    from rich.console import Console

    from rlkit.trainer import dpo

    recipe = load_recipe(
        ROOT / "recipes" / "dpo.yaml",
        [
            f"output_dir={tmp_path}",
            "sft.enabled=false",
            "model.name_or_path=tiny",
            "dpo.num_pairs=6",
            "dpo.eval_pairs=2",
            "dpo.task_eval=false",
            "dpo.reference=live",
            "model.attn_implementation=eager",
        ],
    )
    run = dpo._open_run(recipe, Console(file=io.StringIO()))
    dpo._load_policy(run)
    dpo._attach_reference(run)
    assert run.reference is not run.policy
    assert run.policy.config._attn_implementation == run.reference.config._attn_implementation == "eager"
    with CountSDPA() as count, torch.no_grad():
        run.reference(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert count.n == 0

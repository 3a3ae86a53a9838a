"""PPO: GAE, the critics, the PPO learner (one step, adaptive KL in the reward, checkpoints) and both PPO recipes
end to end through the CLI."""

import dataclasses
import json

import pytest
import torch

from rlkit.advantages import gae_advantages, group_advantages
from rlkit.algorithms import AdvantageInputs
from rlkit.config import PPOConfig, load_recipe
from rlkit.models.forward import collate
from rlkit.types import ReferenceOutput, TrainBatch
from rlkit.workers.learner import LearnerCore
from rlkit.workers.ppo_learner import CRITIC_FILE, PPOLearnerCore, SeparateCritic, ValueHead

from test_e2e import ROOT
from test_e2e import rlkit as cli

# ---------------------------------------------------------------------------------------------------- GAE


def _gae_hand(rewards, values, gamma, lam):
    """Textbook GAE on one unpadded trajectory, written as the explicit double sum (no recursion)."""
    n = len(rewards)
    v = list(values) + [0.0]  # the value after the last token is 0 (the episode ends)
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    adv = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
    return adv, [a + v[t] for t, a in enumerate(adv)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_hand_loop_with_padding(gamma, lam):
    g = torch.Generator().manual_seed(1)
    lengths = [5, 1, 3, 0]
    B, T = len(lengths), 6
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    rewards = torch.randn(B, T, generator=g)  # garbage on padding too: it must not leak in
    values = torch.randn(B, T, generator=g)
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        want_a, want_r = _gae_hand(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        assert adv[b, :n].tolist() == pytest.approx(want_a, rel=1e-5, abs=1e-5)
        assert ret[b, :n].tolist() == pytest.approx(want_r, rel=1e-5, abs=1e-5)
        assert torch.all(adv[b, n:] == 0) and torch.all(ret[b, n:] == 0)


# ------------------------------------------------------------------------------------------- the learner


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlkit.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("ppo_tiny") / "model", seed=0))


def _data(B=6, step=0, ref_shift=0.1, seed=0):
    """A hand-made batch: prompts of 1-3 tokens, completions of 1-4 tokens; rollout log-probs -2 everywhere and
    reference log-probs ``-2 - ref_shift`` (so the k1 KL per token is ``ref_shift``)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[7, 8, 9][: 1 + i % 3] for i in range(B)]
    comps = [torch.randint(6, 20, (1 + i % 4,), generator=g).tolist() for i in range(B)]
    T = max(len(c) for c in comps)
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=[float(i % 2) for i in range(B)],
        correct=[float(i % 2) for i in range(B)],
        rollout_logprobs=[[-2.0] * len(c) for c in comps],
        refs={"initial": ReferenceOutput(logprobs=torch.full((B, T), -2.0 - ref_shift))},
    )


def _core(tiny_dir, regs="kl_reward", **cfg):
    return PPOLearnerCore(tiny_dir, PPOConfig(**{"critic_learning_rate": 1e-2, **cfg}).model_dump(), regs, seed=0)


def _independent_values(model, w, b, batch):
    """Values from ``output_hidden_states`` (not the hook): w . h + b at the position predicting token t."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        output_hidden_states=True,
    )
    h = out.hidden_states[-1]
    # the last hidden state is the one the LM head reads
    assert torch.allclose(model.get_output_embeddings()(h), out.logits, atol=1e-5)
    P, T = batch["prompt_len"], batch["completion_ids"].shape[1]
    return h[:, P - 1 : P + T - 1] @ w + b


@pytest.mark.parametrize("critic", ["value_head", "separate"])
def test_critic_values_shape_and_positions(tiny_dir, critic):
    core = _core(tiny_dir, critic=critic)
    assert isinstance(core.critic, ValueHead if critic == "value_head" else SeparateCritic)
    torch.nn.init.normal_(core.critic.head.weight, std=0.5)
    torch.nn.init.constant_(core.critic.head.bias, 0.3)
    d = _data()
    batch = collate(d.prompt_ids, d.completion_ids, core.pad_id)
    with torch.no_grad():
        values = core.critic(batch)
        # the separate critic starts as a copy of the initial model, i.e. of the policy at step 0
        want = _independent_values(core.model, core.critic.head.weight[0], core.critic.head.bias[0], batch)
    assert values.shape == batch["completion_mask"].shape == (6, 4)
    assert torch.allclose(values, want, atol=1e-5)
    if critic == "value_head":  # the head alone is the critic's state; the trunk is the policy's
        assert set(core.critic.state_dict()) == {"head.weight", "head.bias"}


@pytest.mark.parametrize("fused_head", [None, False])
def test_value_head_reuses_the_policy_forward(tiny_dir, fused_head):
    core = _core(tiny_dir, fused_head=fused_head)
    core.train_step(_data())  # the first step also runs the fused head's one-time check (two more trunk passes)
    calls = []
    core.critic._trunk[0].register_forward_hook(lambda *a: calls.append(1))
    core.train_step(_data())
    # one pass for the old values, one for the old log-probs, one per minibatch update (2 epochs x 2 minibatches)
    assert core._fused_ok is (None if fused_head is False else True) and len(calls) == 2 + 4


def test_ppo_advantages_are_gae_on_token_rewards(tiny_dir):
    core = _core(tiny_dir, whiten_advantages=False, gamma=0.9, lam=0.8)
    torch.nn.init.normal_(core.critic.head.weight, std=0.5)
    d = _data()
    batch = collate(d.prompt_ids, d.completion_ids, core.pad_id)
    mask = batch["completion_mask"]
    scores = torch.tensor(d.scores)
    penalty = 0.05 * torch.rand(mask.shape) * mask
    adv = core._advantages(AdvantageInputs(scores=scores, mask=mask, group_size=1, penalty=penalty), batch)
    with torch.no_grad():
        values = _independent_values(core.model, core.critic.head.weight[0], core.critic.head.bias[0], batch)
    for b in range(len(scores)):
        n = int(mask[b].sum())
        r = [-float(penalty[b, t]) + (float(scores[b]) if t == n - 1 else 0.0) for t in range(n)]
        want, ret = _gae_hand(r, values[b, :n].tolist(), 0.9, 0.8)
        assert adv[b, :n].tolist() == pytest.approx(want, abs=1e-5)
        assert core._returns[b, :n].tolist() == pytest.approx(ret, abs=1e-5)


@pytest.mark.parametrize("critic", ["value_head", "separate"])
def test_one_step_updates_policy_and_critic(tiny_dir, critic):
    core = _core(tiny_dir, critic=critic)
    policy0 = {k: v.clone() for k, v in core.model.state_dict().items()}
    critic0 = {k: v.clone() for k, v in core.critic.state_dict().items()}
    m = core.train_step(_data())
    assert {
        "loss/value",
        "loss/policy",
        "value/mean",
        "critic/grad_norm",
        "reward_penalty/kl_k1/value",
        "reward_penalty/kl_k1/coef",
    } <= set(m)
    assert m["reward_penalty/kl_k1/value"] == pytest.approx(0.1, abs=1e-5)
    assert m["skipped_updates"] == 0 and m["loss/value"] > 0
    assert any(not torch.equal(v, core.model.state_dict()[k]) for k, v in policy0.items())
    assert not torch.equal(critic0["head.weight"], core.critic.state_dict()["head.weight"])
    if critic == "separate":  # the critic has its own trunk, trained by the value loss
        assert not torch.equal(
            critic0["trunk.layers.0.mlp.up_proj.weight"], core.critic.state_dict()["trunk.layers.0.mlp.up_proj.weight"]
        )


def test_value_loss_falls_on_a_repeated_batch(tiny_dir):
    core = _core(tiny_dir, critic_learning_rate=3e-2, learning_rate=1e-6, lam=1.0)  # fixed returns
    d = _data()
    losses = [core.train_step(dataclasses.replace(d, step=s))["loss/value"] for s in range(6)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("ref_shift,direction", [(0.2, 1), (0.005, -1)])
def test_adaptive_kl_coefficient_follows_the_target(tiny_dir, ref_shift, direction):
    core = _core(tiny_dir, regs="kl_adaptive")  # k1 in the reward, target 0.05, horizon 1000
    m0 = core.train_step(_data(ref_shift=ref_shift))
    m1 = core.train_step(_data(step=1, ref_shift=ref_shift))
    beta0, beta1 = m0["reward_penalty/kl_k1_adaptive/coef"], m1["reward_penalty/kl_k1_adaptive/coef"]
    assert beta0 == pytest.approx(0.05)
    err = min(max(ref_shift / 0.05 - 1, -0.2), 0.2)  # Ziegler et al.: beta *= 1 + clip(KL/target - 1) / horizon
    assert beta1 == pytest.approx(0.05 * (1 + err / 1000), rel=1e-9)
    assert (beta1 - beta0) * direction > 0


def test_checkpoint_round_trip_restores_the_critic(tiny_dir, tmp_path):
    core = _core(tiny_dir, regs="kl_adaptive")
    core.train_step(_data())
    path = core.save(str(tmp_path / "ck"), driver_state={"step": 1})
    assert (tmp_path / "ck" / CRITIC_FILE).is_file()
    fresh = _core(path, regs="kl_adaptive")
    assert not torch.equal(fresh.critic.head.weight, core.critic.head.weight)
    assert fresh.load_training_state(path) == {"step": 1}
    assert torch.equal(fresh.critic.head.weight, core.critic.head.weight)
    assert fresh.regs[0].weighting.coef(0) == core.regs[0].weighting.coef(0) != 0.05
    a, b = core.train_step(_data(step=1)), fresh.train_step(_data(step=1))  # optimizer state came back too
    assert a["loss/value"] == pytest.approx(b["loss/value"], rel=1e-5)
    assert torch.allclose(fresh.critic.head.weight, core.critic.head.weight, atol=1e-6)
    (tmp_path / "ck" / CRITIC_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=CRITIC_FILE):
        _core(path).load_critic(path)


def test_grpo_advantages_unchanged_by_the_hook(tiny_dir):
    core = LearnerCore(tiny_dir, {"group_size": 3, "learning_rate": 1e-4}, "kl_k3")
    scores, pen = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.4]), torch.rand(6, 4)
    mask = torch.ones(6, 4)
    with_pen = AdvantageInputs(scores=scores, mask=mask, group_size=3, penalty=pen)
    assert torch.equal(core._advantages(with_pen, {}), group_advantages(scores - pen.sum(-1), 3))
    assert torch.equal(
        core._advantages(AdvantageInputs(scores=scores, mask=mask, group_size=3), {}), group_advantages(scores, 3)
    )


def test_ppo_config_errors_name_the_key():
    with pytest.raises(Exception, match=r"ppo\.critic"):
        load_recipe(ROOT / "recipes" / "ppo_kl_adaptive.yaml", ["ppo.critic=twin"])
    with pytest.raises(Exception, match=r"ppo\.lam"):
        load_recipe(ROOT / "recipes" / "ppo_kl_adaptive.yaml", ["ppo.lam=1.5"])
    r = load_recipe(ROOT / "recipes" / "ppo_salsa.yaml")
    assert r.algorithm == "ppo" and r.ppo.group_size == 1 and (r.ppo.epochs, r.ppo.minibatches) == (2, 2)
    assert r.regularizers[0]["reference"]["type"] == "soup" and r.regularizers[0]["placement"] == "reward"


# ------------------------------------------------------------------------------------ end to end (CLI, Ray)

SMALL = [
    "sft.max_steps=20",
    "sft.num_examples=600",
    "ppo.steps=2",
    "ppo.prompts_per_step=8",
    "eval.num_prompts=8",
    "eval.n_samples=4",
    "eval.ks=[1,4]",
    "logging.print_every=1",
    "eval.before=false",
    "ray.mode=actors",
]  # end to end through Ray actors (tests/test_inprocess.py runs PPO in-process)


@pytest.fixture(scope="module")
def sft_cache(tmp_path_factory):
    """One SFT cache for the module: the first PPO run trains the warm starts, the other reuses them."""
    return tmp_path_factory.mktemp("ppo_sft_cache")


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.ray
def test_ppo_salsa_recipe(sft_cache, tmp_path):
    proc = cli(
        "train", "recipes/ppo_salsa.yaml", f"output_dir={tmp_path}", *SMALL, f"sft.cache_dir={sft_cache}", home=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "algorithm=ppo critic=value_head" in log and "ReferenceWorker[soup]" in log
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss/value", "value/mean", "reward_penalty/kl_k1/value", "reward_penalty/kl_k1/coef"} <= set(rows[-1])
    assert rows[0]["reward_penalty/kl_k1/value"] > 0  # two SFT seeds differ: the soup is not the policy
    assert (tmp_path / "final" / CRITIC_FILE).is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_ppo_kl_adaptive_recipe_and_resume(sft_cache, tmp_path):
    args = [
        "train",
        "recipes/ppo_kl_adaptive.yaml",
        f"output_dir={tmp_path}",
        *SMALL,
        f"sft.cache_dir={sft_cache}",
        "checkpoint.save_every=1",
    ]
    proc = cli(*args, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(tmp_path)
    key = "reward_penalty/kl_k1_adaptive"
    assert {"loss/value", f"{key}/value", f"{key}/coef", "critic/grad_norm"} <= set(rows[0])
    # the controller saw step 1's KL: the coefficient moved toward the target (0.02) from 0.05
    assert rows[0][f"{key}/coef"] == pytest.approx(0.05)
    assert (rows[1][f"{key}/coef"] - 0.05) * (rows[0][f"{key}/value"] - 0.02) > 0
    assert (tmp_path / "checkpoints" / "step_000002" / CRITIC_FILE).is_file()
    proc = cli(*args[:-1], "ppo.steps=3", "--resume", home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]

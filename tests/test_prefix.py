"""Shared-prompt forwards (rlkit.models.prefix) against the plain full forward: values and parameter gradients on the
logits path, the hidden-state path and a LoRA model; uneven groups, left-padded prompts of different lengths,
right-padded completions, T = 1; the learner (with and without the fused head, minibatches that split groups) and the
reference worker; the number of positions actually embedded; and the guard that turns it off for a model whose
forward ignores the cache."""

import copy

import pytest
import torch

from rlkit.models.fused_head import completion_hidden
from rlkit.models.forward import collate, completion_logits, token_logprobs
from rlkit.models.tiny import build_tiny_model, save_tiny
from rlkit.models.prefix import SharedPrefix, prompt_groups, shared_prefix_agrees
from rlkit.types import ReferenceOutput, TrainBatch


pytestmark = pytest.mark.usefixtures("one_thread")


def grouped_batch(sizes=(3, 1, 4, 2), max_len=9, seed=0, T_min=1):
    """Prompts of different lengths (left padding), each repeated ``sizes[i]`` times, random completions."""
    g = torch.Generator().manual_seed(seed)
    prompts, comps = [], []
    for i, n in enumerate(sizes):
        p = torch.randint(5, 50, (2 + (3 * i) % 5,), generator=g).tolist()
        for _ in range(n):
            prompts.append(p)
            comps.append(
                torch.randint(4, 50, (int(torch.randint(T_min, max_len + 1, (), generator=g)),), generator=g).tolist()
            )
    return collate(prompts, comps, 0)


def values_and_grads(model, batch, group, temperature=0.8):
    model.zero_grad(set_to_none=True)
    lp = token_logprobs(completion_logits(model, batch, temperature, group), batch["completion_ids"])
    m = batch["completion_mask"]
    # a non-uniform weighting, so that each row's gradient counts with its own factor
    w = torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)
    (lp * m * w).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach() * m, grads


def assert_same(a, b, atol=2e-5):
    (lp_a, g_a), (lp_b, g_b) = a, b
    torch.testing.assert_close(lp_a, lp_b, rtol=0, atol=atol)
    assert sorted(g_a) == sorted(g_b) and g_a
    for n in g_a:
        scale = max(1.0, float(g_a[n].abs().max()))
        torch.testing.assert_close(g_a[n], g_b[n], rtol=0, atol=atol * scale, msg=n)


def test_prompt_groups():
    b = collate([[5, 6], [5, 6], [7], [5, 6], [7], [7]], [[1]] * 6, 0)
    assert prompt_groups(b).tolist() == [0, 0, 1, 2, 3, 3]  # runs of adjacent equal prompts
    assert prompt_groups(collate([[5], [6], [5]], [[1]] * 3, 0)) is None  # no adjacent repeat: nothing to save
    assert prompt_groups(collate([[5]], [[1]], 0)) is None


@pytest.mark.parametrize("sizes", [(3, 1, 4, 2), (8,), (1, 1, 2)])
def test_logits_values_and_gradients_equal_the_full_forward(sizes):
    model = build_tiny_model(seed=1, num_hidden_layers=2)
    batch = grouped_batch(sizes)
    group = prompt_groups(batch)
    assert group is not None and int(group.max()) + 1 == len(sizes)
    assert_same(values_and_grads(model, batch, None), values_and_grads(model, batch, group))


def test_single_completion_token_and_hidden_state_path():
    model = build_tiny_model(seed=2, num_hidden_layers=2)
    one = collate([[5, 6, 7]] * 3 + [[8]] * 2, [[9], [10], [11], [12], [13]], 0)  # T = 1: prefill only
    group = prompt_groups(one)
    torch.testing.assert_close(
        completion_logits(model, one, 1.0, group), completion_logits(model, one), rtol=0, atol=2e-5
    )
    batch = grouped_batch((2, 3), seed=4)
    group = prompt_groups(batch)
    (h0, w0, b0), (h1, w1, b1) = completion_hidden(model, batch), completion_hidden(model, batch, group)
    assert w0 is w1 and b0 is b1
    torch.testing.assert_close(h1, h0, rtol=0, atol=2e-5)
    h1.sum().backward()  # the trunk's shared-prefix graph reaches the embedding
    assert model.get_input_embeddings().weight.grad is not None


def test_lora_model_values_and_adapter_gradients():
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(seed=3, num_hidden_layers=2)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    batch = grouped_batch((4, 4), seed=5)
    a, b = values_and_grads(model, batch, None), values_and_grads(model, batch, prompt_groups(batch))
    assert all("lora" in n for n in a[1])
    assert_same(a, b)


def test_positions_embedded_are_the_distinct_prompts_plus_the_completions():
    model = build_tiny_model(num_hidden_layers=1)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda mod, args, out: seen.append(args[0].numel()))
    batch = grouped_batch((8, 8), seed=6)
    B, P, T = batch["completion_ids"].shape[0], batch["prompt_len"], batch["completion_ids"].shape[1]
    completion_logits(model, batch)
    assert seen == [B * (P + T)]
    seen.clear()
    completion_logits(model, batch, 1.0, prompt_groups(batch))
    assert seen == [2 * P, B * (T - 1)]


def test_guard_turns_it_off_for_a_model_that_ignores_the_cache(capsys):
    model = build_tiny_model(num_hidden_layers=1)
    forward = model.forward

    def no_cache(*args, past_key_values=None, **kwargs):  # silently drops the cache: outputs are wrong
        return forward(*args, **kwargs)

    model.forward = no_cache
    batch = grouped_batch((3, 3), seed=7)
    group = prompt_groups(batch)
    assert "differ" in shared_prefix_agrees(model, batch, group, lambda m, b: completion_logits(m, b))
    switch = SharedPrefix(True, "Tester")
    assert switch.group(model, batch) is None and switch.ok is False
    assert "Tester: shared-prompt forward off" in capsys.readouterr().out
    good = SharedPrefix(True, "Tester")
    assert good.group(build_tiny_model(num_hidden_layers=1), batch) is not None and good.ok
    assert SharedPrefix(False, "Tester").group(model, batch) is None


GRPO = {
    "learning_rate": 1e-4,
    "group_size": 4,
    "clip_low": 0.2,
    "clip_high": 0.28,
    "aggregation": "token-mean",
    "entropy_coef": 0.01,
}


def learner_data(step, rows=16):
    g = torch.Generator().manual_seed(20 + step)
    lens = [int(torch.randint(2, 12, (), generator=g)) for _ in range(rows)]
    prompts = [
        p
        for p in (
            torch.randint(5, 40, (int(torch.randint(2, 7, (), generator=g)),), generator=g).tolist()
            for _ in range(rows // 4)
        )
        for _ in range(4)
    ]
    comps = [torch.randint(5, 40, (n,), generator=g).tolist() for n in lens]
    scores = [float(i % 3 == 0) for i in range(rows)]
    return TrainBatch(
        step=step,
        prompt_ids=prompts,
        completion_ids=comps,
        scores=scores,
        correct=scores,
        rollout_logprobs=[(-torch.rand(n, generator=g)).tolist() for n in lens],
        refs={"initial": ReferenceOutput(logprobs=-torch.rand(rows, max(lens), generator=g) * 3)},
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2))


# minibatches 3 over 16 rows: chunks of 6, 5, 5 rows, which split groups of 4
@pytest.mark.parametrize("updates", [{}, {"fused_head": True}, {"epochs": 2, "minibatches": 3}])
def test_learner_steps_agree_with_and_without_shared_prefix(tiny_dir, updates, capsys):
    from rlkit.workers.learner import LearnerCore

    cores = {
        s: LearnerCore(tiny_dir, {**GRPO, **updates, "shared_prefix": s}, ["kl_k3"], temperature=0.8)
        for s in (False, True)
    }
    # plain SGD, so a weight difference is a gradient difference: AdamW divides each entry by its own running RMS,
    # which turns float32 noise in near-zero gradient entries into lr-sized steps (measured 1.5e-5 at lr 1e-4 over
    # 6 updates here, the same in a float64 model: RoPE runs in float32), and no bound would then mean anything
    for core in cores.values():
        core.opt = torch.optim.SGD([p for p in core.model.parameters() if p.requires_grad], lr=0.1)
    init = {n: p.detach().clone() for n, p in cores[True].model.named_parameters()}
    for step in range(2):
        data = learner_data(step)
        base, shared = (cores[s].train_step(copy.deepcopy(data)) for s in (False, True))
        assert sorted(base) == sorted(shared)
        for k in base:
            assert shared[k] == pytest.approx(base[k], rel=1e-5, abs=1e-6), k
    assert cores[True]._prefix.ok is True and cores[False]._prefix.ok is False
    assert "shared-prompt forward off" not in capsys.readouterr().out
    params = dict(cores[False].model.named_parameters())
    assert max(float((params[n].detach() - p).abs().max()) for n, p in init.items()) > 1e-4  # the steps moved them
    for n, p in cores[True].model.named_parameters():
        assert float((p.detach() - params[n].detach()).abs().max()) <= 1e-6, n


def test_reference_worker_scores_equal_with_and_without_shared_prefix(tiny_dir):
    from rlkit.workers.local import actor_class
    from rlkit.workers.reference import ReferenceWorker

    cls = actor_class(ReferenceWorker)
    data = learner_data(0)
    outs = [
        cls("initial", [tiny_dir], temperature=0.7, shared_prefix=s).compute(
            data.prompt_ids, data.completion_ids, want_logits=True
        )
        for s in (False, True)
    ]
    for key in ("logprobs", "logits"):
        torch.testing.assert_close(outs[1][key], outs[0][key], rtol=0, atol=2e-5)

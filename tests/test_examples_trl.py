"""The TRL examples: each runs end to end, and each subclass reproduces TRL's own loss where TRL has the same math.

* GRPO: with ``kl_k3_pathwise`` (+ ``importance_correction``, TRL's default ``use_bias_correction_kl``) the rlkit
  regularizer must give exactly TRL's built-in ``beta * k3 * pi/pi_old`` loss and gradients; rlkit's default
  ``kl_k3`` gives the same value and, because TRL's differentiated ratio makes its k3 gradient the reverse KL's,
  the same gradients too; without the correction the two differ (k3 pathwise = the forward KL's gradient),
  checked by calling ``GRPOTrainer._compute_loss`` itself on the same inputs.
* DPO: rlkit's f-DPO must equal TRL's own f-DPO (``DPOConfig.f_divergence_type``; sigmoid DPO for reverse_kl),
  checked by calling ``DPOTrainer._compute_loss`` itself on the same batch; TRL's alpha coefficient is
  ``1 - alpha``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STEP_LINE = re.compile(r"^step (\d+): loss=(\S+)(?: \w+=(\S+))?", re.M)


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(script: str, tmp_path: Path, *args: str) -> list[tuple[int, float, float]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    cmd = [sys.executable, str(EXAMPLES / script), "--steps", "2", "--output-dir", str(tmp_path / "out"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [(int(s), float(loss), float(extra)) for s, loss, extra in STEP_LINE.findall(proc.stdout)]
    assert [s for s, _, _ in steps] == [1, 2], proc.stdout
    assert all(math.isfinite(loss) and math.isfinite(extra) for _, loss, extra in steps), proc.stdout
    return steps


# --- the examples run ------------------------------------------------------------------------------------------


def test_grpo_example_runs(tmp_path):
    steps = _run_example("trl_grpo_with_rlkit_regularizer.py", tmp_path, "--regularizer", "js")
    assert all(penalty >= 0 for _, _, penalty in steps)  # the control-variate JS estimate is non-negative


def test_dpo_example_runs(tmp_path):
    steps = _run_example("trl_dpo_with_rlkit_fdpo.py", tmp_path, "--divergence", "js")
    assert steps[0][1] == pytest.approx(math.log(2), abs=1e-5)  # step 1: policy == reference, loss = log 2


# --- GRPO: the rlkit kl_k3_pathwise regularizer is TRL's built-in k3 term -------------------------------------


def _grpo_inputs(trainer, generator):
    """A hand-made rollout batch in the layout `_generate_and_score_completions` produces."""
    B, P, T = 4, 5, 6
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(4, vocab, (B, P), generator=generator)
    completion_ids = torch.randint(4, vocab, (B, T), generator=generator)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[1, 4:] = 0  # padded completions
    completion_mask[3, 2:] = 0
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), T
        )
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(B, generator=generator),
        # a reference and an old policy that differ from the current one, so k3 and pi/pi_old are not trivial
        "ref_per_token_logps": logps + 0.3 * torch.randn(B, T, generator=generator),
        "old_per_token_logps": logps + 0.1 * torch.randn(B, T, generator=generator),
        "num_items_in_batch": completion_mask.sum(),
    }


def _loss_and_grads(compute, model, inputs):
    model.zero_grad(set_to_none=True)
    loss = compute(model, inputs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads


def test_grpo_kl_k3_pathwise_equals_trl_builtin_kl(tmp_path):
    from trl import GRPOTrainer

    from rlkit.regularizers import build_regularizers

    example = _load_example("trl_grpo_with_rlkit_regularizer")
    trainer = example.build_trainer(str(tmp_path), regularizer="kl_k3_pathwise", beta=0.1, n_prompts=8)
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which does not run here
    inputs = _grpo_inputs(trainer, torch.Generator().manual_seed(0))

    ours, our_grads = _loss_and_grads(trainer._compute_loss, model, inputs)
    ours_kl = trainer._metrics["train"]["rlkit/kl_k3_pathwise/value"][-1]
    # TRL's own code path on the same trainer and inputs: per_token_loss + beta * k3 (with use_bias_correction_kl)
    theirs, their_grads = _loss_and_grads(lambda m, i: GRPOTrainer._compute_loss(trainer, m, i), model, inputs)
    theirs_kl = trainer._metrics["train"]["kl"][-1]

    loss_diff = (ours - theirs).abs().item()
    grad_diff = (our_grads - their_grads).abs().max().item()
    print(
        f"GRPO kl_k3_pathwise vs TRL: loss {ours.item():.8f} vs {theirs.item():.8f}, |diff| {loss_diff:.3g}, "
        f"max |grad diff| {grad_diff:.3g}, kl metric |diff| {abs(ours_kl - theirs_kl):.3g}"
    )
    assert loss_diff < 1e-6
    assert grad_diff < 1e-6
    assert ours_kl == pytest.approx(theirs_kl, abs=1e-6) and theirs_kl > 1e-3

    # the check can fail: without the penalty, or with another estimator, the losses differ
    trainer.regularizer = build_regularizers({"name": "kl_k1", "coef": 0.1, "importance_correction": True})[0]
    other, _ = _loss_and_grads(trainer._compute_loss, model, inputs)
    assert (other - theirs).abs().item() > 1e-4
    # rlkit's default kl_k3 (reverse-KL gradient): TRL's value and, since TRL's ratio is differentiated, its gradient
    trainer.regularizer = build_regularizers({"name": "kl_k3", "coef": 0.1, "importance_correction": True})[0]
    same_value, token_grads = _loss_and_grads(trainer._compute_loss, model, inputs)
    assert (same_value - theirs).abs().item() < 1e-6
    assert (token_grads - their_grads).abs().max().item() < 1e-6
    # without the ratio, k3 as written (the forward KL's gradient) and kl_k3 (the reverse KL's) part ways
    grads = {}
    for name in ("kl_k3", "kl_k3_pathwise"):
        trainer.regularizer = build_regularizers({"name": name, "coef": 0.1})[0]
        grads[name] = _loss_and_grads(trainer._compute_loss, model, inputs)[1]
    assert (grads["kl_k3"] - grads["kl_k3_pathwise"]).abs().max().item() > 1e-5


def test_grpo_example_refuses_unsupported_setups(tmp_path):
    example = _load_example("trl_grpo_with_rlkit_regularizer")
    with pytest.raises(ValueError, match="beta"):
        example.build_trainer(str(tmp_path), beta=0.0, n_prompts=8)


# --- DPO: rlkit's f-DPO is TRL's f-DPO -------------------------------------------------------------------------

TRL_DIVERGENCE = {
    "reverse_kl": "reverse_kl",
    "forward_kl": "forward_kl",
    "js": "js_divergence",
    "alpha": "alpha_divergence",
}


@pytest.mark.parametrize(
    "divergence,alpha", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js", 0.5), ("alpha", 0.3), ("alpha", 0.8)]
)
def test_fdpo_equals_trl_loss(tmp_path, divergence, alpha):
    from trl import DPOTrainer

    from rlkit.functional import fdpo_loss

    example = _load_example("trl_dpo_with_rlkit_fdpo")
    # TRL's own f-DPO is configured through DPOConfig; its alpha coefficient is 1 - (rlkit's / the paper's) alpha.
    # beta = 1 and a reference from another seed make the log-ratios (and the divergences' losses) clearly differ.
    trainer = example.build_trainer(
        str(tmp_path),
        divergence=divergence,
        alpha=alpha,
        beta=1.0,
        ref_seed=1,
        n_pairs=4,
        f_divergence_type=TRL_DIVERGENCE[divergence],
        f_alpha_divergence_coef=1.0 - alpha,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model.train()
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(trainer, model, batch, False)  # TRL's loss, TRL's code
        ours = trainer._compute_loss(model, batch)  # the example's subclass
        # rlkit.functional on the sequence log-probs that TRL's own method computes
        pc, pr = trainer.compute_ref_log_probs(model, batch)
        rc, rr = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        functional = fdpo_loss(pc, pr, rc, rr, beta=1.0, divergence=divergence, alpha=alpha).mean()
        swapped = fdpo_loss(pc, pr, rc, rr, beta=1.0, divergence=divergence, alpha=1.0 - alpha).mean()

    print(
        f"f-DPO {divergence} alpha={alpha}: TRL {theirs.item():.8f}, subclass |diff| "
        f"{(ours - theirs).abs().item():.3g}, functional |diff| {(functional - theirs).abs().item():.3g}"
    )
    assert (ours - theirs).abs().item() < 1e-5
    assert (functional - theirs).abs().item() < 1e-5
    assert (pc - rc).abs().max() > 0.2  # the comparison is not at the trivial point u = 1 (loss = log 2)
    if divergence == "alpha":  # TRL's coefficient is 1 - alpha: passing alpha unchanged would not match
        assert (swapped - theirs).abs().item() > 1e-3

"""TRL's GRPOTrainer with its KL penalty replaced by an rlkit regularizer chosen by name.

    python examples/trl_grpo_with_rlkit_regularizer.py --regularizer js --steps 5

TRL's ``GRPOTrainer._compute_loss`` writes its penalty inline, ``beta * k3`` with
``k3 = exp(ref - logp) - (ref - logp) - 1`` (times ``pi/pi_old`` when ``use_bias_correction_kl``); there is no
method that returns only that term. So the subclass overrides ``_compute_loss``: it runs TRL's loss with ``beta``
set to 0 for the call (the clipped policy term only, TRL's KL skipped) and adds the rlkit penalty on the same
log-probs, averaged the way TRL's ``loss_type`` averages. ``beta`` stays > 0 everywhere else, so TRL still builds
the reference model and fills ``inputs["ref_per_token_logps"]``. The regularizer comes from
:func:`rlkit.regularizers.build_regularizers` with ``coef = beta``. With ``kl_k3_pathwise`` the result is TRL's own
loss, value and gradients (``tests/test_examples_trl.py`` checks both against ``GRPOTrainer._compute_loss``); TRL's
k3, differentiated as written, delivers the *forward* KL's gradient. With ``kl_k3`` (the default here) the loss has
the same value but the reverse KL's gradient (shared/docs/regularizers.md, section 2b).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model is built locally: nothing to download

import torch
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from reward_models import NumericMatch
from rlkit.data.arithmetic import make_arithmetic_splits
from rlkit.functional import aggregate
from rlkit.models import load_model_and_tokenizer
from rlkit.regularizers import PolicyBatch, build_regularizers

#: regularizers that work on sampled tokens in the loss (``rlkit.regularizers.PRESETS`` / registry names)
REGULARIZERS = ("kl_k3", "kl_k3_pathwise", "kl_seq", "kl_k1", "kl_k2", "forward_kl", "js", "alpha")
#: how TRL's ``loss_type`` averages per-token terms, in :func:`rlkit.functional.aggregate`'s names
AGGREGATION = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "drgrpo"}


class RlkitRegularizedGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose per-token KL term is an rlkit :class:`~rlkit.regularizers.Regularizer`."""

    def __init__(self, *args, regularizer: str = "kl_k3", **kwargs):
        super().__init__(*args, **kwargs)
        if self.beta == 0.0:
            raise ValueError(
                "set GRPOConfig.beta > 0: it is the regularizer's coefficient, and TRL only computes "
                "reference log-probs when beta != 0"
            )
        if self.loss_type not in AGGREGATION:
            raise ValueError(
                f"this example re-aggregates the penalty like loss_type {sorted(AGGREGATION)}, got {self.loss_type!r}"
            )
        spec = {"name": regularizer, "coef": self.beta}
        (self.regularizer,) = build_regularizers(spec)
        if self.regularizer.name == "kl" and self.args.use_bias_correction_kl:
            # TRL's use_bias_correction_kl (default True) weights its KL by pi/pi_old per token (with the default
            # importance_sampling_level="token"); rlkit's KL has the same option. Other divergences ignore the flag.
            (self.regularizer,) = build_regularizers({**spec, "importance_correction": True})
        if self.regularizer.placement != "loss" or "logits" in self.regularizer.requires():
            raise ValueError(f"regularizer {regularizer!r} must be a sampled (log-prob) penalty placed in the loss")
        self._policy_logps = None

    # TRL method 1/2: the one forward pass of `_compute_loss` goes through here. Keep its log-probs (with their
    # graph) so the penalty below needs no second forward pass.
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        self._policy_logps = out[0]
        return out

    # TRL method 2/2: the loss. TRL's policy loss with its inline KL switched off, plus the rlkit penalty.
    def _compute_loss(self, model, inputs):
        beta, self.beta = self.beta, 0.0  # `_compute_loss` reads self.beta to decide whether to add beta * k3
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self.beta = beta
        logps, self._policy_logps = self._policy_logps, None

        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")  # None when on-policy: TRL then uses logps.detach()
        batch = PolicyBatch(
            logprobs=logps,
            mask=mask,
            ref_logprobs=inputs["ref_per_token_logps"],
            old_logprobs=logps.detach() if old is None else old,
            advantages=inputs["advantages"],
            step=self.state.global_step,
        )
        out = self.regularizer(batch)  # per-token penalty, coef (= beta) applied, zero on padding
        mode = "train" if self.model.training else "eval"
        penalty = aggregate(out.per_token, mask, AGGREGATION[self.loss_type], norm_length=self.max_completion_length)
        # TRL divides the loss by the accumulation steps in training (its own auto-scaling is off)
        loss = loss + penalty / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)

        for key, value in out.metrics.items():  # e.g. "kl_k3/value": mean penalty per token, before the coef
            self._metrics[mode][f"rlkit/{key}"].append(value)
        return loss


class PrintStep(TrainerCallback):
    """One line per logged step: TRL's loss and the rlkit penalty value."""

    def __init__(self, label: str):
        self.key = f"rlkit/{label}/value"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            print(
                f"step {state.global_step}: loss={logs['loss']:.6g} penalty={logs.get(self.key, float('nan')):.6g} "
                f"reward={logs.get('reward', float('nan')):.3g}",
                flush=True,
            )


def correctness(prompts, completions, answer, **kwargs):
    """TRL reward function (dataset columns arrive as keyword arguments): 1 if the answer is right."""
    return NumericMatch()(prompts, completions, answer)


def digits(completions, **kwargs):
    """A small shaping reward (fraction of digits) so that the untrained tiny model sees non-zero advantages."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def build_trainer(
    output_dir: str, steps: int = 2, regularizer: str = "kl_k3", beta: float = 0.04, n_prompts: int = 32, **config
) -> RlkitRegularizedGRPOTrainer:
    output_dir = Path(output_dir)
    # TRL (beta > 0) loads its reference model from the policy's *path*, so save the tiny model and load it back.
    model, tokenizer = load_model_and_tokenizer("tiny")
    model_dir = output_dir / "tiny-init"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    train, _ = make_arithmetic_splits(n_train=n_prompts, n_eval=16)  # columns "prompt" ("12+7=") and "answer"
    args = GRPOConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        learning_rate=1e-3,
        beta=beta,
        loss_type="grpo",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **config,
    )
    return RlkitRegularizedGRPOTrainer(
        model=model,
        reward_funcs=[correctness, digits],
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        regularizer=regularizer,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--regularizer", choices=REGULARIZERS, default="kl_k3")
    p.add_argument("--beta", type=float, default=0.04, help="the regularizer's coefficient")
    p.add_argument("--output-dir", default="outputs/trl_grpo_rlkit")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    trainer = build_trainer(a.output_dir, a.steps, a.regularizer, a.beta)
    trainer.remove_callback(PrinterCallback)  # TRL's full log dict per step; print one short line instead
    trainer.add_callback(PrintStep(trainer.regularizer.label))
    print(f"GRPO with rlkit regularizer {trainer.regularizer.label!r} (coef {a.beta}) in place of TRL's KL")
    trainer.train()


if __name__ == "__main__":
    main()

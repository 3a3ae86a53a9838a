"""TRL's DPOTrainer with its loss replaced by rlkit's f-DPO (reverse_kl = standard DPO, forward_kl, js, alpha).

    python examples/trl_dpo_with_rlkit_fdpo.py --divergence js --steps 5

TRL's ``DPOTrainer._compute_loss`` runs the policy forward and the reference forward, then writes the loss inline;
there is no method that maps (chosen, rejected, reference) log-probs to the loss. So the subclass overrides
``_compute_loss`` and keeps the rest of TRL (dataset tokenization, collator, reference model, optimizer, logging):

* policy sequence log-probs: TRL's fused LM head, ``model(..., labels=labels, fused_lm_head=True).log_probs``
  (the forward TRL itself uses), summed over the completion tokens;
* reference sequence log-probs: TRL's ``compute_ref_log_probs`` (or the precomputed columns when
  ``precompute_ref_log_probs=True``);
* loss and metrics: :func:`rlkit.functional.dpo_loss` with ``divergence``/``alpha``.

TRL has its own f-DPO (``DPOConfig.f_divergence_type``); ``tests/test_examples_trl.py`` checks that this subclass
gives the same loss. Note the alpha convention: rlkit's ``alpha`` is the f-DPO paper's (alpha -> 0 reverse KL,
alpha = 1 forward KL) and equals ``1 - DPOConfig.f_alpha_divergence_coef``.
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model is built locally: nothing to download

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import DPOConfig, DPOTrainer

from rlkit.data.arithmetic import format_completion, make_arithmetic_splits
from rlkit.functional import dpo_loss
from rlkit.models import load_model_and_tokenizer

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


class RlkitFDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss is rlkit's f-DPO with the given ``divergence`` (and ``alpha`` for ``alpha``)."""

    def __init__(self, *args, divergence: str = "reverse_kl", alpha: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        if self.ld_alpha is not None or self.use_weighting or self.aux_loss_enabled:
            raise ValueError("this example covers plain (f-)DPO: no ld_alpha, use_weighting or MoE aux loss")
        self.divergence, self.alpha = divergence, alpha

    def _sequence_logps(self, model, inputs) -> torch.Tensor:
        """Summed completion log-probs, ``[2B]`` (chosen rows first, then rejected), with gradient."""
        model_kwargs = {
            k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
        }
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)  # score completions only
        per_token = model(**model_kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs
        return per_token.sum(dim=1)  # zero wherever the label is -100

    # The TRL method overridden: the whole loss step (TRL computes its loss inline here).
    def _compute_loss(self, model, inputs, return_outputs=False):
        if return_outputs:  # only for compute_metrics, which TRL deprecates (it needs the logits: extra forward)
            raise NotImplementedError("this example returns the loss only; do not pass compute_metrics")
        chosen, rejected = self._sequence_logps(model, inputs).chunk(2)  # the collator stacks [chosen; rejected]
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # TRL's reference forward (no grad); with PEFT and no ref_model it disables the adapter itself
            ref_model = self.ref_model if self.ref_model is not None else model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)
        loss, metrics = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, beta=self.beta, divergence=self.divergence, alpha=self.alpha
        )
        mode = "train" if self.model.training else "eval"
        for key, value in metrics.items():  # rlkit's names: loss/dpo, rewards/{chosen,rejected,margin,accuracy}
            self._metrics[mode][f"rlkit/{key}"].append(value)
        return loss


class PrintStep(TrainerCallback):
    """One line per logged step: the loss and rlkit's implicit-reward margin."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            print(
                f"step {state.global_step}: loss={logs['loss']:.6g} "
                f"margin={logs.get('rlkit/rewards/margin', float('nan')):.4g}",
                flush=True,
            )


def preference_pairs(n: int = 32, seed: int = 0) -> Dataset:
    """Arithmetic preference pairs: chosen = the correct ``<answer>X</answer>``, rejected = a nearby wrong X."""
    train, _ = make_arithmetic_splits(n_train=n, n_eval=16, seed=seed)
    rng = random.Random(seed)
    wrong = [str(int(a) + rng.choice((-10, -2, -1, 1, 2, 10))) for a in train["answer"]]
    return Dataset.from_dict(
        {
            "prompt": train["prompt"],
            "chosen": [format_completion(a) for a in train["answer"]],
            "rejected": [format_completion(w) for w in wrong],
        }
    )


def build_trainer(
    output_dir: str,
    steps: int = 2,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
    beta: float = 0.1,
    ref_seed: int = 0,
    n_pairs: int = 32,
    **config,
) -> RlkitFDPOTrainer:
    """``ref_seed``: seed of the reference model (the default, 0, is the policy's own initialisation)."""
    model, tokenizer = load_model_and_tokenizer("tiny", seed=0)
    ref_model, _ = load_model_and_tokenizer("tiny", seed=ref_seed)  # TRL cannot rebuild the tiny model by path
    args = DPOConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        learning_rate=1e-3,
        beta=beta,
        per_device_train_batch_size=4,
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
    return RlkitFDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=preference_pairs(n_pairs),
        processing_class=tokenizer,
        divergence=divergence,
        alpha=alpha,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--divergence", choices=DIVERGENCES, default="reverse_kl")
    p.add_argument("--alpha", type=float, default=0.5, help="for --divergence alpha (paper's alpha, in [0, 1])")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--output-dir", default="outputs/trl_dpo_rlkit")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    trainer = build_trainer(a.output_dir, a.steps, a.divergence, a.alpha, a.beta)
    trainer.remove_callback(PrinterCallback)  # TRL's full log dict per step; print one short line instead
    trainer.add_callback(PrintStep())
    print(
        f"DPO with rlkit f-DPO loss, divergence {a.divergence!r}"
        + (f" alpha={a.alpha}" if a.divergence == "alpha" else "")
    )
    trainer.train()


if __name__ == "__main__":
    main()

"""PPO learner: :class:`LearnerCore` plus a critic, token-level GAE and the value loss.

Everything else (minibatches, epochs, regularizers, non-finite handling, optimizer/RNG checkpoints) is the GRPO
learner's; this module fills its three hooks: ``_advantages`` (GAE from the critic's old values), ``_loss``
(:func:`rlkit.objectives.ppo.ppo_loss`) and ``_extra_checkpoint_files`` (the critic, in safetensors).
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial

import torch

from rlkit.algorithms import AdvantageInputs
from rlkit.config.sections import PPOConfig
from rlkit.objectives.ppo import ppo_loss
from rlkit.regularizers import PolicyBatch
from rlkit.types import TrainBatch

from .common import load_model, setup_process
from .learner import LearnerCore
from .local import remote_actor

CRITIC_FILE = "critic.safetensors"


def _trunk(model) -> torch.nn.Module:
    """The transformer body under a causal LM's head; its output's first item is the last hidden state."""
    get = getattr(model, "get_decoder", None)
    trunk = get() if callable(get) else None
    return trunk if trunk is not None else model.base_model


def _completion_values(head: torch.nn.Linear, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """``V(s_t) = w^T h + b`` at the positions that predict completion token ``t`` (the state before the action),
    the same slice as :func:`rlkit.models.forward.completion_logits`; ``[B, T]``."""
    P, T = batch["prompt_len"], batch["completion_ids"].shape[1]
    return head(hidden[:, P - 1 : P + T - 1].to(head.weight.dtype)).squeeze(-1)


def _zero_head(hidden_size: int) -> torch.nn.Linear:
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)  # V = 0 at the start: no arbitrary initial value scale
    torch.nn.init.zeros_(head.bias)
    return head


def _trunk_forward(trunk, batch: dict) -> torch.Tensor:
    return trunk(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )[0]


class ValueHead(torch.nn.Module):
    """A scalar linear head on the **policy's** last hidden state (shared trunk; its parameters are the head only).

    A forward hook keeps the trunk's output of the policy's latest forward, so the value in the loss costs no second
    trunk pass when it is asked for the same batch (same ``input_ids`` tensor); otherwise the trunk runs again.
    """

    def __init__(self, policy):
        super().__init__()
        self.head = _zero_head(policy.config.hidden_size)
        self._trunk = [_trunk(policy)]  # in a list: not a submodule, so state_dict() is the head alone
        self._seen: tuple = (None, None)
        self._trunk[0].register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, output) -> None:
        self._seen = ((kwargs["input_ids"] if "input_ids" in kwargs else args[0] if args else None), output[0])

    def forward(self, batch: dict) -> torch.Tensor:
        ids, hidden = self._seen
        self._seen = (None, None)
        if ids is not batch["input_ids"] or (torch.is_grad_enabled() and not hidden.requires_grad):
            hidden = _trunk_forward(self._trunk[0], batch)
        return _completion_values(self.head, hidden, batch)


class SeparateCritic(torch.nn.Module):
    """A copy of the initial model's trunk (no LM head) with its own scalar head; trained only by the value loss."""

    def __init__(self, model_path: str, dtype: str = "float32", attn_implementation: str | None = None):
        super().__init__()
        model, _ = load_model(model_path, dtype, attn_implementation)
        self.trunk = _trunk(model)
        self.head = _zero_head(model.config.hidden_size)
        self.train()

    def forward(self, batch: dict) -> torch.Tensor:
        return _completion_values(self.head, _trunk_forward(self.trunk, batch), batch)


class PPOLearnerCore(LearnerCore):
    """PPO (Schulman et al. 2017) for RLHF/RLVR (Ziegler et al. 2019): clipped surrogate on token-level GAE
    advantages, plus ``vf_coef`` times the clipped value loss. ``ppo``: :class:`rlkit.config.PPOConfig` (or its
    mapping).

    Per batch, once: the critic's old values ``V_old``, token rewards ``r_t`` (the score on the last completion
    token minus the per-token penalty of regularizers with ``placement: reward``), GAE advantages and the returns
    ``R_t = A_t + V_old(s_t)`` that the value loss regresses on. The critic's parameters are a second parameter
    group of the learner's optimizer (learning rate ``critic_learning_rate``), gradient-clipped on their own.
    """

    Section = PPOConfig
    cfg: PPOConfig  # validated by Section

    def __init__(
        self,
        model_path: str,
        ppo: PPOConfig | dict,
        regularizers,
        temperature: float = 1.0,
        dtype: str = "float32",
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(model_path, ppo, regularizers, temperature=temperature, dtype=dtype, seed=seed, **kwargs)
        cfg = self.cfg
        self.critic = (
            ValueHead(self.model)
            if cfg.critic == "value_head"
            else SeparateCritic(model_path, dtype, self.attn_implementation)
        )
        self.opt.add_param_group(
            {"params": list(self.critic.parameters()), "lr": cfg.critic_learning_rate or cfg.learning_rate}
        )
        self.opt.register_step_pre_hook(self._clip_critic)
        self._old_values: torch.Tensor | None = None
        self._returns: torch.Tensor | None = None
        self._step_metrics: dict[str, float] = {}
        self._critic_norms: list[float] = []

    def _clip_critic(self, opt, args, kwargs) -> None:
        """Before each optimizer step: clip the critic's gradient; a non-finite one skips the critic's update."""
        params = [p for p in self.critic.parameters() if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm or float("inf"))
        if torch.isfinite(norm):
            self._critic_norms.append(float(norm))
        else:
            for p in params:
                p.grad = None
            self._step_metrics["nonfinite/critic_grad_norm"] = 1.0

    def _advantages(self, inputs: AdvantageInputs, batch: dict) -> torch.Tensor:
        """The critic-based estimator (``ppo.advantage``, GAE) on the critic's old values of the batch; keeps the
        value targets (returns) for :meth:`_loss` and the estimator's metrics for the step's log."""
        with torch.no_grad():
            self._old_values = self.critic(batch).float() * inputs.mask
        out = self.advantage(replace(inputs, values=self._old_values))
        self._returns = out.returns
        self._step_metrics.update(out.metrics)
        return out.advantages

    def _loss(
        self, pb: PolicyBatch, sub: dict, idx: torch.Tensor, entropy=None, token_weights=None
    ) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        policy = partial(self.policy_loss, entropy=entropy, token_weights=token_weights)
        assert self._old_values is not None and self._returns is not None  # set by _advantages earlier in the step
        return ppo_loss(
            pb,
            self.critic(sub),
            self._old_values[idx],
            self._returns[idx],
            self.regs,
            vf_coef=cfg.vf_coef,
            value_clip=cfg.value_clip,
            aggregation=cfg.aggregation,
            norm_length=cfg.norm_length,
            policy=policy,
        )

    def train_step(self, data: TrainBatch) -> dict:
        self._step_metrics, self._critic_norms = {}, []
        metrics = super().train_step(data)
        metrics.update(self._step_metrics)  # GAE's advantage/abs_mean (masked) replaces the base's
        if self._critic_norms:
            metrics["critic/grad_norm"] = sum(self._critic_norms) / len(self._critic_norms)
        self._old_values = self._returns = None
        return metrics

    # --- checkpoints: the critic travels with every checkpoint ------------------------------------------------
    def _extra_checkpoint_files(self) -> dict:
        from safetensors.torch import save

        return {
            CRITIC_FILE: save({k: v.detach().cpu().contiguous().clone() for k, v in self.critic.state_dict().items()})
        }

    def load_critic(self, path: str) -> None:
        from pathlib import Path

        from safetensors.torch import load

        file = Path(path) / CRITIC_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the checkpoint was not written by a PPO learner")
        self.critic.load_state_dict(load(file.read_bytes()), strict=True)

    def load_training_state(self, path: str) -> dict:
        driver = super().load_training_state(path)
        self.load_critic(path)
        return driver


@remote_actor
class PPOLearner(PPOLearnerCore):
    def __init__(self, *args, torch_threads: int = 1, **kwargs):
        setup_process(torch_threads)
        super().__init__(*args, **kwargs)
        print(
            f"Learner pid={os.getpid()} algorithm=ppo critic={self.cfg.critic} "
            f"regularizers={[r.label for r in self.regs]}",
            flush=True,
        )

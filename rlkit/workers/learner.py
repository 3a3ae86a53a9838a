"""Learner: policy + optimizer + regularizers. Calls the pure objective; owns no math of its own.

One step's input is a :class:`rlkit.types.TrainBatch` (completions, rewards, rollout log-probs, the references'
:class:`~rlkit.types.ReferenceOutput` by key, DPH-RL rehearsal rows); :meth:`LearnerCore.needs` tells the driver
which references to send, and in what form (:mod:`rlkit.trainer.reference_plan`)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from rlkit.algorithms import ADVANTAGES, POLICY_LOSSES, AdvantageInputs
from rlkit.config.sections import GRPOConfig, LearnerLoRAConfig
from rlkit.divergences import kl_penalty
from rlkit.models.fused_head import completion_hidden, fused_base_logprobs, fused_head_agrees, linear_token_logprobs
from rlkit.models.forward import collate, completion_logits, entropy_from_logits, token_logprobs
from rlkit.objectives import reward_penalty, tis_weights
from rlkit.objectives.aggregation import masked_mean
from rlkit.models.prefix import SharedPrefix
from rlkit.references import reference_type
from rlkit.regularizers import PolicyBatch, build_regularizers
from rlkit.objectives.rehearsal import on_reference_samples, rehearsal_loss
from rlkit.types import LearnerNeeds, ReferenceOutput, RehearsalBatch, TrainBatch
from rlkit.utils.optim import adamw, load_state

from .common import cpu_state_dict, load_model, setup_process
from .local import remote_actor


@dataclass
class StepTensors:
    """One step's inputs as tensors, built once from the :class:`TrainBatch` (``[B, T]`` over completion tokens):
    the collated ``batch``, the references' log-probs / logits / hidden states by key, the reward's ``scores``
    and ``correct`` flags, each row's group ``accuracy`` and the rollout engine's log-probs."""

    step: int
    batch: dict
    refs: dict[str, torch.Tensor]
    ref_logits: dict[str, torch.Tensor]
    ref_hidden: dict[str, tuple]
    scores: torch.Tensor
    correct: torch.Tensor
    accuracy: torch.Tensor
    rollout_lp: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.batch["completion_mask"]


@dataclass
class UpdateLog:
    """What the minibatch updates of one step add up: metric sums, the terms that went non-finite, the number of
    updates applied (planned: ``planned``) and of those that carried rehearsal rows."""

    planned: int
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bad_terms: set[str] = field(default_factory=set)
    applied: int = 0
    with_rehearsal: int = 0


class LearnerCore:
    """The learner's logic without Ray (unit-testable; the Ray actor below wraps it).

    ``grpo``: the algorithm's validated section (:class:`rlkit.config.GRPOConfig`; a mapping is validated into
    one, so every default is the recipe's); ``lora``: a :class:`rlkit.config.sections.LearnerLoRAConfig` (or
    its mapping) for a peft-wrapped policy whose adapters alone train (:mod:`rlkit.models.lora`)."""

    Section: type[GRPOConfig] = GRPOConfig

    def __init__(
        self,
        model_path: str,
        grpo: GRPOConfig | dict,
        regularizers,
        temperature: float = 1.0,
        dtype: str = "float32",
        seed: int = 0,
        lora: LearnerLoRAConfig | dict | None = None,
        attn_implementation: str | None = None,
    ):
        torch.manual_seed(seed)
        self.lora = LearnerLoRAConfig.model_validate(lora) if isinstance(lora, dict) else lora
        if self.lora:
            from rlkit.models.loading import set_attention
            from rlkit.models.lora import load_lora_policy

            self.model, self.tokenizer = load_lora_policy(model_path, self.lora.model_dump(), dtype)
            set_attention(self.model, attn_implementation)
        else:
            self.model, self.tokenizer = load_model(model_path, dtype, attn_implementation)
        self.attn_implementation = attn_implementation  # model.attn_implementation (None: as loaded)
        self.model.train()
        self.cfg = grpo if isinstance(grpo, self.Section) else self.Section.model_validate(dict(grpo))
        if self.cfg.aggregation == "drgrpo" and not self.cfg.norm_length:
            raise ValueError(
                "grpo.aggregation 'drgrpo' needs grpo.norm_length, Dr. GRPO's constant L (the driver "
                "sets it to rollout.max_new_tokens); it is missing"
            )
        self.advantage = ADVANTAGES.get(self.cfg.advantage)(self.cfg)
        self.policy_loss = POLICY_LOSSES.get(self.cfg.policy_loss)(self.cfg)
        self.temperature = temperature
        self.regs = build_regularizers(regularizers)
        # samples: reference (DPH-RL) act on the stored rehearsal rows only, the others on the GRPO batch
        self.rehearsal_regs = [r for r in self.regs if on_reference_samples(r)]
        self.policy_regs = [r for r in self.regs if not on_reference_samples(r)]
        self.opt = adamw(
            (p for p in self.model.parameters() if p.requires_grad),
            lr=self.cfg.learning_rate,
            weight_decay=self.cfg.weight_decay,
        )
        self.pad_id = self.tokenizer.pad_token_id
        self.version = 0
        self.bad_steps = 0
        self.dist = None  # data-parallel rank: a GradSync from rlkit.workers.learner_group
        self._fused_ok: bool | None = None  # grpo.fused_head usable with this model and these regularizers
        # grpo.shared_prefix: each distinct prompt of a (mini)batch runs through the policy once (rlkit.models.prefix)
        self._prefix = SharedPrefix(self.cfg.shared_prefix, "Learner")
        self._ref_heads: dict[str, dict] = {}  # lm_heads of references sent as hidden states, by key

    def needs(self) -> LearnerNeeds:
        """What the driver must serve this learner: reference keys for log-probs and for full logits."""
        lp, logits = set(), set()
        for r in self.regs:
            req = r.requires()
            if "ref_logprobs" in req:
                lp.add(r.reference_key)
            if "ref_logits" in req:
                logits.add(r.reference_key)
        cfg = self.model.config
        # exact divergences: the reference sends hidden states (+ its lm_head once per version) where they are the
        # smaller transfer, V > H, instead of [B, T, V] logits
        big_vocab = getattr(cfg, "vocab_size", 0) > getattr(cfg, "hidden_size", float("inf"))
        return LearnerNeeds(
            ref_logprobs=tuple(sorted(lp)),
            ref_logits=tuple(sorted(logits)),
            ref_hidden=tuple(sorted(logits)) if big_vocab else (),
            references={
                r.reference_key: r.cfg.reference.model_dump()
                for r in self.regs
                if not reference_type(r.cfg.reference.type).learner_side
            },
            served=("initial",) if self.lora else (),  # LoRA: "initial" = the adapter-disabled model
            labels=tuple(r.label for r in self.regs),
            rehearsal=tuple(r.label for r in self.rehearsal_regs),
        )

    # --- one step: inputs -> advantages -> old policy -> minibatch updates -> metrics ---------------------------
    def train_step(self, data: TrainBatch) -> dict:
        s = self._step_tensors(data)
        metrics: dict[str, float] = {}
        penalty = self._reward_penalty(s, metrics)
        advantages = self._advantages(
            AdvantageInputs(
                scores=s.scores, mask=s.mask, group_size=self.cfg.group_size, penalty=penalty, correct=s.correct
            ),
            s.batch,
        )
        fused = self._fused(s.batch)
        old_lp, proxy = self._old_policy(s, fused)
        log = self._updates(s, advantages, old_lp, proxy, fused, data.rehearsal)
        metrics.update(self._update_metrics(log, s.step))
        if self.dist is not None:  # the same metrics on every rank, so adaptive controllers stay identical
            metrics = self.dist.reduce_metrics(metrics)
        self._observe(metrics)
        metrics.update(self._diagnostics(s, data, advantages))
        self.version += 1
        return metrics

    def _step_tensors(self, data: TrainBatch) -> StepTensors:
        self._check_groups(data)
        batch = collate(data.prompt_ids, data.completion_ids, self.pad_id)
        ref_outputs = self._with_own_references(data.refs, batch)
        g = self.cfg.group_size
        correct = torch.tensor(data.correct, dtype=torch.float32)
        T = batch["completion_mask"].shape[1]
        rollout_lp = torch.tensor([[*lps, *[0.0] * (T - len(lps))] for lps in data.rollout_logprobs])
        return StepTensors(
            step=data.step,
            batch=batch,
            refs={k: v.logprobs for k, v in ref_outputs.items()},
            ref_logits={k: v.logits for k, v in ref_outputs.items() if v.logits is not None},
            ref_hidden={k: self._ref_head(k, v) for k, v in ref_outputs.items() if v.hidden is not None},
            scores=torch.tensor(data.scores, dtype=torch.float32),
            correct=correct,
            accuracy=correct.view(-1, g).mean(1).repeat_interleave(g),
            rollout_lp=rollout_lp,
        )

    def _reward_penalty(self, s: StepTensors, metrics: dict) -> torch.Tensor | None:
        """Placement "reward": the per-token penalty of the sampled sequences, before advantages (no grad; the
        rollout log-probs); None without such regularizers."""
        if not any(r.placement == "reward" for r in self.regs):
            return None
        pen, m = reward_penalty(
            PolicyBatch(
                logprobs=s.rollout_lp, mask=s.mask, ref_logprobs=s.refs, step=s.step, extras={"correct": s.correct}
            ),
            self.regs,
        )
        metrics.update({f"reward_penalty/{k}": v for k, v in m.items()})
        return pen

    def _advantages(self, inputs: AdvantageInputs, batch: dict) -> torch.Tensor:
        """The algorithm's advantage estimator (``grpo.advantage``, :data:`rlkit.algorithms.ADVANTAGES`); PPO
        overrides this to add its critic's values."""
        return self.advantage(inputs).advantages

    def _reuse_old(self) -> bool:
        """One epoch of one minibatch: the old policy is the current one, its log-probs the update's own."""
        return self.cfg.epochs == 1 and self.cfg.minibatches == 1

    def _proxy_regs(self) -> list:
        return [r for r in self.regs if "proxy_logprobs" in r.requires()]

    def _old_policy(self, s: StepTensors, fused: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(old log-probs, Lp-Reg proxy log-probs)`` from one no-grad forward before the updates, when the step
        makes several updates; ``(None, None)`` when it makes one (:meth:`_reuse_old`)."""
        if self._reuse_old():
            return None, None
        with torch.no_grad():
            if fused:
                return self._forward(s.batch, fused, entropy=False)[0], None
            logits = completion_logits(self.model, s.batch, self.temperature, self._prefix.group(self.model, s.batch))
            ids, lp_regs = s.batch["completion_ids"], self._proxy_regs()
            return token_logprobs(logits, ids), (lp_regs[0].proxy_logprobs(logits, ids) if lp_regs else None)

    def _updates(
        self, s: StepTensors, advantages: torch.Tensor, old_lp, proxy, fused: bool, rehearsal: RehearsalBatch | None
    ) -> UpdateLog:
        """``grpo.epochs`` passes over ``grpo.minibatches`` contiguous row ranges, one optimizer update each; the
        DPH-RL rehearsal rows (one chunk per minibatch) join the first pass's updates."""
        mbs, B = self.cfg.minibatches, s.mask.shape[0]
        chunks = torch.arange(B).chunk(mbs)
        log = UpdateLog(planned=self.cfg.epochs * len(chunks))
        reh = self._rehearsal_inputs(rehearsal, mbs)
        for _ in range(self.cfg.epochs):
            for j, idx in enumerate(chunks):
                sub = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in s.batch.items()}
                lp, ent, logits, head = self._forward(sub, fused)
                pb = self._policy_batch(s, sub, idx, advantages, old_lp, proxy, lp, logits, head)
                loss, m = self._minibatch_loss(pb, sub, idx, ent, s.rollout_lp[idx])
                if j < len(reh):  # the rehearsal divergence joins this update's loss
                    r_loss, r_m = self._rehearsal_term(*reh[j], fused, s.step)
                    loss = loss + r_loss
                    m.update({**r_m, "loss/total": float(loss.detach())})
                if log.applied == 0:
                    gap = (lp.detach() - s.rollout_lp[idx]).abs() * sub["completion_mask"]
                    log.sums["rollout/logprob_gap"] += float(masked_mean(gap, sub["completion_mask"]))
                    log.sums["rollout/logprob_gap_max"] = max(log.sums["rollout/logprob_gap_max"], float(gap.max()))
                if self._apply(loss, m, sub["completion_mask"], log):
                    log.with_rehearsal += j < len(reh)
        if reh:
            log.sums["rehearsal/batch_size"] = float(sum(len(ref) for _, ref in reh))
        return log

    def _policy_batch(
        self, s: StepTensors, sub: dict, idx: torch.Tensor, advantages, old_lp, proxy, lp, logits, head
    ) -> PolicyBatch:
        """The :class:`PolicyBatch` of one minibatch (rows ``idx``) for the policy loss and the regularizers."""
        # async rollouts were sampled by last step's weights: the ratio is taken against that behaviour policy
        old = s.rollout_lp[idx] if self.cfg.async_rollout else (lp.detach() if old_lp is None else old_lp[idx])
        lp_regs = self._proxy_regs()
        prox = (
            proxy[idx]
            if proxy is not None
            else (lp_regs[0].proxy_logprobs(logits.detach(), sub["completion_ids"]) if lp_regs else None)
        )
        want_logits = any("logits" in r.requires() for r in self.regs)
        lo, hi = int(idx[0]), int(idx[-1]) + 1  # idx is a contiguous range: [B, T, V] tensors sliced as views
        return PolicyBatch(
            logprobs=lp,
            old_logprobs=old,
            mask=sub["completion_mask"],
            advantages=advantages[idx],
            ref_logprobs={k: v[idx] for k, v in s.refs.items()} or None,
            ref_logits={k: v[lo:hi] for k, v in s.ref_logits.items()} or None,
            ref_hidden={k: (h[lo:hi], *rest) for k, (h, *rest) in s.ref_hidden.items()} or None,
            logits=logits if want_logits else None,
            proxy_logprobs=prox,
            accuracy=s.accuracy[idx],
            step=s.step,
            hidden=head[0] if want_logits and head else None,
            lm_head=head[1] if want_logits and head else None,
            extras={"correct": s.correct[idx]},
        )

    def _minibatch_loss(
        self, pb: PolicyBatch, sub: dict, idx: torch.Tensor, entropy, rollout_lp: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """The policy loss with ``grpo.tis_cap``'s truncated importance weights against the rollout log-probs."""
        tis: torch.Tensor | None = None
        tis_m: dict[str, float] = {}
        if self.cfg.tis_cap:
            assert pb.old_logprobs is not None  # _policy_batch always sets it
            tis, tis_m = tis_weights(pb.old_logprobs, rollout_lp, sub["completion_mask"], self.cfg.tis_cap)
        loss, m = self._loss(pb, sub, idx, entropy=entropy, token_weights=tis)
        m.update(tis_m)
        return loss, m

    def _apply(self, loss: torch.Tensor, m: dict, mask: torch.Tensor, log: UpdateLog) -> bool:
        """Backward, gradient clip and optimizer step for one update, skipped (and the bad terms named in ``log``)
        when the loss or the gradient norm is non-finite; data-parallel ranks decide together. True if applied."""
        self.opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
        if self.dist is not None:  # data parallel: grads summed with loss shares; all ranks skip together
            finite = self.dist.sync(self.opt, finite, mask)
        if not finite:
            log.bad_terms.update(k for k, v in m.items() if isinstance(v, float) and not math.isfinite(v))
            log.bad_terms.add("loss")
            self.opt.zero_grad(set_to_none=True)
            return False
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm or float("inf"))
        if not torch.isfinite(norm):
            log.bad_terms.add("grad_norm")
            self.opt.zero_grad(set_to_none=True)
            return False
        m["grad_norm"] = float(norm)
        self.opt.step()
        for k, v in m.items():
            log.sums[k] += v
        log.applied += 1
        return True

    def _update_metrics(self, log: UpdateLog, step: int) -> dict[str, float]:
        """Means over the applied updates (the rollout gaps and the rehearsal batch size as they are; rehearsal
        terms over the updates that had rows), skipped updates, non-finite terms; stops the run after
        ``grpo.max_bad_steps`` consecutive steps without a finite update."""
        keep = ("rollout/logprob_gap", "rehearsal/batch_size")
        metrics = {k: (v / max(log.applied, 1) if not k.startswith(keep) else v) for k, v in log.sums.items()}
        metrics.update(
            {
                k: v / log.with_rehearsal
                for k, v in log.sums.items()
                if k.startswith("rehearsal/") and k != "rehearsal/batch_size" and log.with_rehearsal
            }
        )
        metrics["skipped_updates"] = float(log.planned - log.applied)
        bad = ", ".join(sorted(log.bad_terms))
        if log.bad_terms:
            metrics.update({f"nonfinite/{t}": 1.0 for t in sorted(log.bad_terms)})
            print(
                f"Learner: step {step}: non-finite {bad}; {log.planned - log.applied}/{log.planned} update(s) skipped",
                flush=True,
            )
        self.bad_steps = self.bad_steps + 1 if log.applied == 0 else 0
        limit = self.cfg.max_bad_steps
        if limit and self.bad_steps >= limit:
            raise FloatingPointError(
                f"{self.bad_steps} consecutive steps without a finite update (last step {step}: "
                f"non-finite {bad}); stopping. The last checkpoint is intact: lower the "
                "learning rate or the regularizer coefficient and resume"
            )
        return metrics

    def _observe(self, metrics: dict) -> None:
        """Each regularizer sees its own value (adaptive coefficients), wherever it was placed."""
        for r in self.regs:
            key = f"{r.label}/value"
            for name in (key, f"reward_penalty/{key}", f"rehearsal/{key}"):
                if name in metrics:
                    r.observe(metrics[name])
                    break

    def _diagnostics(self, s: StepTensors, data: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        out = {}
        if "initial" in s.refs:  # a diagnostic for every run, whatever its regularizer: k3 estimate, no clamps
            kl0 = kl_penalty(s.rollout_lp, s.refs["initial"], "k3", log_ratio_clamp=None, value_clamp=None)
            out["kl_initial/k3"] = float(masked_mean(kl0, s.mask))
        out.update(
            {
                "reward/mean": float(torch.tensor(data.scores).mean()),
                "reward/accuracy": float(s.correct.mean()),
                "response/length": float(s.mask.sum(-1).mean()),
                "advantage/abs_mean": float(advantages.abs().mean()),
            }
        )
        return out

    def _check_groups(self, data: TrainBatch) -> None:
        """Advantages are taken over blocks of ``group_size`` consecutive rows: ``data.group`` (when given) must
        say that each block answers one prompt, and no two blocks the same one."""
        g, groups = self.cfg.group_size, data.group
        if groups is None:
            return
        blocks = [groups[i : i + g] for i in range(0, len(groups), g)]
        if (
            len(groups) != len(data.completion_ids)
            or len(groups) % g
            or any(len(set(b)) != 1 for b in blocks)
            or len({b[0] for b in blocks}) != len(blocks)
        ):
            raise ValueError(
                f"train_step: completions must come in groups of group_size={g} consecutive rows, one "
                f"group per prompt; got group indices {groups}"
            )

    def _with_own_references(self, refs: dict[str, ReferenceOutput], batch: dict) -> dict[str, ReferenceOutput]:
        """The driver's reference outputs plus, for LoRA, ``initial``: this model with its adapters disabled (the
        driver does not send it)."""
        if not self.lora:
            return refs
        need = self.needs()
        if self.lora.kl_to_initial or "initial" in need.ref_logprobs + need.ref_logits:
            own = self.compute(batch=batch, want_logits="initial" in need.ref_logits)
            return {**refs, "initial": ReferenceOutput.from_dict(own)}
        return refs

    def _rehearsal_inputs(self, rehearsal: RehearsalBatch | None, chunks: int) -> list[tuple[dict, torch.Tensor]]:
        """``data.rehearsal`` (stored ``pi_0`` responses, :mod:`rlkit.trainer.rehearsal`) collated and split into
        ``chunks`` parts, one per minibatch: ``[(batch, stored log pi_0 [R_j, T])]``; empty without rows or without
        ``samples: reference`` regularizers."""
        if not rehearsal or not self.rehearsal_regs:
            return []
        batch, ref = rehearsal_tensors(rehearsal, self.pad_id)
        return [
            ({k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}, ref[idx])
            for idx in torch.arange(ref.shape[0]).chunk(chunks)
        ]

    def _rehearsal_term(self, sub: dict, ref: torch.Tensor, fused: bool, step: int) -> tuple[torch.Tensor, dict]:
        """DPH-RL's rehearsal loss on stored ``pi_0`` responses: ``sum_r coef_r * token-mean g_r(pi_theta / pi_0)``
        (:func:`rlkit.objectives.rehearsal.rehearsal_loss`; forward KL ``KL(pi_0 || pi_theta)``: ``g = u - log u - 1``)
        with the policy's log-probs from the same forward as the GRPO rows."""
        lp = self._forward(sub, fused, entropy=False)[0]
        return rehearsal_loss(lp, sub["completion_mask"], ref, self.rehearsal_regs, step)

    def _ref_head(self, key: str, ref: ReferenceOutput) -> tuple:
        """``(hidden, weight, bias, temperature)`` for a reference sent as hidden states; its lm_head comes with the
        first batch of each version (``ref.head``) and is kept until the next."""
        heads = self._ref_heads
        if ref.head is not None:
            heads[key] = ref.head
        head = heads.get(key)
        if head is None or head["version"] != ref.head_version:
            raise RuntimeError(
                f"Learner: reference {key!r} sent hidden states of lm_head version "
                f"{ref.head_version}, but this learner holds "
                f"{'none' if head is None else 'version ' + str(head['version'])}. The driver sends "
                "each version's head once; a restarted learner must resume from a checkpoint"
            )
        return ref.hidden, head["weight"], head["bias"], head["temperature"]

    def _fused(self, batch: dict) -> bool:
        """Whether steps take the fused-head path (``grpo.fused_head``): decided at the first step, by a one-row
        check that the head's ``F.linear`` gives the model's own logits. ``fused_head: true`` prints a fallback once,
        with why; the default (``null``, automatic) falls back silently, since nothing was asked for."""
        if self.cfg.fused_head is False:
            return False
        if self._fused_ok is None:
            why = None
            if any("proxy_logprobs" in r.requires() for r in self.regs):
                why = "lp_reg builds its proxy from the old policy's full logits"
            elif not fused_head_agrees(self.model, batch):
                why = "the model's logits are not F.linear(hidden, lm_head) (not a plain Linear head, or a transform)"
            self._fused_ok = why is None
            if why and self.cfg.fused_head:
                print(f"Learner: grpo.fused_head falls back to full [B, T, V] logits: {why}", flush=True)
        return self._fused_ok

    def _forward(self, sub: dict, fused: bool, entropy: bool = True) -> tuple:
        """``(log-probs, entropy, logits, head)`` of a minibatch: from ``[B, T, V]`` logits (``head`` None), or with
        ``fused`` from the last hidden states and the lm_head, chunk by chunk (``logits`` None; ``head`` is
        ``(hidden, (weight, bias, temperature))`` for :class:`PolicyBatch`'s ``hidden`` and ``lm_head``)."""
        group = self._prefix.group(self.model, sub)
        if not fused:
            logits = completion_logits(self.model, sub, self.temperature, group)
            ent = entropy_from_logits(logits) if entropy else None
            return token_logprobs(logits, sub["completion_ids"]), ent, logits, None
        parts = completion_hidden(self.model, sub, group)
        if parts is None:
            raise RuntimeError("grpo.fused_head: the model's lm_head is no longer a plain Linear")
        hidden, weight, bias = parts
        out = linear_token_logprobs(hidden, weight, sub["completion_ids"], bias, self.temperature, with_entropy=entropy)
        head = (hidden, (weight, bias, self.temperature))
        return (*out, None, head) if entropy else (out, None, None, head)

    def _loss(
        self, pb: PolicyBatch, sub: dict, idx: torch.Tensor, entropy=None, token_weights=None
    ) -> tuple[torch.Tensor, dict]:
        """One minibatch's objective: the algorithm's policy loss (``grpo.policy_loss``) with the loss-placed
        regularizers (PPO adds its value loss); ``sub``/``idx``: the minibatch and its rows."""
        return self.policy_loss(pb, self.policy_regs, entropy=entropy, token_weights=token_weights)

    def _extra_checkpoint_files(self) -> dict:
        """More files for every checkpoint (PPO: its critic)."""
        return {}

    def get_weights(self, copy: bool = True) -> dict:
        """The full policy weights for the rollout engines (LoRA: merged ``W0 + s B A``, see rlkit.models.lora).
        ``copy=False``: the module's own tensors (detached, not cloned), for an engine in this process that copies
        them into its weights before the next optimizer step (:class:`rlkit.trainer.weight_sync.InProcessCopySync`)."""
        if self.lora:
            from rlkit.models.lora import merged_state_dict

            return merged_state_dict(self.model)
        if not copy:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        return cpu_state_dict(self.model)

    def get_adapter_weights(self) -> dict:
        """LoRA only: just the adapter tensors, for engines that apply the adapter themselves (vLLM)."""
        if not self.lora:
            raise ValueError("get_adapter_weights: the learner has no LoRA adapter (model.lora is not set)")
        from rlkit.models.lora import adapter_state_dict

        return adapter_state_dict(self.model)

    def compute(
        self,
        prompts: list | None = None,
        completions: list | None = None,
        want_logits: bool = False,
        batch: dict | None = None,
    ) -> dict:
        """LoRA only: the ``initial`` reference (the adapter-disabled model), with ``ReferenceWorker.compute``'s
        signature and output, so the driver's evaluation can use the learner as that reference."""
        if not self.lora:
            raise ValueError("compute: only a LoRA learner serves a reference (model.lora is not set)")
        from rlkit.models.lora import base_model_outputs

        if batch is None:
            assert prompts is not None and completions is not None  # called with prompts + completions, or a batch
            batch = collate(prompts, completions, self.pad_id)
        group = self._prefix.group(self.model, batch)
        if not want_logits and self._fused(batch):  # fused head: no [B, T, V] logits for the reference either
            out = fused_base_logprobs(self.model, batch, self.temperature, group)
            if out is not None:
                return out
        return base_model_outputs(self.model, batch, self.temperature, want_logits, group)

    def save(self, path: str, driver_state: dict | None = None, files: dict[str, bytes] | None = None) -> str:
        """A model checkpoint; with ``driver_state``, a full training checkpoint (optimizer, RNG, regularizer
        state and the driver's state, see :mod:`rlkit.utils.train_state`), all in one atomic directory, with the
        driver's ``files`` (relative name -> bytes: the refreshed references' weights) in it too."""
        from rlkit.utils import train_state as ts
        from rlkit.utils.checkpoint import save_hf_checkpoint

        extra: dict[str, bytes | str] | None = None
        if driver_state is not None:
            blob, opt_meta = ts.optimizer_to_files(self.opt.state_dict())
            state = {
                "version": self.version,
                "bad_steps": self.bad_steps,
                "optimizer": opt_meta,
                "torch_rng": ts.rng_to_json(torch.get_rng_state()),
                "regularizers": {r.label: r.state_dict() for r in self.regs},
                "driver": driver_state,
            }
            extra = {ts.OPTIMIZER_FILE: blob, ts.STATE_FILE: json.dumps(state)}
        extra = {**(extra or {}), **self._extra_checkpoint_files(), **(files or {})}
        self.model.eval()
        model = self.model
        if self.lora:  # the merged model as the checkpoint's weights, the adapter in adapter/
            from rlkit.models.lora import checkpoint_parts

            model, adapter_files = checkpoint_parts(self.model)
            extra = {**(extra or {}), **adapter_files}
        out = save_hf_checkpoint(model, self.tokenizer, path, extra_files=extra)
        self.model.train()
        return str(out)

    def load_training_state(self, path: str) -> dict:
        """Restore what :meth:`save` wrote with a driver state (the weights were loaded from ``path`` already);
        returns the driver's part."""
        from pathlib import Path

        from rlkit.utils import train_state as ts

        state = ts.read_state(path)
        blob = (Path(path) / ts.OPTIMIZER_FILE).read_bytes()
        load_state(self.opt, ts.optimizer_from_files(blob, state["optimizer"]))
        torch.set_rng_state(ts.rng_from_json(state["torch_rng"]))
        for r in self.regs:
            if r.label in state["regularizers"]:
                r.load_state_dict(state["regularizers"][r.label])
        self.version, self.bad_steps = state["version"], state["bad_steps"]
        return state["driver"]

    def state(self) -> dict:
        return {"regularizers": {r.label: r.state_dict() for r in self.regs}, "version": self.version}


@remote_actor
class Learner(LearnerCore):
    def __init__(self, *args, torch_threads: int = 1, **kwargs):
        setup_process(torch_threads)
        super().__init__(*args, **kwargs)
        print(f"Learner pid={os.getpid()} regularizers={[r.label for r in self.regs]}", flush=True)


def rehearsal_tensors(data: RehearsalBatch, pad_id: int) -> tuple[dict, torch.Tensor]:
    """A step's rehearsal rows -> (a :func:`rlkit.models.forward.collate` batch, stored ``log pi_0`` ``[R, T]``, 0 on
    padding)."""
    batch = collate(data.prompt_ids, data.completion_ids, pad_id)
    ref = torch.zeros_like(batch["completion_mask"])
    for i, lps in enumerate(data.ref_logprobs):
        if len(lps) != len(data.completion_ids[i]):
            raise ValueError(
                f"rehearsal row {i}: {len(lps)} stored log-probs for {len(data.completion_ids[i])} completion tokens"
            )
        ref[i, : len(lps)] = torch.tensor(lps, dtype=ref.dtype)
    return batch, ref

"""Learner: policy + optimizer + regularizers. Calls the pure objective; owns no math of its own.

One step's input is a :class:`rlkit.types.TrainBatch` (completions, rewards, rollout log-probs, the references'
:class:`~rlkit.types.ReferenceOutput` by key, DPH-RL rehearsal rows); :meth:`LearnerCore.needs` tells the driver
which references to send, and in what form (:mod:`rlkit.trainer.reference_plan`)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import torch

from rlkit.advantages import group_advantages, rloo_advantages, stcr_scale
from rlkit.divergences import kl_penalty
from rlkit.models.fused_head import completion_hidden, fused_base_logprobs, fused_head_agrees, linear_token_logprobs
from rlkit.models.forward import collate, completion_logits, entropy_from_logits, token_logprobs
from rlkit.objectives import grpo_loss, reward_penalty, tis_weights
from rlkit.objectives.aggregation import masked_mean
from rlkit.models.prefix import SharedPrefix
from rlkit.regularizers import PolicyBatch, build_regularizers
from rlkit.objectives.rehearsal import on_reference_samples, rehearsal_loss
from rlkit.types import ReferenceOutput, RehearsalBatch, TrainBatch

from .common import cpu_state_dict, load_model, setup_process
from .local import remote_actor


class LearnerCore:
    """The learner's logic without Ray (unit-testable; the Ray actor below wraps it)."""

    def __init__(self, model_path: str, grpo: dict, regularizers, temperature: float = 1.0, dtype: str = "float32",
                 seed: int = 0, lora: dict | None = None):
        torch.manual_seed(seed)
        # LoRA (rlkit.models.lora): peft-wrapped policy, only adapters trained; ``lora`` is the model.lora section
        # plus ``base_path`` (the initial policy) and ``kl_to_initial``
        self.lora = lora
        if lora:
            from rlkit.models.lora import load_lora_policy

            self.model, self.tokenizer = load_lora_policy(model_path, lora, dtype)
        else:
            self.model, self.tokenizer = load_model(model_path, dtype)
        self.model.train()
        self.cfg = grpo
        if grpo.get("aggregation") == "drgrpo" and not grpo.get("norm_length"):
            raise ValueError("grpo.aggregation 'drgrpo' needs grpo.norm_length, Dr. GRPO's constant L (the driver "
                             "sets it to rollout.max_new_tokens); it is missing")
        self.temperature = temperature
        self.regs = build_regularizers(regularizers)
        # samples: reference (DPH-RL) act on the stored rehearsal rows only, the others on the GRPO batch
        self.rehearsal_regs = [r for r in self.regs if on_reference_samples(r)]
        self.policy_regs = [r for r in self.regs if not on_reference_samples(r)]
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=grpo["learning_rate"],
                                     weight_decay=grpo.get("weight_decay", 0.0))
        self.pad_id = self.tokenizer.pad_token_id
        self.version = 0
        self.bad_steps = 0
        self.dist = None  # data-parallel rank: a GradSync from rlkit.workers.learner_group
        self._fused_ok: bool | None = None  # grpo.fused_head usable with this model and these regularizers
        # grpo.shared_prefix: each distinct prompt of a (mini)batch runs through the policy once (rlkit.prefix)
        self._prefix = SharedPrefix(bool(grpo.get("shared_prefix", False)), "Learner")
        self._ref_heads: dict[str, dict] = {}  # lm_heads of references sent as hidden states, by key

    def needs(self) -> dict:
        """What the driver must fetch: reference keys for log-probs and for full logits."""
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
        return {"ref_logprobs": sorted(lp), "ref_logits": sorted(logits), "labels": [r.label for r in self.regs],
                "rehearsal": [r.label for r in self.rehearsal_regs],
                "ref_hidden": sorted(logits) if big_vocab else [],
                "references": {r.reference_key: r.cfg.reference.model_dump() for r in self.regs
                               if r.reference_key != "proxy"},
                # references this learner computes itself (LoRA: "initial" = the adapter-disabled model)
                "served": ["initial"] if self.lora else []}

    def _advantages(self, scores: torch.Tensor, penalty: torch.Tensor | None = None, batch: dict | None = None,
                    correct: torch.Tensor | None = None) -> torch.Tensor:
        """Advantages from sequence ``scores`` ``[B]`` and the per-token ``penalty`` ``[B, T]`` of reward-placed
        regularizers (PPO overrides this with token-level GAE); with ``grpo.stcr``, APO's STCR scaling of over-long
        wrong answers (:func:`rlkit.advantages.stcr_scale`; lengths from ``batch``'s completion mask, ``correct``
        the reward's per-sample flags)."""
        rewards = scores if penalty is None else scores - penalty.sum(-1)
        g, kind = self.cfg["group_size"], self.cfg.get("advantage", "grpo")
        if kind == "rloo":
            adv = rloo_advantages(rewards, g)
        else:
            adv = group_advantages(rewards, g, scale_std=(kind == "grpo"))
        if self.cfg.get("stcr"):
            if batch is None or correct is None:
                raise ValueError("grpo.stcr needs the completion mask and the per-sample correct flags")
            adv = stcr_scale(adv, batch["completion_mask"].sum(-1), correct, g, self.cfg.get("stcr_base", 1.00001))
        return adv

    def train_step(self, data: TrainBatch) -> dict:
        cfg, step = self.cfg, data.step
        self._check_groups(data)
        batch = collate(data.prompt_ids, data.completion_ids, self.pad_id)
        ref_outputs = self._with_own_references(data.refs, batch)
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        B = ids.shape[0]
        refs = {k: v.logprobs for k, v in ref_outputs.items()}
        ref_logits = {k: v.logits for k, v in ref_outputs.items() if v.logits is not None}
        ref_hidden = {k: self._ref_head(k, v) for k, v in ref_outputs.items() if v.hidden is not None}
        scores = torch.tensor(data.scores, dtype=torch.float32)
        correct = torch.tensor(data.correct, dtype=torch.float32)
        accuracy = correct.view(-1, cfg["group_size"]).mean(1).repeat_interleave(cfg["group_size"])
        rollout_lp = torch.zeros_like(mask)
        for i, lps in enumerate(data.rollout_logprobs):
            rollout_lp[i, :len(lps)] = torch.tensor(lps)
        metrics: dict[str, float] = {}
        # Placement "reward": penalise the sampled sequences before advantages (no grad; rollout log-probs).
        pen = None
        if any(r.placement == "reward" for r in self.regs):
            pen, m = reward_penalty(PolicyBatch(logprobs=rollout_lp, mask=mask, ref_logprobs=refs, step=step,
                                                extras={"correct": correct}), self.regs)
            metrics.update({f"reward_penalty/{k}": v for k, v in m.items()})
        advantages = self._advantages(scores, pen, batch, correct=correct)
        reuse_old = cfg.get("epochs", 1) == 1 and cfg.get("minibatches", 1) == 1
        old_lp = proxy = None
        lp_regs = [r for r in self.regs if "proxy_logprobs" in r.requires()]
        fused = self._fused(batch)
        if not reuse_old and fused:
            with torch.no_grad():
                old_lp = self._forward(batch, fused, entropy=False)[0]
        elif not reuse_old:
            with torch.no_grad():
                old_logits = completion_logits(self.model, batch, self.temperature,
                                               self._prefix.group(self.model, batch))
                old_lp = token_logprobs(old_logits, ids)
                if lp_regs:
                    proxy = lp_regs[0].proxy_logprobs(old_logits, ids)
                del old_logits
        want_logits = any("logits" in r.requires() for r in self.regs)
        sums: dict[str, float] = defaultdict(float)
        bad_terms: set[str] = set()
        n_updates = 0
        mbs = cfg.get("minibatches", 1)
        reh = self._rehearsal_inputs(data.rehearsal, mbs)  # DPH-RL rehearsal rows: one chunk per minibatch
        n_reh = 0
        for _ in range(cfg.get("epochs", 1)):
            for j, idx in enumerate(torch.arange(B).chunk(mbs)):
                sub = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}
                lp, ent, logits, head = self._forward(sub, fused)
                # async rollouts were sampled by last step's weights: the ratio is taken against that behaviour policy
                old = rollout_lp[idx] if cfg.get("async_rollout") else (lp.detach() if reuse_old else old_lp[idx])
                prox = proxy[idx] if proxy is not None else (
                    lp_regs[0].proxy_logprobs(logits.detach(), sub["completion_ids"]) if lp_regs else None)
                pb = PolicyBatch(
                    logprobs=lp, old_logprobs=old, mask=sub["completion_mask"], advantages=advantages[idx],
                    ref_logprobs={k: v[idx] for k, v in refs.items()} or None,
                    # idx is a contiguous range: [B, T, V] reference logits are sliced as views, never copied
                    ref_logits={k: v[int(idx[0]):int(idx[-1]) + 1] for k, v in ref_logits.items()} or None,
                    ref_hidden={k: (h[int(idx[0]):int(idx[-1]) + 1], *head) for k, (h, *head) in ref_hidden.items()}
                    or None,
                    logits=logits if want_logits else None, proxy_logprobs=prox, accuracy=accuracy[idx], step=step,
                    hidden=head[0] if want_logits and head else None, lm_head=head[1] if want_logits and head else None,
                    extras={"correct": correct[idx]})
                tis, tis_m = (tis_weights(old, rollout_lp[idx], sub["completion_mask"], cfg["tis_cap"])
                              if cfg.get("tis_cap") else (None, {}))
                loss, m = self._loss(pb, sub, idx, clip_low=cfg["clip_low"], clip_high=cfg["clip_high"],
                                     aggregation=cfg["aggregation"], norm_length=cfg.get("norm_length"), entropy=ent,
                                     entropy_coef=cfg.get("entropy_coef", 0.0), token_weights=tis)
                m.update(tis_m)
                if j < len(reh):  # the rehearsal divergence joins this update's loss
                    r_loss, r_m = self._rehearsal_term(*reh[j], fused, step)
                    loss = loss + r_loss
                    m.update({**r_m, "loss/total": float(loss.detach())})
                if n_updates == 0:
                    gap = (lp.detach() - rollout_lp[idx]).abs() * sub["completion_mask"]
                    sums["rollout/logprob_gap"] += float(masked_mean(gap, sub["completion_mask"]))
                    sums["rollout/logprob_gap_max"] = max(sums["rollout/logprob_gap_max"], float(gap.max()))
                self.opt.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))
                if finite:
                    loss.backward()
                if self.dist is not None:  # data parallel: grads summed with loss shares; all ranks skip together
                    finite = self.dist.sync(self.opt, finite, sub["completion_mask"])
                if not finite:  # name the terms that went non-finite, skip the update
                    bad_terms.update(k for k, v in m.items() if isinstance(v, float) and not math.isfinite(v))
                    bad_terms.add("loss")
                    self.opt.zero_grad(set_to_none=True)
                    continue
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.get("max_grad_norm") or float("inf"))
                if not torch.isfinite(norm):
                    bad_terms.add("grad_norm")
                    self.opt.zero_grad(set_to_none=True)
                    continue
                m["grad_norm"] = float(norm)
                self.opt.step()
                for k, v in m.items():
                    sums[k] += v
                n_updates += 1
                n_reh += j < len(reh)
        metrics.update({k: (v / max(n_updates, 1) if not k.startswith("rollout/logprob_gap") else v)
                        for k, v in sums.items()})
        metrics.update({k: v / n_reh for k, v in sums.items() if k.startswith("rehearsal/") and n_reh})
        if reh:
            metrics["rehearsal/batch_size"] = float(sum(len(ref) for _, ref in reh))
        n_planned = cfg.get("epochs", 1) * len(torch.arange(B).chunk(mbs))
        metrics["skipped_updates"] = float(n_planned - n_updates)
        if bad_terms:
            metrics.update({f"nonfinite/{t}": 1.0 for t in sorted(bad_terms)})
            print(f"Learner: step {step}: non-finite {', '.join(sorted(bad_terms))}; "
                  f"{n_planned - n_updates}/{n_planned} update(s) skipped", flush=True)
        self.bad_steps = self.bad_steps + 1 if n_updates == 0 else 0
        limit = cfg.get("max_bad_steps", 5)
        if limit and self.bad_steps >= limit:
            raise FloatingPointError(f"{self.bad_steps} consecutive steps without a finite update (last step {step}: "
                                     f"non-finite {', '.join(sorted(bad_terms))}); stopping. The last checkpoint "
                                     "is intact: lower the learning rate or the regularizer coefficient and resume")
        if self.dist is not None:  # the same metrics on every rank, so adaptive controllers stay identical
            metrics = self.dist.reduce_metrics(metrics)
        for r in self.regs:
            key = f"{r.label}/value"
            if key in metrics:
                r.observe(metrics[key])
            elif f"reward_penalty/{key}" in metrics:
                r.observe(metrics[f"reward_penalty/{key}"])
            elif f"rehearsal/{key}" in metrics:
                r.observe(metrics[f"rehearsal/{key}"])
        if "initial" in refs:  # a diagnostic for every run, whatever its regularizer: k3 estimate, no clamps
            kl0 = kl_penalty(rollout_lp, refs["initial"], "k3", log_ratio_clamp=None, value_clamp=None)
            metrics["kl_initial/k3"] = float(masked_mean(kl0, mask))
        metrics.update({"reward/mean": float(torch.tensor(data.scores).mean()),
                        "reward/accuracy": float(correct.mean()),
                        "response/length": float(mask.sum(-1).mean()),
                        "advantage/abs_mean": float(advantages.abs().mean())})
        self.version += 1
        return metrics

    def _check_groups(self, data: TrainBatch) -> None:
        """Advantages are taken over blocks of ``group_size`` consecutive rows: ``data.group`` (when given) must
        say that each block answers one prompt, and no two blocks the same one."""
        g, groups = self.cfg["group_size"], data.group
        if groups is None:
            return
        blocks = [groups[i:i + g] for i in range(0, len(groups), g)]
        if len(groups) != len(data.completion_ids) or len(groups) % g or any(len(set(b)) != 1 for b in blocks) \
                or len({b[0] for b in blocks}) != len(blocks):
            raise ValueError(f"train_step: completions must come in groups of group_size={g} consecutive rows, one "
                             f"group per prompt; got group indices {groups}")

    def _with_own_references(self, refs: dict[str, ReferenceOutput], batch: dict) -> dict[str, ReferenceOutput]:
        """The driver's reference outputs plus, for LoRA, ``initial``: this model with its adapters disabled (the
        driver does not send it)."""
        if not self.lora:
            return refs
        need = self.needs()
        if self.lora.get("kl_to_initial", True) or "initial" in need["ref_logprobs"] + need["ref_logits"]:
            own = self.compute(batch=batch, want_logits="initial" in need["ref_logits"])
            return {**refs, "initial": ReferenceOutput.from_dict(own)}
        return refs

    def _rehearsal_inputs(self, rehearsal: RehearsalBatch | None, chunks: int) -> list[tuple[dict, torch.Tensor]]:
        """``data.rehearsal`` (stored ``pi_0`` responses, :mod:`rlkit.trainer.rehearsal`) collated and split into
        ``chunks`` parts, one per minibatch: ``[(batch, stored log pi_0 [R_j, T])]``; empty without rows or without
        ``samples: reference`` regularizers."""
        if not rehearsal or not self.rehearsal_regs:
            return []
        batch, ref = rehearsal_tensors(rehearsal, self.pad_id)
        return [({k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}, ref[idx])
                for idx in torch.arange(ref.shape[0]).chunk(chunks)]

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
            raise RuntimeError(f"Learner: reference {key!r} sent hidden states of lm_head version "
                               f"{ref.head_version}, but this learner holds "
                               f"{'none' if head is None else 'version ' + str(head['version'])}. The driver sends "
                               "each version's head once; a restarted learner must resume from a checkpoint")
        return ref.hidden, head["weight"], head["bias"], head["temperature"]

    def _fused(self, batch: dict) -> bool:
        """Whether steps take the fused-head path (``grpo.fused_head``): decided at the first step, by a one-row
        check that the head's ``F.linear`` gives the model's own logits; a fallback is printed once, with why."""
        if not self.cfg.get("fused_head"):
            return False
        if self._fused_ok is None:
            why = None
            if any("proxy_logprobs" in r.requires() for r in self.regs):
                why = "lp_reg builds its proxy from the old policy's full logits"
            elif not fused_head_agrees(self.model, batch):
                why = "the model's logits are not F.linear(hidden, lm_head) (not a plain Linear head, or a transform)"
            self._fused_ok = why is None
            if why:
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
        out = linear_token_logprobs(hidden, weight, sub["completion_ids"], bias, self.temperature,
                                    with_entropy=entropy)
        head = (hidden, (weight, bias, self.temperature))
        return (*out, None, head) if entropy else (out, None, None, head)

    def _loss(self, pb: PolicyBatch, sub: dict, idx: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict]:
        """One minibatch's objective (PPO adds its value loss); ``sub``/``idx``: the minibatch and its rows."""
        return grpo_loss(pb, self.policy_regs, **kwargs)

    def _extra_checkpoint_files(self) -> dict:
        """More files for every checkpoint (PPO: its critic)."""
        return {}

    def get_weights(self) -> dict:
        """The full policy weights for the rollout engines (LoRA: merged ``W0 + s B A``, see rlkit.models.lora)."""
        if self.lora:
            from rlkit.models.lora import merged_state_dict

            return merged_state_dict(self.model)
        return cpu_state_dict(self.model)

    def get_adapter_weights(self) -> dict:
        """LoRA only: just the adapter tensors, for engines that apply the adapter themselves (vLLM)."""
        if not self.lora:
            raise ValueError("get_adapter_weights: the learner has no LoRA adapter (model.lora is not set)")
        from rlkit.models.lora import adapter_state_dict

        return adapter_state_dict(self.model)

    def compute(self, prompts: list | None = None, completions: list | None = None, want_logits: bool = False,
                batch: dict | None = None) -> dict:
        """LoRA only: the ``initial`` reference (the adapter-disabled model), with ``ReferenceWorker.compute``'s
        signature and output, so the driver's evaluation can use the learner as that reference."""
        if not self.lora:
            raise ValueError("compute: only a LoRA learner serves a reference (model.lora is not set)")
        from rlkit.models.lora import base_model_outputs

        batch = batch if batch is not None else collate(prompts, completions, self.pad_id)
        group = self._prefix.group(self.model, batch)
        if not want_logits and self._fused(batch):  # fused head: no [B, T, V] logits for the reference either
            out = fused_base_logprobs(self.model, batch, self.temperature, group)
            if out is not None:
                return out
        return base_model_outputs(self.model, batch, self.temperature, want_logits, group)

    def save(self, path: str, driver_state: dict | None = None) -> str:
        """A model checkpoint; with ``driver_state``, a full training checkpoint (optimizer, RNG, regularizer
        state and the driver's state, see :mod:`rlkit.utils.train_state`), all in one atomic directory."""
        from rlkit.utils import train_state as ts
        from rlkit.utils.checkpoint import save_hf_checkpoint

        extra = None
        if driver_state is not None:
            blob, opt_meta = ts.optimizer_to_files(self.opt.state_dict())
            state = {"version": self.version, "bad_steps": self.bad_steps, "optimizer": opt_meta,
                     "torch_rng": ts.rng_to_json(torch.get_rng_state()),
                     "regularizers": {r.label: r.state_dict() for r in self.regs}, "driver": driver_state}
            extra = {ts.OPTIMIZER_FILE: blob, ts.STATE_FILE: json.dumps(state)}
        extra = {**(extra or {}), **self._extra_checkpoint_files()}
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
        self.opt.load_state_dict(ts.optimizer_from_files(blob, state["optimizer"]))
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
    """A step's rehearsal rows -> (a :func:`rlkit.modeling.collate` batch, stored ``log pi_0`` ``[R, T]``, 0 on
    padding)."""
    batch = collate(data.prompt_ids, data.completion_ids, pad_id)
    ref = torch.zeros_like(batch["completion_mask"])
    for i, lps in enumerate(data.ref_logprobs):
        if len(lps) != len(data.completion_ids[i]):
            raise ValueError(f"rehearsal row {i}: {len(lps)} stored log-probs for {len(data.completion_ids[i])} "
                             "completion tokens")
        ref[i, :len(lps)] = torch.tensor(lps, dtype=ref.dtype)
    return batch, ref

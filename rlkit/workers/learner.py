"""Learner: policy + optimizer + regularizers. Calls the pure objective; owns no math of its own."""

from __future__ import annotations

import os
from collections import defaultdict

import ray
import torch

from rlkit.advantages import group_advantages, rloo_advantages
from rlkit.divergences import kl_penalty
from rlkit.modeling import collate, completion_logits, entropy_from_logits, token_logprobs
from rlkit.objectives import grpo_loss, reward_penalty
from rlkit.objectives.aggregation import masked_mean
from rlkit.regularizers import PolicyBatch, build_regularizers

from .common import cpu_state_dict, load_model, setup_process


class LearnerCore:
    """The learner's logic without Ray (unit-testable; the Ray actor below wraps it)."""

    def __init__(self, model_path: str, grpo: dict, regularizers, temperature: float = 1.0, dtype: str = "float32",
                 seed: int = 0):
        torch.manual_seed(seed)
        self.model, self.tokenizer = load_model(model_path, dtype)
        self.model.train()
        self.cfg = grpo
        self.temperature = temperature
        self.regs = build_regularizers(regularizers)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=grpo["learning_rate"],
                                     weight_decay=grpo.get("weight_decay", 0.0))
        self.pad_id = self.tokenizer.pad_token_id
        self.version = 0

    def needs(self) -> dict:
        """What the driver must fetch: reference keys for log-probs and for full logits."""
        lp, logits = set(), set()
        for r in self.regs:
            req = r.requires()
            if "ref_logprobs" in req:
                lp.add(r.reference_key)
            if "ref_logits" in req:
                logits.add(r.reference_key)
        return {"ref_logprobs": sorted(lp), "ref_logits": sorted(logits), "labels": [r.label for r in self.regs],
                "references": {r.reference_key: r.cfg.reference.model_dump() for r in self.regs
                               if r.reference_key != "proxy"}}

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        g, kind = self.cfg["group_size"], self.cfg.get("advantage", "grpo")
        if kind == "rloo":
            return rloo_advantages(rewards, g)
        return group_advantages(rewards, g, scale_std=(kind == "grpo"))

    def train_step(self, data: dict) -> dict:
        cfg, step = self.cfg, data["step"]
        batch = collate(data["prompt_ids"], data["completion_ids"], self.pad_id)
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        B = ids.shape[0]
        refs = {k: v["logprobs"] for k, v in data.get("refs", {}).items()}
        ref_logits = {k: v["logits"] for k, v in data.get("refs", {}).items() if "logits" in v}
        scores = torch.tensor(data["scores"], dtype=torch.float32)
        correct = torch.tensor(data["correct"], dtype=torch.float32)
        accuracy = correct.view(-1, cfg["group_size"]).mean(1).repeat_interleave(cfg["group_size"])
        rollout_lp = torch.zeros_like(mask)
        for i, lps in enumerate(data["rollout_logprobs"]):
            rollout_lp[i, :len(lps)] = torch.tensor(lps)
        metrics: dict[str, float] = {}
        # Placement "reward": penalise the sampled sequences before advantages (no grad; rollout log-probs).
        if any(r.placement == "reward" for r in self.regs):
            pen, m = reward_penalty(PolicyBatch(logprobs=rollout_lp, mask=mask, ref_logprobs=refs, step=step), self.regs)
            scores = scores - pen.sum(-1)
            metrics.update({f"reward_penalty/{k}": v for k, v in m.items()})
        advantages = self._advantages(scores)
        reuse_old = cfg.get("epochs", 1) == 1 and cfg.get("minibatches", 1) == 1
        old_lp = proxy = None
        lp_regs = [r for r in self.regs if "proxy_logprobs" in r.requires()]
        if not reuse_old:
            with torch.no_grad():
                old_logits = completion_logits(self.model, batch, self.temperature)
                old_lp = token_logprobs(old_logits, ids)
                if lp_regs:
                    proxy = lp_regs[0].proxy_logprobs(old_logits, ids)
                del old_logits
        want_logits = any("logits" in r.requires() for r in self.regs)
        sums: dict[str, float] = defaultdict(float)
        n_updates = 0
        mbs = cfg.get("minibatches", 1)
        for _ in range(cfg.get("epochs", 1)):
            for idx in torch.arange(B).chunk(mbs):
                sub = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}
                logits = completion_logits(self.model, sub, self.temperature)
                lp = token_logprobs(logits, sub["completion_ids"])
                old = lp.detach() if reuse_old else old_lp[idx]
                prox = proxy[idx] if proxy is not None else (
                    lp_regs[0].proxy_logprobs(logits.detach(), sub["completion_ids"]) if lp_regs else None)
                ent = entropy_from_logits(logits)
                pb = PolicyBatch(
                    logprobs=lp, old_logprobs=old, mask=sub["completion_mask"], advantages=advantages[idx],
                    ref_logprobs={k: v[idx] for k, v in refs.items()} or None,
                    ref_logits={k: v[idx] for k, v in ref_logits.items()} or None,
                    logits=logits if want_logits else None, proxy_logprobs=prox, accuracy=accuracy[idx], step=step)
                loss, m = grpo_loss(pb, self.regs, clip_low=cfg["clip_low"], clip_high=cfg["clip_high"],
                                    aggregation=cfg["aggregation"], entropy=ent, entropy_coef=cfg.get("entropy_coef", 0.0))
                if n_updates == 0:
                    sums["rollout/logprob_gap"] += float(masked_mean((lp.detach() - rollout_lp[idx]).abs(),
                                                                     sub["completion_mask"]))
                if not torch.isfinite(loss):
                    sums["skipped_updates"] += 1
                    self.opt.zero_grad(set_to_none=True)
                    continue
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.get("max_grad_norm"):
                    m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["max_grad_norm"]))
                self.opt.step()
                for k, v in m.items():
                    sums[k] += v
                n_updates += 1
        metrics.update({k: (v / max(n_updates, 1) if k not in ("skipped_updates", "rollout/logprob_gap") else v)
                        for k, v in sums.items()})
        for r in self.regs:
            key = f"{r.label}/value"
            if key in metrics:
                r.observe(metrics[key])
            elif f"reward_penalty/{key}" in metrics:
                r.observe(metrics[f"reward_penalty/{key}"])
        if "initial" in refs:  # a diagnostic for every run, whatever its regularizer: k3 estimate, no clamps
            kl0 = kl_penalty(rollout_lp, refs["initial"], "k3", log_ratio_clamp=None, value_clamp=None)
            metrics["kl_initial/k3"] = float(masked_mean(kl0, mask))
        metrics.update({"reward/mean": float(torch.tensor(data["scores"]).mean()),
                        "reward/accuracy": float(correct.mean()),
                        "response/length": float(mask.sum(-1).mean()),
                        "advantage/abs_mean": float(advantages.abs().mean())})
        self.version += 1
        return metrics

    def get_weights(self) -> dict:
        return cpu_state_dict(self.model)

    def save(self, path: str) -> str:
        from rlkit.utils.checkpoint import save_hf_checkpoint

        self.model.eval()
        out = save_hf_checkpoint(self.model, self.tokenizer, path)
        self.model.train()
        return str(out)

    def state(self) -> dict:
        return {"regularizers": {r.label: r.state_dict() for r in self.regs}, "version": self.version}


@ray.remote
class Learner(LearnerCore):
    def __init__(self, *args, torch_threads: int = 1, **kwargs):
        setup_process(torch_threads)
        super().__init__(*args, **kwargs)
        print(f"Learner pid={os.getpid()} regularizers={[r.label for r in self.regs]}", flush=True)

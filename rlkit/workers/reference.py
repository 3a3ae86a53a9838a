"""ReferenceWorker: serves reference log-probs (and full logits when a regularizer needs them).

The reference is the frozen initial policy, a soup of checkpoints (SALSA) or a teacher model. Any path may be a
peft LoRA adapter directory: it is loaded as its base model with the adapter merged in, so a soup of adapters is the
average of the merged models, ``W0 + mean_i(s_i B_i A_i)`` for adapters on one base (not the product of averaged
factors). :meth:`ReferenceWorker.refresh` moves the reference toward the policy (TR-DPO).
"""

from __future__ import annotations

import os

import torch

from rlkit.modeling import collate, completion_logits, token_logprobs

from .common import setup_process
from .local import remote_actor


def load_model(path: str, dtype: str = "float32"):
    """A model directory, hub id or ``tiny``; a LoRA adapter directory becomes its merged base model."""
    from rlkit.models.lora import load_merged_model

    return load_merged_model(path, dtype)


@remote_actor
class ReferenceWorker:
    def __init__(self, kind: str, paths: list[str], weights: list[float] | None = None, dtype: str = "float32",
                 temperature: float = 1.0, torch_threads: int = 1, name: str | None = None,
                 shared_prefix: bool = True):
        """``shared_prefix``: each distinct prompt of a batch runs once (:mod:`rlkit.prefix`)."""
        setup_process(torch_threads)
        if kind == "soup":  # checkpoints or LoRA adapter directories, averaged in float32
            from rlkit.references.soup import load_soup_model

            self.model, self.tokenizer = load_soup_model(paths, weights, dtype)
        else:
            self.model, self.tokenizer = load_model(paths[0], dtype)
        self.model.eval()
        self.temperature = temperature
        self.pad_id = self.tokenizer.pad_token_id
        self.name = name or kind
        from rlkit.prefix import SharedPrefix

        self.prefix = SharedPrefix(shared_prefix, f"ReferenceWorker[{self.name}]")
        print(f"ReferenceWorker[{self.name}] pid={os.getpid()} from {paths}", flush=True)

    def refresh(self, state_dict: dict, rate: float) -> int:
        """TR-DPO refresh, in place: ``theta_ref <- (1 - rate) theta_ref + rate theta_policy`` with the policy's
        ``state_dict`` (the learner's weights; with LoRA, the merged ones). See :mod:`rlkit.references.refresh`."""
        from rlkit.references.refresh import lerp_parameters_

        return lerp_parameters_(self.model, state_dict, rate)

    @torch.no_grad()
    def compute(self, prompts: list[list[int]], completions: list[list[int]], want_logits: bool = False) -> dict:
        batch = collate(prompts, completions, self.pad_id)
        logits = completion_logits(self.model, batch, self.temperature, self.prefix.group(self.model, batch))
        out = {"logprobs": token_logprobs(logits, batch["completion_ids"])}
        if want_logits:
            out["logits"] = logits.float()
        return out

"""ReferenceWorker: serves reference log-probs (and full logits when a regularizer needs them).

The reference is the frozen initial policy, a soup of checkpoints (SALSA) or a teacher model.
"""

from __future__ import annotations

import os

import ray
import torch

from rlkit.modeling import collate, completion_logits, token_logprobs

from .common import load_model, setup_process


@ray.remote
class ReferenceWorker:
    def __init__(self, kind: str, paths: list[str], weights: list[float] | None = None, dtype: str = "float32",
                 temperature: float = 1.0, torch_threads: int = 1):
        setup_process(torch_threads)
        self.model, self.tokenizer = load_model(paths[0], dtype)
        if kind == "soup":
            from rlkit.references import soup_state_dict

            dicts = [self.model.state_dict()] + [load_model(p, dtype)[0].state_dict() for p in paths[1:]]
            try:
                soup = soup_state_dict(dicts, weights)
            except ValueError as err:
                raise ValueError(f"soup reference from {paths}: {err}") from None
            self.model.load_state_dict({k: v.to(dicts[0][k].dtype) for k, v in soup.items()})
        self.model.eval()
        self.temperature = temperature
        self.pad_id = self.tokenizer.pad_token_id
        print(f"ReferenceWorker[{kind}] pid={os.getpid()} from {paths}", flush=True)

    @torch.no_grad()
    def compute(self, prompts: list[list[int]], completions: list[list[int]], want_logits: bool = False) -> dict:
        batch = collate(prompts, completions, self.pad_id)
        logits = completion_logits(self.model, batch, self.temperature)
        out = {"logprobs": token_logprobs(logits, batch["completion_ids"])}
        if want_logits:
            out["logits"] = logits.float()
        return out

"""The CPU-default rollout engine: a ``transformers`` model sampled with rlkit's lean KV-cache loop
(:mod:`rlkit.rollout.sampler`, ``sampler="native"``, the default) or with ``generate`` (``sampler="generate"``, and the
fallback for models the loop cannot drive), returning per-token sampling log-probs."""

from __future__ import annotations

import torch

from .base import Completion, SamplingParams
from .sampler import sample, supports_native_sampling

SAMPLERS = ("native", "generate")


class TransformersEngine:
    def __init__(self, model, tokenizer, batch_size: int = 256, sampler: str = "native"):
        """``model`` may be a module that is also being trained (in-process placement): ``generate`` puts it in eval
        mode for the call and restores its previous mode. ``batch_size``: at most this many sequences decode at
        once. ``sampler``: ``"native"`` (:func:`rlkit.rollout.sampler.sample`) or ``"generate"``."""
        if sampler not in SAMPLERS:
            raise ValueError(f"rollout.sampler {sampler!r}: choose one of {SAMPLERS}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        if sampler == "native" and (why := supports_native_sampling(model)) is not None:
            print(f"TransformersEngine: the native sampler cannot drive this model ({why}); using generate", flush=True)
            sampler = "generate"
        self.sampler = sampler

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        out: list[Completion] = []
        training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            if self.sampler == "native":  # whole groups per batch: a group shares its prompt's prefill
                per = max(1, self.batch_size // params.n)
                for s in range(0, len(prompt_ids), per):
                    out.extend(self._sample_batch(prompt_ids[s : s + per], params))
            else:
                expanded = [p for p in prompt_ids for _ in range(params.n)]
                for s in range(0, len(expanded), self.batch_size):
                    out.extend(self._generate_batch(expanded[s : s + self.batch_size], params))
        finally:
            self.model.train(training)
        return out

    def _sample_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        toks, lps, lengths = sample(
            self.model,
            prompts,
            params.n,
            params.max_new_tokens,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            greedy=params.greedy,
        )
        rows = [p for p in prompts for _ in range(params.n)]
        toks, lps, lengths = toks.tolist(), lps.tolist(), lengths.tolist()
        return [self._completion(p, toks[i][: lengths[i]], lps[i][: lengths[i]]) for i, p in enumerate(rows)]

    def _completion(self, prompt: list[int], toks: list[int], lps: list[float]) -> Completion:
        finished = bool(toks) and toks[-1] == self.eos_id
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        return Completion(list(prompt), toks, lps, text, finished)

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, P - len(p) :] = torch.as_tensor(p)
            attn[i, P - len(p) :] = 1
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
        if params.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        gen = self.model.generate(input_ids=ids, attention_mask=attn, **kwargs)
        new = gen.sequences[:, P:]
        # scores are the processed (temperature/top-k/top-p) logits the tokens were sampled from
        scores = torch.stack(gen.scores, dim=1).float() if gen.scores else torch.zeros(len(prompts), 0, 1)
        lps = torch.log_softmax(scores, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        completions = []
        for i, p in enumerate(prompts):
            toks = new[i].tolist()
            length = toks.index(self.eos_id) + 1 if self.eos_id in toks else len(toks)
            completions.append(self._completion(p, toks[:length], lps[i, :length].tolist()))
        return completions

    def update_weights(self, state_dict: dict) -> None:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
        if missing or unexpected:
            raise ValueError(f"weight sync mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")

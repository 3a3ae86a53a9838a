"""ReferenceWorker: serves reference log-probs, and for exact divergences either full logits or (``hidden=True``)
the final hidden states at the completion positions plus, once per weights version, its lm_head.

The reference is the frozen initial policy, a soup of checkpoints (SALSA), a teacher model, or any registered
reference type (``kind``, :meth:`rlkit.references.ReferenceType.load_model` builds it). Any path may be a
peft LoRA adapter directory: it is loaded as its base model with the adapter merged in, so a soup of adapters is the
average of the merged models, ``W0 + mean_i(s_i B_i A_i)`` for adapters on one base (not the product of averaged
factors). :meth:`ReferenceWorker.refresh` moves the reference toward the policy (TR-DPO).
"""

from __future__ import annotations

import os

import torch

from rlkit.models.forward import collate, completion_logits, token_logprobs

from .common import restarted_by_ray, setup_process
from .local import remote_actor


def load_model(path: str, dtype: str = "float32"):
    """A model directory, hub id or ``tiny``; a LoRA adapter directory becomes its merged base model."""
    from rlkit.models.lora import load_merged_model

    return load_merged_model(path, dtype)


@remote_actor
class ReferenceWorker:
    def __init__(
        self,
        kind: str,
        paths: list[str],
        weights: list[float] | None = None,
        dtype: str = "float32",
        temperature: float = 1.0,
        torch_threads: int = 1,
        name: str | None = None,
        shared_prefix: bool = True,
        load_options: dict | None = None,
        attn_implementation: str | None = None,
    ):
        """``kind``, ``paths``, ``weights``, ``load_options``: the :class:`rlkit.references.ReferenceSource` its
        registered type resolved (the type builds the model: one checkpoint, or for a soup the average of several).
        ``shared_prefix``: each distinct prompt of a batch runs once (:mod:`rlkit.models.prefix`)."""
        setup_process(torch_threads)
        from rlkit.models.loading import set_attention
        from rlkit.references import ReferenceSource, reference_type

        source = ReferenceSource(kind, list(paths), weights, dict(load_options or {}))
        self.model, self.tokenizer = reference_type(kind).load_model(source, dtype)
        set_attention(self.model, attn_implementation)  # a type may build the model in its own way (a soup)
        self.model.eval()
        self.temperature = temperature
        self.pad_id = self.tokenizer.pad_token_id
        self.name = name or kind
        from rlkit.models.prefix import SharedPrefix

        self.prefix = SharedPrefix(shared_prefix, f"ReferenceWorker[{self.name}]")
        self.head_version = 0  # bumped by every refresh: the learner caches the lm_head per version
        self._hidden_ok: bool | None = None  # hidden-state form usable (checked at the first call)
        self._announced = False  # the fallback from hidden states to logits was printed
        if restarted_by_ray():
            print(
                f"ReferenceWorker[{self.name}] was restarted by Ray (pid {os.getpid()}): its previous process "
                "died; it serves the weights it was started with (a refreshing reference has lost its refreshes "
                "so far)",
                flush=True,
            )
        print(f"ReferenceWorker[{self.name}] pid={os.getpid()} from {paths}", flush=True)

    def refresh(self, state_dict: dict, rate: float) -> int:
        """TR-DPO refresh, in place: ``theta_ref <- (1 - rate) theta_ref + rate theta_policy`` with the policy's
        ``state_dict`` (the learner's weights; with LoRA, the merged ones). See :mod:`rlkit.references.refresh`."""
        from rlkit.references.refresh import lerp_parameters_

        self.head_version += 1  # the lm_head (tied: the embedding) moved too
        return lerp_parameters_(self.model, state_dict, rate)

    def weights_file(self) -> bytes:
        """This reference's weights as they are now, refreshes included, as safetensors bytes: a training checkpoint
        stores them (``references/<key>.safetensors``) so that a resumed run continues from the refreshed reference."""
        from safetensors.torch import save

        from rlkit.references.refresh import refreshed_state

        return save(refreshed_state(self.model))

    def load_weights_file(self, blob: bytes) -> int:
        """Inverse of :meth:`weights_file` (on resume): the saved weights replace the loaded ones, exactly."""
        from safetensors.torch import load

        from rlkit.references.refresh import lerp_parameters_

        self.head_version += 1
        return lerp_parameters_(self.model, load(blob), 1.0)

    @torch.no_grad()
    def compute(
        self, prompts: list[list[int]], completions: list[list[int]], want_logits: bool = False, hidden: bool = False
    ) -> dict:
        """``{"logprobs": [B, T]}`` of the completion tokens at the sampling temperature, plus
        ``"logits"`` ``[B, T, V]`` (divided by the temperature) with ``want_logits``, or with ``hidden``
        ``"hidden"`` ``[B, T, H]`` (the final hidden states whose lm_head output is those logits, before the
        temperature) and ``"head_version"``: :meth:`head` gives the lm_head of that version. ``V / H`` times less
        to send than logits, and the learner's fused head never builds ``[B, T, V]``
        (:func:`rlkit.functional.linear_f_divergence` with ``ref_hidden``). A head that is not a plain linear layer
        gets logits instead."""
        batch = collate(prompts, completions, self.pad_id)
        group = self.prefix.group(self.model, batch)
        if not want_logits and self._head_is_linear(batch, announce=hidden):
            from rlkit.models.fused_head import completion_hidden, linear_token_logprobs

            parts = completion_hidden(self.model, batch, group)
            if parts is not None:
                h, weight, bias = parts
                out = {"logprobs": linear_token_logprobs(h, weight, batch["completion_ids"], bias, self.temperature)}
                if hidden:
                    out.update(hidden=h.float(), head_version=self.head_version)
                return out
        logits = completion_logits(self.model, batch, self.temperature, group)
        out = {"logprobs": token_logprobs(logits, batch["completion_ids"])}
        if want_logits or hidden:
            out["logits"] = logits.float()
        return out

    def _head_is_linear(self, batch: dict, announce: bool) -> bool:
        """Whether the model's logits are ``F.linear(hidden, lm_head)`` (checked once, on the first batch): then
        log-probs come from the hidden states chunk by chunk, never as ``[B, T, V]`` logits, and a learner that asks
        for hidden states gets them. Otherwise log-probs come from the logits, silently (nothing was asked for),
        and a request for hidden states (``announce``) gets logits, printed once."""
        if self._hidden_ok is None:
            from rlkit.models.fused_head import fused_head_agrees

            self._hidden_ok = fused_head_agrees(self.model, batch)
        if announce and not self._hidden_ok and not self._announced:
            self._announced = True
            print(
                f"ReferenceWorker[{self.name}]: its logits are not F.linear(hidden, lm_head); sending logits",
                flush=True,
            )
        return self._hidden_ok

    def head(self) -> dict:
        """The lm_head that :meth:`compute`'s ``"hidden"`` go through: ``{"weight": [V, H], "bias": [V] or None,
        "version": v, "temperature": t}`` (float32 copies; a refresh moves the reference, not these)."""
        from rlkit.models.fused_head import plain_lm_head

        head = plain_lm_head(self.model)
        if head is None:
            raise ValueError(f"ReferenceWorker[{self.name}]: the lm_head is not a plain linear layer")
        return {
            "weight": head.weight.detach().float().clone(),
            "bias": None if head.bias is None else head.bias.detach().float().clone(),
            "version": self.head_version,
            "temperature": self.temperature,
        }

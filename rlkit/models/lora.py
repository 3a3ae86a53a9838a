"""LoRA adapters through peft for the learner: wrapping, merged weights, adapter-only weights, checkpoints.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685) freezes every
weight ``W0 [out, in]`` of the targeted linear layers and trains a low-rank update::

    W = W0 + s * B A,     A [r, in],  B [out, r],  s = alpha / r,   B = 0 at initialisation

so the policy equals the base model at step 0, and only ``A`` and ``B`` get gradients and optimizer state.

What rlkit builds on that (see the README's LoRA section):

* **initial reference for free.** ``W0`` never changes, so the frozen initial policy is the same network with the
  adapters switched off (``PeftModel.disable_adapter()``): :func:`base_model_outputs`. The learner serves the
  ``initial`` reference itself; no reference actor and no second copy of the weights exist for it.
* **weight sync, transformers engine: merged weights.** :func:`merged_state_dict` returns ``W0 + s B A`` for every
  adapted layer (and the untouched tensors), named like the plain model's ``state_dict``, computed from peft's
  per-layer ``get_delta_weight`` without merging in place: the learner's model is never mutated.
* **weight sync, vLLM: adapter only.** :func:`adapter_state_dict` returns just the ``A``/``B`` tensors
  (``peft.get_peft_model_state_dict`` naming), i.e. ``r (in + out)`` numbers per layer instead of ``in * out``;
  an engine with LoRA support loads them as an adapter over its own copy of ``W0``.
* **checkpoints.** :func:`checkpoint_parts` gives a merged plain model (``merge_and_unload`` on a deep copy) to
  save as the checkpoint's weights, plus ``adapter/`` (peft ``save_pretrained``, safetensors) as extra files.
* **adapter directories anywhere a model path goes** (soup references): :func:`load_merged_model`.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from rlkit._extras import require

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"


def peft_config(lora: dict, base_path: str | None = None):
    """A ``peft.LoraConfig`` from rlkit's ``model.lora`` section (``r``, ``alpha``, ``dropout``,
    ``target_modules``); ``base_path`` is recorded in the adapter's config so the adapter can be reloaded alone."""
    peft = require("peft", why="model.lora")
    return peft.LoraConfig(
        r=int(lora["r"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_path,
        bias="none",
    )


def wrap_lora(model, lora: dict, base_path: str | None = None):
    """``model`` wrapped by ``peft.get_peft_model``: base weights frozen (``requires_grad=False``), fresh adapters
    (``A`` random, ``B`` zero). A ``target_modules`` entry that matches nothing is a ``ValueError`` naming the key."""
    peft = require("peft", why="model.lora")
    try:
        wrapped = peft.get_peft_model(model, peft_config(lora))
    except ValueError as err:
        raise ValueError(f"model.lora.target_modules {lora.get('target_modules')!r}: {err}") from None
    if base_path:  # set after wrapping: peft would replace it by the model's own name_or_path ("" for ``tiny``)
        wrapped.peft_config[wrapped.active_adapter].base_model_name_or_path = str(base_path)
    return wrapped


def load_lora_policy(model_path: str, lora: dict, dtype: str = "float32"):
    """``(peft model, tokenizer)`` for the learner.

    The frozen base comes from ``lora["base_path"]`` (the initial policy; default ``model_path``). When
    ``model_path`` is a checkpoint with an ``adapter/`` directory (a resumed run), the trained adapter is loaded
    from there (trainable) on top of that base; otherwise fresh adapters are created."""
    from rlkit.models.loading import load_model_and_tokenizer

    PeftModel = require("peft", why="model.lora").PeftModel
    base_path = str(lora.get("base_path") or model_path)
    model, tokenizer = load_model_and_tokenizer(base_path, dtype=dtype)
    adapter = Path(model_path) / ADAPTER_DIR
    if str(model_path) != base_path and (adapter / ADAPTER_CONFIG).is_file():
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        model = wrap_lora(model, lora, base_path)
    return model, tokenizer


def trainable_parameters(model) -> list:
    """The parameters the optimizer gets: those with ``requires_grad`` (with LoRA: the adapter factors only)."""
    return [p for p in model.parameters() if p.requires_grad]


def _lora_layers(model) -> dict:
    """``{module name in the base model: LoraLayer}`` for every adapted layer."""
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in model.get_base_model().named_modules() if isinstance(mod, LoraLayer)}


def merged_state_dict(model) -> dict:
    """The plain model's ``state_dict`` with every adapted weight replaced by ``W0 + s B A`` (CPU copies).

    Keys are those of the un-wrapped model (peft's ``.base_layer`` removed, ``lora_*`` tensors dropped), so the
    result loads into the base architecture with ``load_state_dict``. The delta of each layer is peft's own
    ``get_delta_weight`` for its active adapters (it applies the scaling and any ``fan_in_fan_out`` transpose);
    the sum is taken in the weight's dtype, the same operation as ``merge_and_unload``. Nothing is merged in place.
    DoRA adapters (a magnitude vector, not a pure additive delta) are refused."""
    import torch

    deltas = {}
    with torch.no_grad():
        for name, layer in _lora_layers(model).items():
            if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
                continue  # already inside the base weight, or switched off
            total = None
            for a in layer.active_adapters:
                if a not in getattr(layer, "lora_A", {}) and a not in getattr(layer, "lora_embedding_A", {}):
                    continue
                if getattr(layer, "use_dora", {}).get(a, False):
                    raise NotImplementedError(f"{name}: DoRA adapters cannot be synced as W0 + delta")
                d = layer.get_delta_weight(a)
                total = d if total is None else total + d
            if total is not None:
                deltas[name] = total
        out = {}
        for key, value in model.get_base_model().state_dict().items():
            parts = key.split(".")
            if any(p.startswith("lora_") for p in parts):
                continue
            if ".base_layer." in key:
                owner, leaf = key.split(".base_layer.", 1)
                clean = f"{owner}.{leaf}"
                if leaf == "weight" and owner in deltas:
                    value = value + deltas[owner].to(value.dtype)
            else:
                clean = key
            out[clean] = value.detach().to("cpu").clone()
    return out


def adapter_state_dict(model) -> dict:
    """Only the adapter tensors (``lora_A``/``lora_B`` of each layer), CPU copies, named as
    ``peft.get_peft_model_state_dict`` names them (``base_model.model.<module>.lora_A.weight``). This is what an
    engine that applies LoRA itself (vLLM) needs after each step; see the README's LoRA section."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(model).items()}


def base_model_outputs(model, batch: dict, temperature: float = 1.0, want_logits: bool = False, group=None) -> dict:
    """Reference outputs of the **adapter-disabled** model, ``pi_0``: ``{"logprobs": [B, T]}`` (+ ``"logits"``),
    in the same format as :class:`rlkit.workers.reference.ReferenceWorker`. No grad; evaluated in eval mode (no
    dropout), the training mode restored after. ``group``: shared-prompt forward (:mod:`rlkit.models.prefix`)."""
    import torch

    from rlkit.models.forward import completion_logits, token_logprobs

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            logits = completion_logits(model, batch, temperature, group)
    finally:
        model.train(was_training)
    out = {"logprobs": token_logprobs(logits, batch["completion_ids"])}
    if want_logits:
        out["logits"] = logits.float()
    return out


def checkpoint_parts(model) -> tuple[object, dict[str, bytes]]:
    """``(merged plain model, {"adapter/<file>": bytes})`` for a checkpoint: the merged model (``merge_and_unload``
    of a deep copy; the learner's model is untouched) is saved as the checkpoint's weights, loadable with
    ``AutoModelForCausalLM.from_pretrained``; the adapter (peft ``save_pretrained``, safetensors) goes to
    ``adapter/``. Costs one extra copy of the weights while saving."""
    merged = copy.deepcopy(model).merge_and_unload()
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for p in sorted(Path(tmp).rglob("*")):
            if p.is_file():
                files[f"{ADAPTER_DIR}/{p.relative_to(tmp)}"] = p.read_bytes()
    return merged, files


def is_adapter_dir(path: str | Path) -> bool:
    """A peft adapter directory (``adapter_config.json``, no full model)."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def load_merged_model(path: str, dtype: str = "float32"):
    """``(model, tokenizer)`` for a model path, where a peft adapter directory becomes its base model with the
    adapter merged in (the base is the adapter config's ``base_model_name_or_path``). Plain model paths load as
    usual. Used by reference workers, so soups and teachers may name LoRA adapters."""
    from rlkit.models.loading import load_model_and_tokenizer

    if not is_adapter_dir(path):
        return load_model_and_tokenizer(path, dtype=dtype)
    from peft import PeftModel

    base = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter {path!r}: its {ADAPTER_CONFIG} names no base_model_name_or_path")
    try:
        model, tokenizer = load_model_and_tokenizer(base, dtype=dtype)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"adapter {path!r}: its base model {base!r} cannot be loaded ({err})") from None
    try:
        merged = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (RuntimeError, ValueError) as err:  # e.g. size mismatch: the adapter was trained on another architecture
        raise ValueError(f"adapter {path!r} does not fit its base model {base!r}: {err}") from None
    return merged, tokenizer

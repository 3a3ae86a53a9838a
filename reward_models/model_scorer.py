"""``model_scorer``: a sequence-classification reward model as a reward.

torch and transformers are imported only when the model is first loaded or called, so importing this module (and
the :mod:`reward_models` package) stays cheap for workers that only use the rule-based rewards.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any

from .base import Reward
from .registry import register_reward

if TYPE_CHECKING:  # pragma: no cover
    import torch

NORMALIZE = ("none", "sigmoid")


@register_reward("model_scorer")
class ModelScorer(Reward):
    """Score ``prompt + completion`` with an ``AutoModelForSequenceClassification`` reward model.

    Model source: ``path`` (a local directory or id for ``from_pretrained``; model and tokenizer are loaded lazily on
    the first call with ``AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)`` and
    ``AutoTokenizer.from_pretrained(path)``), and/or already-built ``model``/``tokenizer`` objects (whichever is
    missing is loaded from ``path``). Loaded models go to ``device`` (default ``"cpu"``); a passed-in model stays on its
    own device unless ``device`` is given. The model is put in eval mode.

    Text of sample ``i``: ``prompts[i] + separator + completions[i]`` (``separator=""``), tokenized with the
    tokenizer's special tokens. With ``use_chat_template=True`` and a tokenizer that has a ``chat_template``, it is
    instead ``tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant",
    "content": completion}], tokenize=False)``, tokenized without adding special tokens again (without a template
    it falls back to concatenation, with a warning). Texts are padded per batch of ``batch_size``; ``max_length``
    (default ``None``: no truncation) truncates on the tokenizer's ``truncation_side``.

    Score: the pooled logit at column ``label_index`` under ``torch.no_grad()`` (``label_index=None`` means 0 and
    requires ``num_labels == 1``), passed through ``torch.sigmoid`` when ``normalize="sigmoid"`` (default ``"none"``:
    the raw logit). Reference answers are ignored. If the tokenizer has no pad token its EOS token is used, and a
    model config without ``pad_token_id`` gets the tokenizer's (needed to pool the last non-pad token).
    """

    def __init__(
        self,
        path: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
        batch_size: int = 8,
        device: str | None = None,
        label_index: int | None = None,
        normalize: str = "none",
        use_chat_template: bool = False,
        max_length: int | None = None,
        separator: str = "",
        dtype: str | None = None,
    ):
        if path is None and (model is None or tokenizer is None):
            raise ValueError("model_scorer needs `path`, or both `model` and `tokenizer`")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize {normalize!r} is not one of {', '.join(NORMALIZE)}")
        if label_index is not None and (isinstance(label_index, bool) or not isinstance(label_index, int)):
            raise ValueError(f"label_index must be an int or None, got {label_index!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be an int >= 1 or None, got {max_length!r}")
        self.path, self.model, self.tokenizer = path, model, tokenizer
        self.batch_size, self.device, self.label_index = batch_size, device, label_index
        self.normalize, self.use_chat_template = normalize, bool(use_chat_template)
        self.max_length, self.separator, self.dtype = max_length, separator, dtype
        self._ready = False
        self._lock = threading.Lock()
        self._column = 0

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded and prepared (first call done)."""
        return self._ready

    def load(self) -> None:
        """Load (if needed) and prepare model and tokenizer. Called automatically on the first call."""
        with self._lock:
            if self._ready:
                return
            if self.tokenizer is None:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            if self.model is None:
                from transformers import AutoModelForSequenceClassification

                kwargs: dict[str, Any] = {"dtype": self.dtype} if self.dtype is not None else {}
                assert self.path is not None  # __init__ requires a path when no model is given
                self.model = AutoModelForSequenceClassification.from_pretrained(self.path, **kwargs)
                self.model.to(self.device or "cpu")
            elif self.device is not None:
                self.model.to(self.device)
            self.model.eval()
            self._prepare_padding()
            self._column = self._resolve_label_index()
            self._ready = True

    def _prepare_padding(self) -> None:
        tok, config = self.tokenizer, self.model.config
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError("model_scorer: the tokenizer has neither a pad token nor an EOS token to pad with")
            tok.pad_token = tok.eos_token
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tok.pad_token_id

    def _resolve_label_index(self) -> int:
        num_labels = int(getattr(self.model.config, "num_labels", 1))
        if self.label_index is None:
            if num_labels != 1:
                raise ValueError(f"model_scorer: the model has num_labels={num_labels}; set label_index")
            return 0
        if not 0 <= self.label_index < num_labels:
            raise ValueError(f"model_scorer: label_index={self.label_index} out of range for num_labels={num_labels}")
        return self.label_index

    def texts(self, prompts: list[str], completions: list[str]) -> tuple[list[str], bool]:
        """The strings that get tokenized, and whether they came from the chat template."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self.use_chat_template and template:
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
                )
                for p, c in zip(prompts, completions)
            ], True
        if self.use_chat_template:
            warnings.warn("model_scorer: tokenizer has no chat_template; scoring prompt + completion", stacklevel=3)
        return [p + self.separator + c for p, c in zip(prompts, completions)], False

    def score_batch(
        self, prompts: list[str], completions: list[str], answers: list[str | None], **kwargs: Any
    ) -> list[float]:
        if not completions:
            return []
        self.load()
        import torch

        texts, templated = self.texts(prompts, completions)
        device = next(self.model.parameters()).device
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    add_special_tokens=not templated,
                    return_tensors="pt",
                )
                logits = self.model(
                    input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
                ).logits
                scores.extend(self._postprocess(logits).tolist())
        return scores

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        column = logits[:, self._column].float()
        return (torch.sigmoid(column) if self.normalize == "sigmoid" else column).cpu()

"""SFT warm start with TRL's ``SFTTrainer`` (prompt-completion data, loss on the completion only)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rlkit.config import Recipe


def run_sft(recipe: Recipe, path: Path, seed: int) -> str:
    import torch
    from trl import SFTConfig, SFTTrainer

    from rlkit.models.loading import load_model_and_tokenizer
    from rlkit.utils.checkpoint import save_hf_checkpoint

    torch.manual_seed(seed)
    model, tokenizer = load_model_and_tokenizer(recipe.model.name_or_path, dtype=recipe.model.dtype, seed=seed)
    dataset = _sft_dataset(recipe, seed)
    s = recipe.sft
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
            learning_rate=s.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, s.max_steps // 20),
            logging_steps=max(1, s.max_steps // 5), save_strategy="no", report_to=[], seed=seed,
            use_cpu=True, bf16=False, fp16=False, completion_only_loss=True, dataloader_num_workers=0,
            disable_tqdm=True, max_length=128, **no_checkpointing(SFTConfig),
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    return str(save_hf_checkpoint(trainer.model, tokenizer, path))


def no_checkpointing(config_cls) -> dict:
    """Turn off TRL's default activation (gradient) checkpointing, which only recomputes the forward of a model
    this small: ``activation_checkpointing=False`` where the installed transformers has it (5.2x; its old name,
    ``gradient_checkpointing``, prints a deprecation warning there), else ``gradient_checkpointing=False``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in names else {
        "gradient_checkpointing": False}


def require_sft_data(recipe: Recipe) -> None:
    """Your own ``data.source`` needs your own ``sft.data`` (the warm start trains on completions)."""
    d = recipe.data
    if d.source != "arithmetic" and not recipe.sft.data:
        from rlkit._config import ConfigError

        raise ConfigError("sft.data", f"data.source is {d.source!r}: give SFT data (a file with "
                                      f"'{d.prompt_column}' and '{recipe.sft.completion_column}' columns), or set "
                                      "sft.enabled=false and point model.name_or_path at an SFT checkpoint")


def _sft_dataset(recipe: Recipe, seed: int):
    d = recipe.data
    if d.source == "arithmetic":
        from rlkit.data.arithmetic import make_sft_dataset

        return make_sft_dataset(n=recipe.sft.num_examples, seed=seed, label_noise=recipe.sft.label_noise,
                                noise=recipe.sft.noise, split_seed=recipe.seed, **d.params)
    require_sft_data(recipe)
    from rlkit.data.loading import load_prompt_dataset

    try:
        ds = load_prompt_dataset(recipe.sft.data, prompt_column=d.prompt_column,
                                 answer_column=recipe.sft.completion_column)
    except (ValueError, FileNotFoundError, KeyError) as err:
        from rlkit._config import ConfigError

        raise ConfigError("sft.data", str(err.args[0] if err.args else err)) from None
    ds = ds.rename_column("answer", "completion").select_columns(["prompt", "completion"])
    if recipe.sft.num_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(recipe.sft.num_examples))
    return ds

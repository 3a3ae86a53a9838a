"""Fine-tune your own model on your own data with a recipe: SFT on (prompt, completion) pairs, then GRPO against a
verifiable reward, evaluated on a held-out file.

Everything a real job needs is a path in the recipe: a Hugging Face model directory (or hub id), jsonl/parquet files
with your column names. This script makes stand-ins for them (a small Llama-style model saved with
``save_pretrained`` and three jsonl files), writes the recipe it uses next to them, and runs it:

    python examples/finetune_local_model.py --out runs/finetune_example [recipe overrides, e.g. grpo.steps=50]

With a real model, the same recipe with ``model.name_or_path: Qwen/Qwen2.5-0.5B-Instruct`` (and your files) is the
whole change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """\
# written by examples/finetune_local_model.py
extends: {root}/recipes/quickstart.yaml
output_dir: {out}/run
model:
  name_or_path: {out}/base_model          # any transformers causal-LM directory or hub id
data:
  source: {out}/train.jsonl               # prompts + reference answers for the reward
  eval_source: {out}/heldout.jsonl
  prompt_column: question
  answer_column: solution
  params: {{}}
sft:
  data: {out}/sft.jsonl                   # prompt + completion pairs for the warm start
  completion_column: target
  max_steps: 400
rewards:
  - {{name: numeric_match, weight: 1.0}}
"""


def write_inputs(out: Path) -> Path:
    from rlkit.data.arithmetic import make_arithmetic_splits
    from rlkit.models.loading import load_model_and_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model_and_tokenizer("tiny", seed=0)
    model.save_pretrained(out / "base_model")
    tokenizer.save_pretrained(out / "base_model")
    train, held = make_arithmetic_splits(n_train=1500, n_eval=100, seed=0, ops=["+"], max_operand=49)

    def dump(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    dump(out / "train.jsonl", [{"question": r["prompt"], "solution": r["answer"]} for r in train])
    dump(out / "heldout.jsonl", [{"question": r["prompt"], "solution": r["answer"]} for r in held])
    dump(out / "sft.jsonl", [{"question": r["prompt"], "target": f"<answer>{r['answer']}</answer>"} for r in train])
    recipe = out / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=ROOT, out=out.resolve()))
    return recipe


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/finetune_example")
    p.add_argument("overrides", nargs="*", help="recipe overrides (key.path=value)")
    args = p.parse_args()
    recipe = write_inputs(Path(args.out))
    print(f"recipe: {recipe}\n{recipe.read_text()}")
    return subprocess.call([sys.executable, "-m", "rlkit", "train", str(recipe), *args.overrides], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())

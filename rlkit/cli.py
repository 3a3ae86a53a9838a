"""``rlkit`` command line: ``rlkit train RECIPE [key.path=value ...]``."""

from __future__ import annotations

import argparse
import os
import sys

from rlkit._config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlkit", description="RLHF/RLVR post-training with pluggable regularizers.")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe (SFT warm start + GRPO through Ray)",
                           description="Run a training recipe. Overrides use dotted keys: grpo.steps=10 "
                                       "regularizers=js output_dir=runs/js")
    train.add_argument("recipe", help="path to a recipe YAML file (see recipes/)")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides (values parsed as YAML)")
    check = sub.add_parser("check", help="validate a recipe (and its overrides) without running it")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*")
    sub.add_parser("regularizers", help="list the regularizer names and presets a recipe can use")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "regularizers":
            from rlkit.regularizers import PRESETS, available

            print("regularizers:", ", ".join(available()))
            print("presets:", ", ".join(f"{k}" for k in sorted(PRESETS)))
            return 0
        from rlkit.config import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "check":
            print(f"{args.recipe}: OK")
            return 0
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from rlkit.trainer.grpo import run_grpo

        run_grpo(recipe)
        return 0
    except ConfigError as err:
        print(f"rlkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

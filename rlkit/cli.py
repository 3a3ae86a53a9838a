"""``rlkit`` command line: ``rlkit train|check|ablate|eval|regularizers`` (``rlkit <command> -h`` for each)."""

from __future__ import annotations

import argparse
import os
import sys

from rlkit._config import ConfigError
from rlkit._extras import MissingExtraError


def _parser() -> argparse.ArgumentParser:
    from rlkit import __version__

    p = argparse.ArgumentParser(prog="rlkit", description="RLHF/RLVR post-training with pluggable regularizers.")
    p.add_argument("--version", action="version", version=f"rlkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="run a recipe (SFT warm start + GRPO, PPO or DPO)",
        description="Run a training recipe. Overrides use dotted keys: grpo.steps=10 "
        "regularizers=js output_dir=runs/js",
    )
    train.add_argument("recipe", help="path to a recipe YAML file (see recipes/)")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides (values parsed as YAML)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last complete checkpoint in <output_dir>/checkpoints (same as resume=true)",
    )
    train.add_argument(
        "--allow-recipe-change",
        action="store_true",
        help="with --resume: continue even if training-defining keys (batch shape, algorithm, "
        "regularizers, ...) changed since the checkpoint; the changes are printed",
    )
    check = sub.add_parser(
        "check",
        help="validate a recipe (and its overrides) without running it",
        description="Validate the schema, then what a run would read first, creating and "
        "downloading nothing: local model directories (config.json), the first "
        "rows of each data file, and that output_dir can be created.",
    )
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*")
    sub.add_parser("regularizers", help="list the regularizer names and presets a recipe can use")
    ab = sub.add_parser(
        "ablate",
        help="run a grid of recipe variants x seeds, then write a report",
        description="Run every combination of --sweep values (and the recipe's sweep: section) for "
        "each seed, as separate `rlkit train` runs sharing SFT warm starts; finished "
        "cells are skipped on re-runs. Writes OUT/report/{table.md,table.csv,*.png,"
        "index.html}. Example: rlkit ablate recipes/quickstart.yaml "
        "--sweep regularizers=kl_k3,forward_kl,js,lp_reg --seeds 2",
    )
    ab.add_argument("recipe")
    ab.add_argument("overrides", nargs="*", help="key.path=value overrides applied to every cell")
    ab.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a recipe key and its values (repeatable; 'regularizer' is an alias of 'regularizers')",
    )
    ab.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        metavar="N|S1,S2",
        help="N seeds (0..N-1) or an explicit list such as 0,3,7 (default: the recipe's sweep.seeds, else [0])",
    )
    ab.add_argument("--out", default=None, help="ablation directory (default runs/ablate_<recipe name>)")
    ab.add_argument("--parallel", type=int, default=None, help="cells run at once (default sweep.parallel or 1)")
    ab.add_argument("--report-only", action="store_true", help="only rebuild the report from finished cells")
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: pass@k, greedy/sampled accuracy, entropy, length, KL",
        description="Held-out evaluation of a checkpoint. The task and rewards come from --recipe, "
        "else from the recipe.yaml of the run the checkpoint belongs to. The "
        "workers run in this process (no Ray cluster) unless --ray or the recipe "
        "needs Ray.",
    )
    ev.add_argument("checkpoint", help="a model directory (e.g. runs/quickstart/final) or 'tiny'")
    ev.add_argument("overrides", nargs="*", help="key.path=value recipe overrides (e.g. eval.num_prompts=200)")
    ev.add_argument("--recipe", default=None)
    ev.add_argument("--task", default=None, help="data source: 'arithmetic' or a jsonl/parquet/dataset dir")
    ev.add_argument("--k", default=None, metavar="1,4,16", help="pass@k values (n samples = max k unless --n)")
    ev.add_argument("--n", type=int, default=None, help="samples per prompt")
    ev.add_argument("--num-prompts", type=int, default=None)
    ev.add_argument("--reference", default=None, help="model for KL to the initial policy ('none' to skip)")
    ev.add_argument("--out", default=None, help="write the results as JSON here")
    ev.add_argument(
        "--ray",
        action="store_true",
        help="run the rollout/reward/reference workers as Ray actors (default: in this process, unless "
        "ray.mode=actors, ray.address, rollout.engine=vllm or rollout.num_workers>1 asks for Ray)",
    )
    return p


def _seeds(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or a list like 0,1,2, got {text!r}") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError("--seeds N needs N >= 1")
        return list(range(values[0]))
    return values


def _eval_overrides(args) -> list[str]:
    over = list(args.overrides)
    if args.task:
        over.append(f"data.source={args.task}")
    if args.k:
        ks = [int(k) for k in args.k.split(",")]
        over += [f"eval.ks={ks}", f"eval.n_samples={args.n or max(ks)}"]
    elif args.n:
        over.append(f"eval.n_samples={args.n}")
    if args.num_prompts:
        over.append(f"eval.num_prompts={args.num_prompts}")
    return over


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after options: ... --seeds 2 grpo.steps=50
    bad = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "regularizers":
            from rlkit.regularizers import available, catalogue

            print("regularizers:", ", ".join(available()))
            _print_catalogue(catalogue())
            return 0
        if args.command == "ablate":
            from pathlib import Path

            from rlkit.ablate import run_ablation

            out = args.out or f"runs/ablate_{Path(args.recipe).stem}"
            failed = run_ablation(
                args.recipe, out, args.sweep, args.seeds, args.overrides, args.parallel, args.report_only
            )
            return 1 if failed else 0
        if args.command == "eval":
            from rlkit.trainer.eval_run import run_eval_checkpoint

            run_eval_checkpoint(
                args.checkpoint, args.recipe, _eval_overrides(args), args.reference, args.out, use_ray=args.ray
            )
            return 0
        from rlkit.config import load_recipe

        flags = (["resume=true"] if getattr(args, "resume", False) else []) + (
            ["allow_recipe_change=true"] if getattr(args, "allow_recipe_change", False) else []
        )
        recipe = load_recipe(args.recipe, args.overrides + flags)
        if args.command == "check":
            from rlkit.trainer.setup import check_recipe_sources

            check_recipe_sources(recipe)
            print(f"{args.recipe}: OK")
            return 0
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from rlkit.trainer import run_recipe

        run_recipe(recipe)
        return 0
    except (ConfigError, MissingExtraError) as err:
        print(f"rlkit: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from rlkit.trainer.faults import TrainingError

        if not isinstance(err, TrainingError):
            raise
        print(f"rlkit: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _print_catalogue(rows: list[dict]) -> None:
    """Presets with the value each estimates and the gradient each delivers (plain text, pipe-friendly)."""
    cols = [
        ("preset", "preset"),
        ("label", "metric label"),
        ("placement", "placement"),
        ("value", "value (what <label>/value estimates)"),
        ("gradient", "gradient it delivers"),
    ]
    width = {k: max(len(title), *(len(r[k]) for r in rows)) for k, title in cols}
    print("presets:")
    print(("  " + "  ".join(title.ljust(width[k]) for k, title in cols)).rstrip())
    for r in rows:
        print(("  " + "  ".join(r[k].ljust(width[k]) for k, _ in cols)).rstrip())

"""The offline DPO / f-DPO trainer: preference data, synthetic pairs, reference modes, the loss of one step checked
against an independent computation, and every ``recipes/dpo_*.yaml`` end to end through the CLI."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.config import load_recipe
from rlkit.data.preference import load_preference_dataset, make_synthetic_pairs

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"prompt": "1+2=", "chosen": "<answer>3</answer>", "rejected": "<answer>4</answer>"},
    {"prompt": "17+25=", "chosen": "<answer>42</answer>", "rejected": "<answer>32</answer>"},
    {"prompt": "9+9=", "chosen": "<answer>18</answer>", "rejected": "<answer>8</answer>"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_jsonl_and_parquet_with_renamed_columns(tmp_path):
    js = write_jsonl(tmp_path / "p.jsonl", ROWS)
    ds = load_preference_dataset(js)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and list(ds) == ROWS
    import pandas as pd

    renamed = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "extra": 1} for r in ROWS]
    pq = tmp_path / "p.parquet"
    pd.DataFrame(renamed).to_parquet(pq)
    ds = load_preference_dataset(pq, prompt_column="question", chosen_column="good", rejected_column="bad")
    assert list(ds) == ROWS


def test_conversational_values(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "1+2="}],
            "chosen": [{"role": "assistant", "content": "3"}],
            "rejected": [{"role": "assistant", "content": "4"}],
        }
    ]
    ds = load_preference_dataset(write_jsonl(tmp_path / "c.jsonl", rows))
    assert ds[0]["prompt"] == [{"role": "user", "content": "1+2="}] and ds[0]["chosen"] == "3"


def test_missing_column_and_file_are_named(tmp_path):
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "1+1=", "chosen": "2", "loser": "3"}])
    with pytest.raises(ValueError, match="missing rejected column 'rejected'.*dpo.rejected_column"):
        load_preference_dataset(bad)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_preference_dataset(tmp_path / "nope.jsonl")
    recipe = load_recipe(ROOT / "recipes/dpo.yaml", [f"dpo.data={bad}", "dpo.rejected_column=worse"])
    from rlkit.trainer.dpo import load_pairs

    with pytest.raises(ConfigError, match=r"dpo.data: .*missing rejected column 'worse'"):
        load_pairs(recipe)


def test_synthetic_pairs_deterministic_chosen_correct_rejected_wrong():
    a_train, a_held = make_synthetic_pairs(
        300, seed=3, rejected="dropped_carry", split_seed=1, max_operand=49, ops=["+"]
    )
    b_train, b_held = make_synthetic_pairs(
        300, seed=3, rejected="dropped_carry", split_seed=1, max_operand=49, ops=["+"]
    )
    assert list(a_train) == list(b_train) and list(a_held) == list(b_held)
    c_train, _ = make_synthetic_pairs(300, seed=4, rejected="dropped_carry", split_seed=1, max_operand=49, ops=["+"])
    assert list(c_train) != list(a_train)
    carries = 0
    for r in [*a_train, *a_held]:
        a, b = (int(x) for x in r["prompt"].rstrip("=").split("+"))
        assert r["chosen"] == f"<answer>{a + b}</answer>"  # independent of the task's own answer column
        wrong = int(r["rejected"].removeprefix("<answer>").removesuffix("</answer>"))
        assert wrong != a + b
        no_carry = (a // 10 + b // 10) % 10 * 10 + (a % 10 + b % 10) % 10  # digit-wise sum, operands < 50
        if no_carry != a + b:  # a carry: rejected is exactly the carry-forgetting answer
            carries += 1
            assert wrong == no_carry
        else:  # no carry to drop: a neighbouring wrong number
            assert wrong - (a + b) in (-10, -2, -1, 1, 2, 10)
    assert carries > 50
    assert not {r["prompt"] for r in a_train} & {r["prompt"] for r in a_held}  # held-out prompts never trained


def _tiny_recipe(tmp_path, *over):
    return load_recipe(
        ROOT / "recipes/dpo.yaml",
        [
            f"output_dir={tmp_path}",
            "sft.enabled=false",
            "model.name_or_path=tiny",
            "dpo.num_pairs=12",
            "dpo.eval_pairs=6",
            "dpo.batch_size=12",
            "dpo.steps=1",
            "dpo.task_eval=false",
            "logging.tensorboard=false",
            "logging.plot=false",
            "checkpoint.save_final=false",
            *over,
        ],
    )


def _run(recipe):
    from rich.console import Console

    from rlkit.trainer.dpo import run_dpo

    summary = run_dpo(recipe, Console(file=io.StringIO()))
    rows = [json.loads(line) for line in (Path(recipe.output_dir) / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_precomputed_and_live_reference_give_the_same_first_step(tmp_path):
    _, pre = _run(_tiny_recipe(tmp_path / "pre", "dpo.reference=precomputed", "dpo.steps=2", "dpo.batch_size=5"))
    _, live = _run(_tiny_recipe(tmp_path / "live", "dpo.reference=live", "dpo.steps=2", "dpo.batch_size=5"))
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margin"):
        assert pre[0][key] == pytest.approx(live[0][key], abs=1e-6), key
    assert pre[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    # the second step already sees the updated policy against the same frozen reference
    assert pre[1]["loss"] == pytest.approx(live[1]["loss"], abs=1e-5)


def _hand_logp(model, tok, prompt, response):
    """Sum of log-probs of response + EOS given prompt, one unpadded sequence at a time."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logp[len(p) + t - 1, tok_id]) for t, tok_id in enumerate(r))


@pytest.mark.parametrize("divergence", ["reverse_kl", "js"])
def test_first_step_loss_matches_a_hand_computed_dpo_loss(tmp_path, divergence):
    from rlkit.models.tiny import build_tiny_model, build_tiny_tokenizer
    from rlkit.trainer.dpo import load_pairs
    from rlkit.utils.checkpoint import save_hf_checkpoint

    ref_dir = save_hf_checkpoint(build_tiny_model(seed=7), build_tiny_tokenizer(), tmp_path / "ref")
    beta = 0.5
    recipe = _tiny_recipe(
        tmp_path / "run",
        f"dpo.reference_model={ref_dir}",
        f"dpo.beta={beta}",
        f"dpo.divergence={divergence}",
        "dpo.learning_rate=1e-2",
    )
    summary, rows = _run(recipe)
    policy, ref = build_tiny_model(seed=recipe.seed).eval(), build_tiny_model(seed=7).eval()
    tok = build_tiny_tokenizer()
    train, _ = load_pairs(recipe)
    losses = []
    for r in train:
        lw = _hand_logp(policy, tok, r["prompt"], r["chosen"]) - _hand_logp(ref, tok, r["prompt"], r["chosen"])
        ll = _hand_logp(policy, tok, r["prompt"], r["rejected"]) - _hand_logp(ref, tok, r["prompt"], r["rejected"])
        if divergence == "reverse_kl":  # DPO: -log sigmoid(beta (log u_w - log u_l))
            h = lw - ll
        else:  # f-DPO with JS: f'(u) = log(2u / (1 + u))
            uw, ul = math.exp(lw), math.exp(ll)
            h = math.log(2 * uw / (1 + uw)) - math.log(2 * ul / (1 + ul))
        losses.append(math.log1p(math.exp(-beta * h)))
    assert rows[0]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5, abs=1e-6)
    assert abs(rows[0]["loss"] - math.log(2)) > 1e-3  # the reference really differs from the policy
    # the step moved the policy: the held-out DPO loss after it differs from before
    assert summary["eval_after"]["pref/loss"] != pytest.approx(summary["eval_before"]["pref/loss"], abs=1e-6)


def test_dpo_recipe_refuses_regularizers():
    with pytest.raises(ConfigError, match="regularizers: DPO takes no regularizers"):
        load_recipe(ROOT / "recipes/dpo.yaml", ["regularizers=kl_k3"])
    r = load_recipe(ROOT / "recipes/dpo.yaml", ["dpo.label_smoothing=0.1", "dpo.loss_type=sigmoid"])
    assert r.dpo.label_smoothing == 0.1
    assert load_recipe(ROOT / "recipes/dpo.yaml", ["dpo.loss_type=ipo"]).dpo.loss_type == "ipo"
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_recipe(ROOT / "recipes/dpo.yaml", ["dpo.loss_type=ipo", "dpo.label_smoothing=0.1"])


def rlkit(*args, home, timeout=600):
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


SMALL = [
    "sft.max_steps=20",
    "sft.num_examples=200",
    "dpo.steps=3",
    "dpo.num_pairs=64",
    "dpo.batch_size=8",
    "dpo.eval_pairs=16",
    "eval.num_prompts=8",
    "eval.n_samples=4",
    "eval.ks=[1,4]",
    "logging.print_every=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dpo_reverse_kl", "dpo_forward_kl", "dpo_js", "dpo_alpha"])
def test_dpo_recipes_run_through_the_cli(recipe, tmp_path):
    extra = {"dpo_forward_kl": ["dpo.reference=live"], "dpo_alpha": ["dpo.label_smoothing=0.1"]}.get(recipe, [])
    proc = rlkit("train", f"recipes/{recipe}.yaml", f"output_dir={tmp_path}", *SMALL, *extra, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "rewards/accuracy", "rewards/margin", "rewards/ece", "logps/chosen", "logps/rejected"} <= set(
        rows[0]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["divergence"] == recipe.removeprefix("dpo_") and summary["steps"] == 3
    for key in ("eval_before", "eval_after"):
        ev = summary[key]
        assert {"pref/accuracy", "pref/logp_accuracy", "pass@1", "greedy_accuracy"} <= set(ev)
        assert 0 <= ev["pass@1"] <= ev["pass@4"] <= 1
    assert (tmp_path / "final" / "model.safetensors").exists() and (tmp_path / "final" / "COMPLETE").exists()


def test_bad_column_is_exit_2_naming_it(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    proc = rlkit(
        "train",
        "recipes/dpo.yaml",
        f"output_dir={tmp_path}",
        f"dpo.data={data}",
        "dpo.chosen_column=preferred",
        "sft.enabled=false",
        home=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'preferred'" in proc.stderr and "dpo.data" in proc.stderr and "Traceback" not in proc.stderr

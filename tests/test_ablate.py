"""``rlkit ablate`` and ``rlkit eval``: grid parsing, planning, the report's numbers, and a real 2-cell sweep."""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit._config import ConfigError
from rlkit.ablate import expand, parse_sweep_arg, plan
from rlkit.ablate.grid import Cell, split_values, value_label
from rlkit.ablate.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def test_parse_sweep_arg_alias_yaml_values_and_nested_commas():
    assert parse_sweep_arg("regularizer=kl_k3,js,none") == ("regularizers", ["kl_k3", "js", "none"])
    assert parse_sweep_arg("grpo.learning_rate=1e-3,5e-4") == ("grpo.learning_rate", [1e-3, 5e-4])
    key, vals = parse_sweep_arg("regularizers=[{name: kl, coef: 0.1}],{name: js, mode: exact}")
    assert vals == [[{"name": "kl", "coef": 0.1}], {"name": "js", "mode": "exact"}]
    assert split_values("a, [1, 2] ,{k: [3, 4]}") == ["a", "[1, 2]", "{k: [3, 4]}"]
    with pytest.raises(ConfigError, match="key=value"):
        parse_sweep_arg("regularizers")


def test_expand_is_product_times_seeds_seed_major():
    cells = expand({"regularizer": ["a", "b"], "grpo.steps": [1, 2]}, [0, 1])
    assert len(cells) == 8
    assert [c.group for c in cells[:4]] == [
        "regularizers=a,grpo.steps=1",
        "regularizers=a,grpo.steps=2",
        "regularizers=b,grpo.steps=1",
        "regularizers=b,grpo.steps=2",
    ]
    assert [c.seed for c in cells] == [0] * 4 + [1] * 4
    assert len({c.name for c in cells}) == 8
    assert cells[0].overrides() == ["regularizers=a", "grpo.steps=1", "seed=0"]
    assert expand({}, [3])[0].group == "base"
    with pytest.raises(ConfigError, match="same label"):
        expand({"regularizers": ["a", "a"]}, [0])
    with pytest.raises(ConfigError, match="seeds"):
        expand({"seed": [0, 1]}, [0])


def test_arms_go_together_and_cross_the_grid():
    arms = {"rkl": {"regularizers": "kl_k3"}, "dph": {"regularizer": "forward_kl_rehearsal", "rehearsal": {"k": 4}}}
    cells = expand({"grpo.steps": [1, 2]}, [0], arms)
    assert [c.group for c in cells] == [
        "arm=rkl,grpo.steps=1",
        "arm=rkl,grpo.steps=2",
        "arm=dph,grpo.steps=1",
        "arm=dph,grpo.steps=2",
    ]
    assert cells[2].values == {"regularizers": "forward_kl_rehearsal", "rehearsal": {"k": 4}, "grpo.steps": 1}
    assert cells[2].overrides() == ["regularizers=forward_kl_rehearsal", "rehearsal={k: 4}", "grpo.steps=1", "seed=0"]
    assert [c.group for c in expand({}, [0], {"a": {"x": 1}})] == ["arm=a"]
    with pytest.raises(ConfigError, match="also a grid key"):
        expand({"regularizers": ["js"]}, [0], {"a": {"regularizers": "kl_k3"}})


def test_value_labels_tell_dicts_apart():
    a, b = {"name": "kl", "coef": 0.1}, {"name": "kl", "coef": 0.2}
    assert value_label(a).startswith("kl-") and value_label(a) != value_label(b)
    assert value_label([{"name": "kl", "label": "mine"}]).startswith("mine-")
    cell = Cell("regularizers=" + value_label(a), 0, {"regularizers": a})
    assert cell.overrides()[0] == "regularizers={coef: 0.1, name: kl}"


def test_plan_merges_recipe_section_and_validates_every_cell(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"extends: {ROOT / 'recipes' / 'quickstart.yaml'}\n"
        "sweep: {grid: {regularizers: [kl_k3, js]}, seeds: [0, 1]}\n"
    )
    sweep, cells, resolved = plan(str(recipe), ["grpo.steps=3,4"], None, [])
    assert sweep.grid == {"regularizers": ["kl_k3", "js"], "grpo.steps": [3, 4]} and len(cells) == 8
    assert {r["grpo"]["steps"] for r in resolved.values()} == {3, 4}
    assert {r["seed"] for r in resolved.values()} == {0, 1}
    _, cells, _ = plan(str(recipe), [], [5], [])
    assert {c.seed for c in cells} == {5}
    with pytest.raises(ConfigError, match=r"cell regularizers=nope seed 0: regularizers"):
        plan(str(recipe), ["regularizers=kl_k3,nope"], None, [])
    with pytest.raises(ConfigError, match=r"cell .*grpo.steps"):
        plan(str(recipe), ["grpo.steps=2,-1"], None, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {ROOT / 'recipes' / 'quickstart.yaml'}\nsweep: {{grid: {{}}, seedz: [1]}}\n")
    with pytest.raises(ConfigError, match="sweep.seedz"):
        plan(str(bad), [], None, [])


def _fake_cell(out: Path, cell: Cell, rewards: list[float], after: dict, before: dict, t: float):
    d = out / "cells" / cell.name
    d.mkdir(parents=True)
    rows = [
        {"step": i + 1, "reward/mean": r, "kl_initial/k3": 0.01 * i, "policy/entropy": 0.5}
        for i, r in enumerate(rewards)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"eval_before": before, "eval_after": after, "train_time_s": t}))


def test_report_numbers_are_mean_and_sample_std_over_seeds(tmp_path):
    cells = expand({"regularizers": ["a", "b"]}, [0, 1])
    p1 = {"regularizers=a": [0.4, 0.6], "regularizers=b": [0.2, 0.3]}
    before = {0: {"pass@1": 0.1, "pass@4": 0.3}, 1: {"pass@1": 0.3, "pass@4": 0.5}}
    for c in cells:
        v = p1[c.group][c.seed]
        after = {
            "pass@1": v,
            "pass@4": v + 0.2,
            "pass@k": v + 0.2,
            "greedy_accuracy": v,
            "kl_to_initial": v / 10,
            "entropy": 0.3,
            "response_length": 10.0,
        }
        # 20 steps: the final reward is the mean of the last 2 (10%)
        _fake_cell(tmp_path, c, [0.0] * 18 + [v, v + 0.1], after, before[c.seed], 12.0 + c.seed)
    rep = write_report(tmp_path, cells)
    rows = {r["group"]: r for r in csv.DictReader((rep / "table.csv").open())}
    a = rows["regularizers=a"]
    assert float(a["pass@1_mean"]) == pytest.approx(0.5)
    assert float(a["pass@1_std"]) == pytest.approx(statistics.stdev([0.4, 0.6]))
    assert float(a["pass@4_mean"]) == pytest.approx(0.7)
    assert float(a["final_reward_mean"]) == pytest.approx(statistics.fmean([0.45, 0.65]))
    assert float(a["train_time_s_mean"]) == pytest.approx(12.5)
    init = rows["initial (before GRPO)"]
    assert float(init["pass@1_mean"]) == pytest.approx(0.2) and init["seeds"] == "2"
    md = (rep / "table.md").read_text()
    assert "| regularizers=b | 2 | 0.300 ± 0.071 |" in md  # final reward of b: mean/std of 0.25 and 0.35
    html = (rep / "index.html").read_text()
    assert "<table>" in html and "regularizers=a" in html and "curves.png" in html
    for png in ("curves.png", "pass_at_k.png", "kl_frontier.png"):
        assert (rep / png).stat().st_size > 5000
    assert len(list(csv.DictReader((rep / "cells.csv").open()))) == 4
    # paired by seed, b - a: pass@1 diffs -0.2, -0.3 -> mean -0.25, SE stdev/sqrt(2) = 0.05; 5 SE is inside the 95%
    # t-interval with 1 degree of freedom (12.7 SE): not resolved, no star
    paired = (rep / "paired.md").read_text()
    assert "from `regularizers=a`" in paired
    assert "| regularizers=b | 2 | -0.250 ± 0.050 | -0.250 ± 0.050 |" in paired
    assert "paired differences" in html.lower()


def test_paired_differences_star_only_what_the_t_interval_resolves():
    from rlkit.ablate.report import paired_table, t975

    assert t975(2) == pytest.approx(4.303) and t975(100) == 1.96
    base = [{"seed": s, "pass@1": 0.5} for s in range(3)]
    # diffs +0.10, +0.11, +0.12: mean 0.11, SE 0.0058 -> 19 SE, resolved; diffs +0.1, -0.05, +0.1: 1.0 SE, not
    groups = {
        "a": base,
        "b": [{"seed": s, "pass@1": 0.5 + d} for s, d in enumerate([0.10, 0.11, 0.12])],
        "c": [{"seed": s, "pass@1": 0.5 + d} for s, d in enumerate([0.1, -0.05, 0.1])],
    }
    table = paired_table(groups, ["pass@1"])
    assert "| b | 3 | +0.110 ± 0.006* |" in table and "| c | 3 | +0.050 ± 0.050 |" in table


def test_report_lists_missing_cells(tmp_path):
    cells = expand({"regularizers": ["a", "b"]}, [0])
    _fake_cell(tmp_path, cells[0], [0.5], {"pass@1": 0.5}, {"pass@1": 0.1}, 1.0)
    rep = write_report(tmp_path, cells)
    assert cells[1].name in (rep / "index.html").read_text()
    assert "regularizers=b" not in (rep / "table.md").read_text()


SMALL = [
    "sft.max_steps=40",
    "sft.num_examples=400",
    "grpo.steps=3",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "eval.num_prompts=6",
    "eval.n_samples=4",
    "eval.ks=[1,2,4]",
    "logging.print_every=1",
    "logging.plot=false",
    "logging.tensorboard=false",
]


def _rlkit(*args, home, timeout=900):
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_two_cell_sweep_end_to_end_resumes_and_evals(tmp_path):
    out = tmp_path / "abl"
    sweep = ["--sweep", "regularizer=kl_k3,lp_reg", "--seeds", "1", "--out", str(out)]
    # the example script: recipes/ablate_divergences.yaml's grid and seeds, replaced from the command line
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "examples/ablation.sh", *sweep, *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    args = ["ablate", "recipes/ablate_divergences.yaml", *SMALL, *sweep]
    rep = out / "report"
    for f in ("table.md", "table.csv", "cells.csv", "curves.png", "pass_at_k.png", "kl_frontier.png", "index.html"):
        assert (rep / f).is_file(), f
    assert "replaces the recipe's arms" in proc.stdout  # the recipe's arms set regularizers too
    rows = {r["group"]: r for r in csv.DictReader((rep / "table.csv").open())}
    assert set(rows) == {"initial (before GRPO)", "regularizers=kl_k3", "regularizers=lp_reg"}
    for r in rows.values():
        assert 0 <= float(r["pass@1_mean"]) <= float(r["pass@4_mean"]) <= 1
    assert float(rows["regularizers=lp_reg"]["kl_to_initial_mean"]) > -0.05  # measured even without a KL term
    cells = sorted((out / "cells").iterdir())
    assert len(cells) == 2
    logs = [(c / "train.log").read_text() for c in cells]
    assert sum("SFT run 0: reusing" in log for log in logs) == 1  # one warm start shared by both cells
    for c in cells:
        metrics = [json.loads(x) for x in (c / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3] and "kl_initial/k3" in metrics[0]

    again = _rlkit(*args, home=tmp_path)  # resumable: finished cells are skipped
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 2, again.stdout[-2000:]
    changed = _rlkit(
        "ablate",
        "recipes/ablate_divergences.yaml",
        *SMALL,
        "grpo.steps=2",
        "--sweep",
        "regularizer=kl_k3",
        "--seeds",
        "1",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert changed.returncode == 0 and "finished earlier" not in changed.stdout, changed.stdout[-2000:]

    ck = out / "cells" / "regularizers=kl_k3__seed0" / "final"
    res = tmp_path / "eval.json"
    ev = _rlkit("eval", str(ck), "--k", "1,2", "--num-prompts", "5", "--out", str(res), home=tmp_path)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    result = json.loads(res.read_text())
    assert result["num_prompts"] == 5 and result["n_samples"] == 2
    assert {"pass@1", "pass@2", "greedy_accuracy", "entropy", "response_length", "kl_to_initial"} <= set(result)
    assert result["recipe"].endswith("recipe.yaml")  # the run's own recipe: same task split as training

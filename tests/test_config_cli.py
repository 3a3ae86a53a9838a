"""Recipes: overrides, extends, validation errors with key paths; the CLI exits cleanly on bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlkit._config import ConfigError
from rlkit.config import apply_overrides, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    prefix = path.name.split("_")[0].removesuffix(".yaml")
    expected = prefix if prefix in ("ppo", "dpo") else "grpo"  # quickstart, ablate_* and grpo_* are GRPO
    assert recipe.algorithm == expected, f"{path.name}: algorithm {recipe.algorithm}"


def test_extends_and_overrides():
    r = load_recipe(
        RECIPES / "grpo_js.yaml",
        ["grpo.steps=3", "rollout.temperature=0.7", "eval.ks=[1, 2]", "eval.n_samples=2", "rewards.0.weight=0.5"],
    )
    assert r.grpo.steps == 3 and r.rollout.temperature == 0.7 and r.eval.ks == [1, 2]
    assert r.grpo.group_size == 8  # inherited from quickstart.yaml
    assert r.regularizers[0]["name"] == "js" and r.rewards[0].weight == 0.5
    r2 = load_recipe(RECIPES / "quickstart.yaml", ["regularizers=[kl_k3, {name: js, coef: 0.2}]"])
    assert r2.regularizers[1] == {"name": "js", "coef": 0.2}


def test_a_section_of_another_algorithm_is_refused_not_ignored(tmp_path):
    """Only the running algorithm's section is read; setting another's is an error naming its keys. A recipe that
    extends one of another algorithm leaves that one's section behind (it belongs to the base's job)."""
    ppo = load_recipe(RECIPES / "ppo_kl_adaptive.yaml")  # extends the GRPO quickstart (grpo.steps: 200)
    assert "grpo" not in ppo.model_fields_set and ppo.grpo.steps == type(ppo.grpo)().steps
    assert ppo.ppo.steps == 100 and ppo.sft.max_steps == 1500  # its own section, and the shared ones inherited
    with pytest.raises(ConfigError, match=r"^grpo: sets grpo.steps, but algorithm 'ppo' reads .* `ppo:` only"):
        load_recipe(RECIPES / "ppo_kl_adaptive.yaml", ["grpo.steps=5"])
    with pytest.raises(ConfigError, match=r"^dpo: sets dpo.beta, but algorithm 'grpo'"):
        load_recipe(RECIPES / "quickstart.yaml", ["dpo.beta=0.5"])
    child = tmp_path / "child.yaml"  # the child file itself sets the other section: refused too
    child.write_text(f"extends: {RECIPES / 'dpo.yaml'}\ngrpo:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"^grpo: sets grpo.steps, but algorithm 'dpo'"):
        load_recipe(child)
    assert load_recipe(RECIPES / "quickstart.yaml", ["algorithm=ppo", "grpo={}"]).algorithm == "ppo"
    from rlkit.config import build_recipe

    for name in ("quickstart.yaml", "ppo_kl_adaptive.yaml", "dpo.yaml"):  # a run's recipe.yaml records every
        dumped = load_recipe(RECIPES / name).model_dump(mode="json")  # section; rlkit eval reads it back
        assert build_recipe(dumped).algorithm == dumped["algorithm"]


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["grpo.steps"])
    with pytest.raises(ConfigError, match="rewards.5: not a valid index"):
        apply_overrides({"rewards": [{"name": "x"}]}, ["rewards.5.weight=1"])
    with pytest.raises(ConfigError, match="output_dir: is a str"):
        apply_overrides({"output_dir": "a"}, ["output_dir.x=1"])


BAD = [
    (["bogus=1"], "bogus: unknown key"),
    (["grpo.stepz=1"], "grpo.stepz: unknown key"),
    (["grpo.steps=abc"], "grpo.steps: Input should be a valid integer"),
    (["grpo.group_size=1"], "grpo.group_size:"),
    (["regularizers=nope"], "regularizers[0]: unknown regularizer 'nope'"),
    (["regularizers=[{name: kl, estimator: k9}]"], "regularizers[0].estimator:"),
    (["rewards=[{name: nope}]"], "rewards[0].name: unknown reward 'nope'"),
    (["rewards=[{name: numeric_match, params: {tol: 1}}]"], "rewards[0].params.tol: unknown parameter"),
    (["eval.ks=[1, 99]"], "eval: every k in 'ks'"),
    (["rollout.engine=sglang"], "rollout.engine:"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m for _, m in BAD])
def test_bad_recipes_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(RECIPES / "quickstart.yaml", overrides)
    assert message in str(err.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_recipe(loop)


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["train", "recipes/quickstart.yaml", "regularizers=[{name: kl, weighting: dads, placement: reward}]"],
            "regularizers[0].weighting: 'dads' weights depend on advantages",
        ),
        (["train", "recipes/quickstart.yaml", "grpo.steps=-1"], "grpo.steps:"),
        (["train", "recipes/nope.yaml"], "recipe file not found"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args, needle):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_check_and_list():
    root = Path(__file__).resolve().parents[1]
    ok = subprocess.run(
        [sys.executable, "-m", "rlkit", "check", "recipes/grpo_soup.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    lst = subprocess.run(
        [sys.executable, "-m", "rlkit", "regularizers"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert "lp_reg" in lst.stdout and "kl_k3" in lst.stdout

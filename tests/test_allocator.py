"""rlkit.utils.allocator: glibc's malloc tuned so that a step's freed memory is reused, not faulted in again.

The effect is checked by what it is for, in fresh interpreters: ten learner steps of the tiny model (forward,
backward, AdamW; the sequence length varies from step to step, as completions do) page-fault far less after
:func:`tune_allocator` than with glibc's defaults. And every case it must leave alone is left alone."""

import subprocess
import sys
import textwrap

import pytest

from rlkit.utils.allocator import SETTINGS, why_not_tune

STEPS = textwrap.dedent(
    """
    import resource, sys, torch
    from rlkit.utils.allocator import tune_allocator
    applied = tune_allocator() if sys.argv[1] == "tuned" else {}
    from rlkit.models.tiny import build_tiny_model
    torch.set_num_threads(1)
    model = build_tiny_model()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    def step(T):
        ids = torch.randint(5, 40, (128, T))
        model(input_ids=ids).logits.log_softmax(-1).gather(-1, ids[..., None]).mean().backward()
        opt.step()
        opt.zero_grad()
    step(20); step(18)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(10):
        step(14 + i % 7)
    print(len(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(mode: str, env: dict) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, env=env, check=True)
    applied, minor = out.stdout.split()
    return int(applied), int(minor)


@pytest.mark.skipif(why_not_tune({}) is not None, reason="needs Linux with glibc")
def test_tuned_steps_page_fault_a_fraction_of_the_defaults():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "RLKIT_MALLOC"}
    applied, tuned = faults("tuned", env)
    _, default = faults("default", env)
    assert applied == len(SETTINGS)
    assert default > 5000, f"glibc's defaults should give memory back between steps ({default} faults)"
    assert tuned * 2 < default, f"tuned {tuned} page faults against {default} with glibc's defaults"
    # a user's own glibc setting wins: nothing is set
    applied, _ = faults("tuned", {**env, "MALLOC_TOP_PAD_": "0"})
    assert applied == 0


def test_what_it_leaves_alone():
    assert why_not_tune({"RLKIT_MALLOC": "default"}) == "RLKIT_MALLOC=default"
    assert why_not_tune({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_ is set"
    assert why_not_tune({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD has jemalloc"
    assert why_not_tune({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}) == "LD_PRELOAD has tcmalloc"
    if sys.platform.startswith("linux"):
        assert why_not_tune({"RLKIT_MALLOC": "tuned", "LD_PRELOAD": ""}) in (None, "not glibc")

"""rlkit.utils.allocator: glibc's malloc tuned so that a step's freed memory is reused, not faulted in again.

The effect is checked by what it is for, in fresh interpreters: the same allocate-and-free rounds page-fault far
less after :func:`tune_allocator` than with glibc's defaults. And every case it must leave alone is left alone."""

import subprocess
import sys
import textwrap

import pytest

from rlkit.utils.allocator import SETTINGS, why_not_tune

ROUNDS = textwrap.dedent(
    """
    import resource, sys, torch
    from rlkit.utils.allocator import tune_allocator
    applied = tune_allocator() if sys.argv[1] == "tuned" else {}
    def step():  # a step's tensors: 20 blocks of 2 MiB, written, then freed
        xs = [torch.ones(2**19) for _ in range(20)]
        del xs
    step(); step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(len(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(mode: str, env: dict) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, env=env, check=True)
    applied, minor = out.stdout.split()
    return int(applied), int(minor)


@pytest.mark.skipif(why_not_tune({}) is not None, reason="needs Linux with glibc")
def test_tuned_rounds_page_fault_a_fraction_of_the_defaults():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "RLKIT_MALLOC"}
    applied, tuned = faults("tuned", env)
    _, default = faults("default", env)
    assert applied == len(SETTINGS)
    assert default > 1000, "the default allocator should give the memory back between rounds"
    assert tuned * 4 < default, (tuned, default)
    # a user's own glibc setting wins: nothing is set, and the rounds fault as with the defaults
    applied, untouched = faults("tuned", {**env, "MALLOC_ARENA_MAX": "2", "MALLOC_TOP_PAD_": "0"})
    assert applied == 0 and untouched * 4 > default


def test_what_it_leaves_alone():
    assert why_not_tune({"RLKIT_MALLOC": "default"}) == "RLKIT_MALLOC=default"
    assert why_not_tune({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_ is set"
    assert why_not_tune({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD has jemalloc"
    assert why_not_tune({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}) == "LD_PRELOAD has tcmalloc"
    if sys.platform.startswith("linux"):
        assert why_not_tune({"RLKIT_MALLOC": "tuned", "LD_PRELOAD": ""}) in (None, "not glibc")

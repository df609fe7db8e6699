"""trilb.gctune: the garbage collector settings of a serving process.

They are process-wide, so each test runs in a Python process of its own.
"""

from __future__ import annotations

import subprocess
import sys

from trilb import gctune


def _run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def test_tune_for_serving_freezes_what_start_up_made_and_sets_the_thresholds() -> None:
    frozen, *thresholds = _run(
        "import gc, trilb, trilb.gctune\n"
        "trilb.gctune.tune_for_serving()\n"
        "print(gc.get_freeze_count(), *gc.get_threshold())"
    )
    assert int(frozen) > 1000  # the modules imported so far
    assert [int(t) for t in thresholds] == [gctune.YOUNG, gctune.MIDDLE, gctune.FULL]


def test_young_collections_reach_the_middle_generation_and_full_ones_stay_rare() -> None:
    """Of 20 collections, every second one took the middle generation along (CPython's defaults:
    one), so none walks more than what two young ones left; none was full."""
    counts = _run(
        "import gc, trilb.gctune\n"
        "trilb.gctune.tune_for_serving()\n"
        "runs = {0: 0, 1: 0, 2: 0}\n"
        "gc.callbacks.append(lambda phase, info: phase == 'stop' and runs.__setitem__("
        "info['generation'], runs[info['generation']] + 1))\n"
        "keep = []\n"
        "while sum(runs.values()) < 20:\n"
        "    keep.append([])  # tracked objects that stay: the young generation fills\n"
        "print(runs[0], runs[1], runs[2])"
    )
    assert [int(c) for c in counts] == [10, 10, 0]

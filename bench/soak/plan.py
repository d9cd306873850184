"""The kill plan of the soak: how many kills each stage is owed, which stages an invocation
may be killed in, and which stage a kill is charged to.

    owed = allocate(100, ["ingest", "train_ae", ...], random.Random(0))
    budget = {s: min(n, 3) for s, n in owed.items()}    # at most 3 per stage and pass
    targets_of(owed, budget)                             # the stages still owed a kill
    settle(owed, budget, aimed="train_ae", landed="train_vae")
"""

from __future__ import annotations

import random


def allocate(kills: int, stages: list[str], rng: random.Random) -> dict[str, int]:
    """``kills`` shared over ``stages`` as evenly as possible; the stages of the remainder drawn."""
    base, extra = divmod(kills, len(stages))
    lucky = set(rng.sample(range(len(stages)), extra))
    return {s: base + (i in lucky) for i, s in enumerate(stages)}


def targets_of(owed: dict[str, int], budget: dict[str, int]) -> list[str]:
    """The stages an invocation may be killed in: owed a kill overall and in this pass."""
    return [s for s, n in owed.items() if n > 0 and budget.get(s, 0) > 0]


def settle(owed: dict[str, int], budget: dict[str, int], aimed: str, landed: str) -> str:
    """Count a kill aimed at ``aimed`` that landed in ``landed``: against the landed stage when
    it is still owed kills, else against the aimed one. Returns the stage charged."""
    charged = landed if owed.get(landed, 0) > 0 else aimed
    owed[charged] -= 1
    budget[charged] = max(0, budget.get(charged, 0) - 1)
    return charged

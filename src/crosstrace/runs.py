"""Which run a file belongs to (a model of the config, a strategy and a seed), and the
training phases a strategy is made of."""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("stage", "mix")  # two-stage (BIO, then QA) and mixed training
PHASES = ("bio", "qa", "mix")  # stage: bio then qa; mix: mix


@dataclass(frozen=True)
class Run:
    model: str
    strategy: str
    seed: int

    def __str__(self) -> str:
        return f"{self.model}/{self.strategy}/seed{self.seed}"

"""What one ``gaaf-tune`` process is asked to do, and the error it reports for a user mistake.

The settings travel from the command line (:mod:`.main`) to the study storage (:mod:`.study`), the
trials (:mod:`.trial`) and the outputs (:mod:`.outputs`); they live here, below all of them, so that
none of those modules has to import the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gaaf.cli.tune.search_space import SearchSpace

PROG = "gaaf-tune"


class TuneError(Exception):
    """A user mistake reported as one line ``gaaf-tune: error: ...`` with exit status 2."""


@dataclass
class TuneSettings:
    """Everything one gaaf-tune process needs to run trials of a study."""

    config: Path
    space: SearchSpace
    out: Path
    storage: str
    study_name: str
    n_trials: int
    fit_args: list[str] = field(default_factory=list)
    seed: int = 0
    sampler_seed: int | None = None
    pruner: str = "median"
    workers: int = 1
    in_process: bool = True
    max_failures: int = 3
    #: the command line (after ``gaaf-tune``) that made these settings; local workers are started with it
    argv: list[str] = field(default_factory=list)

    @property
    def signature(self) -> dict[str, Any]:
        """What makes two invocations the same study (checked when one continues a study)."""
        return {
            "config": self.config.stem,
            "metric": self.space.metric,
            "params": sorted(self.space.params),
            "fit_args": self.fit_args,
            "seed": self.seed,
        }

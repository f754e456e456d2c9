"""your_project: a user's own package built on csa-lightning (docs/your-project.md walks through it)."""

from .distill import DistillationModule
from .gate_penalty import GatePenaltyModule
from .srm import SRM

__all__ = ["SRM", "GatePenaltyModule", "DistillationModule"]

"""your_project: a user's own package built on csa-lightning (docs/your-project.md walks through it)."""

from .srm import SRM

__all__ = ["SRM"]

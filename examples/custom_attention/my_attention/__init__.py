"""A user's package with its own attention block, trained through csa-lightning unmodified."""

from .std_gate import StdGate

__all__ = ["StdGate"]

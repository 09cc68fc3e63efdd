"""Preprocessing defenses: one object that training, attacks and evaluation share."""

from menet_jax.defenses.menet import MENet, majority_vote

__all__ = ["MENet", "majority_vote"]

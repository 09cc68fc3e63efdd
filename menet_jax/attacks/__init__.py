"""Adversarial attacks, pure and batched over images (pixel space, [0, 1])."""

from menet_jax.attacks.pgd import pgd

__all__ = ["pgd"]

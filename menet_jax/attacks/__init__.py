"""Adversarial attacks, pure and batched over images (pixel space, [0, 1], l-inf)."""

from menet_jax.attacks.apgd import apgd
from menet_jax.attacks.boundary import boundary, project_linf
from menet_jax.attacks.eot import eot, fresh_draws
from menet_jax.attacks.losses import cross_entropy, cw_margin, dlr, margin
from menet_jax.attacks.pgd import fgsm, pgd
from menet_jax.attacks.projected import projected_pgd, subspace_projector
from menet_jax.attacks.spsa import spsa

__all__ = ["apgd", "boundary", "cross_entropy", "cw_margin", "dlr", "eot", "fgsm", "fresh_draws",
           "margin", "pgd", "project_linf", "projected_pgd", "spsa", "subspace_projector"]

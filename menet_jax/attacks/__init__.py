"""Adversarial attacks, pure and batched over images (pixel space, [0, 1], l-inf or l2)."""

from menet_jax.attacks.apgd import apgd, apgd_targeted
from menet_jax.attacks.boundary import boundary
from menet_jax.attacks.cw import cw_l2
from menet_jax.attacks.eot import eot, fresh_draws
from menet_jax.attacks.fab import fab_t, project_hyperplane_box
from menet_jax.attacks.losses import cross_entropy, cw_margin, dlr, dlr_targeted, margin
from menet_jax.attacks.pgd import NORMS, fgsm, max_radius, pgd, project_l2, project_linf
from menet_jax.attacks.projected import projected_pgd, subspace_projector
from menet_jax.attacks.spsa import spsa
from menet_jax.attacks.square import square

__all__ = ["NORMS", "apgd", "apgd_targeted", "boundary", "cross_entropy", "cw_l2", "cw_margin",
           "dlr", "dlr_targeted", "eot", "fab_t", "fgsm", "fresh_draws", "margin", "max_radius",
           "pgd", "project_hyperplane_box", "project_l2", "project_linf", "projected_pgd", "spsa",
           "square", "subspace_projector"]

"""Defenses: one interface (`Defense`) that training, attacks and evaluation share.

A defense is created from a component string, e.g.
`defenses.create("menet(method=usvt, keep=0.8, startp=0.4, endp=0.6, mask_num=10)")`;
a new one is a module that subclasses `Defense` and registers itself with `register`.
"""

from menet_jax.defenses.base import (DEFENSES, Defense, Identity, create, majority_vote,
                                     names, on_devices, per_device, register)
from menet_jax.defenses.bpda import bpda
from menet_jax.defenses.median import Median
from menet_jax.defenses.menet import MENet
from menet_jax.defenses.ride import RIDE
from menet_jax.defenses.splic import splic
from menet_jax.defenses.tv import TVBregman, TVChambolle
from menet_jax.defenses.tv_minimization import tv_minimization

__all__ = ["DEFENSES", "Defense", "Identity", "MENet", "Median", "RIDE", "TVBregman",
           "TVChambolle", "bpda", "create", "majority_vote", "names", "on_devices", "per_device",
           "register", "splic", "tv_minimization"]

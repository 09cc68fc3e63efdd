"""Train (or resume) an ME-Net experiment on cifar10: `python -m experiments.cifar10 --flagfile=...`."""

from absl import app

from menet_jax import experiment

experiment.define_flags(dataset="cifar10")

if __name__ == "__main__":
  app.run(experiment.main)

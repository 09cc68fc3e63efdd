"""Train (or resume) an ME-Net experiment on svhn: `python -m experiments.svhn --flagfile=...`."""

from absl import app

from menet_jax import experiment

experiment.define_flags(dataset="svhn_cropped")

if __name__ == "__main__":
  app.run(experiment.main)

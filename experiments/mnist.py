"""Train (or resume) an ME-Net experiment on mnist: `python -m experiments.mnist --flagfile=...`."""

from absl import app

from menet_jax import experiment

experiment.define_flags(dataset="mnist")

if __name__ == "__main__":
  app.run(experiment.main)

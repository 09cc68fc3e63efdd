"""Train (or resume) an ME-Net experiment on tiny_imagenet: `python -m experiments.tiny_imagenet --flagfile=...`."""

from absl import app

from menet_jax import experiment

experiment.define_flags(dataset="tiny_imagenet")

if __name__ == "__main__":
  app.run(experiment.main)

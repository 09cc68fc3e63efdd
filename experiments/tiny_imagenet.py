"""python -m experiments.tiny_imagenet --flagfile=...: train, or evaluate with --mode=eval."""

from absl import app

from experiments import main

main.define_flags(dataset="tiny_imagenet")

if __name__ == "__main__":
  app.run(main.main)

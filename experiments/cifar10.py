"""python -m experiments.cifar10 --flagfile=...: train, or evaluate with --mode=eval."""

from absl import app

from experiments import main

main.define_flags(dataset="cifar10")

if __name__ == "__main__":
  app.run(main.main)

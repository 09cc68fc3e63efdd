"""python -m experiments.svhn --flagfile=...: train, or evaluate with --mode=eval."""

from experiments import main

if __name__ == "__main__":
  main.cli("svhn_cropped")

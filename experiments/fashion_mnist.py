"""python -m experiments.fashion_mnist --flagfile=...: train, or evaluate with --mode=eval."""

from experiments import main

if __name__ == "__main__":
  main.cli("fashion_mnist")

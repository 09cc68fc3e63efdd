"""python -m experiments.tiny_imagenet --flagfile=...: train, or evaluate with --mode=eval."""

from experiments import main

if __name__ == "__main__":
  main.cli("tiny_imagenet")

"""Helpers every package may use: argument checks, atomic writes, the registry, devices, machine."""

"""Analyses of data and learned representations: intrinsic dimension, t-SNE of codes."""

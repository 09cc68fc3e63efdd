"""RIDE one image at a time in PyTorch, as the release runs it: the benchmark's reference.

Written from the paper and shared/specs/RIDE.md (not from the release, whose licence forbids
copying): the Table 3 network, Adam with PyTorch's coupled weight decay, the masked MSE with
input and target noise, dropout on, K steps per stage, T stages with the convex update and
the median replacement. `torch` is a benchmark-only dependency.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

NETWORKS = {"mnist": ((16, 16, 16), (1, 2)), "cifar": ((32, 32, 32, 32), (1, 2))}


def ride(x: np.ndarray, *, network: str, k: int, t: int, sigma: float = 0.1,
         mask_fraction: float = 0.9, dropout: float = 0.5, lr: float = 1e-4,
         weight_decay: float = 1e-4, alpha: float = 0.9, seed: int = 0) -> np.ndarray:
  """RIDE on one image x (H, W, C) in [0, 1]; returns x_est(T) (H, W, C)."""
  import torch  # noqa: PLC0415 - benchmark-only dependency
  from torch import nn  # noqa: PLC0415

  torch.manual_seed(seed)
  widths, dropped = NETWORKS[network]
  channels = x.shape[-1]
  sizes = [channels, *widths, channels]
  convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(sizes, sizes[1:]))
  for conv in convs:
    nn.init.xavier_uniform_(conv.weight)

  def h(z):
    for i, conv in enumerate(convs[:-1]):
      z = torch.relu(conv(z))
      if i in dropped:
        z = nn.functional.dropout(z, dropout, training=True)
    return torch.sigmoid(convs[-1](z))

  opt = torch.optim.Adam(convs.parameters(), lr=lr, weight_decay=weight_decay)
  u = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32))
  for _ in range(t):
    for _ in range(k):
      z = u + sigma * torch.randn_like(u)
      target = u + sigma * torch.randn_like(u)
      mask = (torch.rand(1, 1, *u.shape[2:]) >= mask_fraction).float()
      loss = torch.sum(mask * (h(z) - target) ** 2) / torch.clamp(channels * mask.sum(), min=1.0)
      opt.zero_grad()
      loss.backward()
      opt.step()
    with torch.no_grad():
      estimate = h(u + sigma * torch.randn_like(u))
      d = torch.sum(torch.abs(u - estimate), dim=1, keepdim=True)
      tau = torch.sort(d.flatten()).values[(d.numel() - 1) // 2]
      u = torch.where(d < tau, estimate, alpha * u + (1 - alpha) * estimate)
  return estimate[0].numpy().transpose(1, 2, 0)


def main(argv: list[str]) -> None:
  """Times the fits of images saved with np.save, in a process of its own (no JAX or
  TensorFlow loaded beside PyTorch):

    python -m references.ride_torch IMAGES.npy NETWORK K T THREADS

  one untimed warm-up fit (K 20, T 1; PyTorch's first fits in a process run slower), then one
  fit per image; prints the seconds of each as a JSON list.
  """
  import torch  # noqa: PLC0415 - benchmark-only dependency

  path, network, k, t, threads = argv
  torch.set_num_threads(int(threads))
  images = np.load(path)
  ride(images[0], network=network, k=20, t=1, seed=0)
  seconds = []
  for i, image in enumerate(images):
    start = time.perf_counter()
    ride(image, network=network, k=int(k), t=int(t), seed=i)
    seconds.append(time.perf_counter() - start)
  print(json.dumps(seconds))


if __name__ == "__main__":
  main(sys.argv[1:])

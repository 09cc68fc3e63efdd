"""RIDE one image at a time in PyTorch, as the release runs it: the benchmark's reference.

Written from the paper and shared/specs/RIDE.md (not from the release, whose licence forbids
copying): the Table 3 network, Adam with PyTorch's coupled weight decay, the masked MSE with
input and target noise, dropout on, K steps per stage, T stages with the convex update and
the median replacement. `torch` is a benchmark-only dependency.
"""

from __future__ import annotations

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

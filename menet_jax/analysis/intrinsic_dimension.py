"""The Levina-Bickel maximum-likelihood estimate of intrinsic dimension (Levina & Bickel, 2005).

With T_j(x) the Euclidean distance from x to its j-th nearest neighbour among the
other points, the estimate at x from k neighbours is

    m_k(x) = (k - 2) / sum_{j=1}^{k-1} log(T_k(x) / T_j(x))

(the (k - 2) of MacKay and Ghahramani's bias correction, as hub-toolbox's
`intrinsic_dimension`, which the ER-Classifier's Table 3 used). Two ways of
pooling over the n points and over k = k1 .. k2:

    "levina":  mean_k mean_x m_k(x)              (the paper's average of estimates)
    "mackay":  mean_k (mean_x 1 / m_k(x))^-1     (MacKay and Ghahramani: average the
                                                  inverses, which the likelihood adds)
"""

from __future__ import annotations

import numpy as np

from menet_jax.utils import validation

ESTIMATORS = ("mackay", "levina")


def neighbour_distances(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
  """(n, k) distances from each row of x (n, d) to its k nearest other rows, ascending.

  Computed in float64 a chunk of rows at a time (memory chunk x n).
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  sq = np.sum(x * x, axis=1)
  out = np.empty((len(x), k))
  for start in range(0, len(x), chunk):
    rows = slice(start, start + chunk)
    d2 = sq[rows, None] + sq[None, :] - 2 * x[rows] @ x.T
    d2[np.arange(d2.shape[0]), np.arange(start, start + d2.shape[0])] = np.inf  # not itself
    nearest = np.partition(d2, k - 1, axis=1)[:, :k]
    out[rows] = np.sqrt(np.maximum(np.sort(nearest, axis=1), 0.0))
  return out


def levina_bickel(x: np.ndarray, *, k1: int = 6, k2: int = 12, estimator: str = "mackay"
                  ) -> float:
  """The intrinsic dimension of the points x.

  Args:
    x: (n, ...) points, flattened to (n, d); n > k2. No two may coincide (a zero distance
      has no logarithm): deduplicate first.
    k1, k2: the range of neighbour counts, 3 <= k1 <= k2 (hub-toolbox's defaults 6 and 12).
    estimator: "mackay" or "levina" (module docstring).

  Returns:
    The estimate, a float.
  """
  validation.choice("estimator", estimator, ESTIMATORS)
  k1 = validation.integer_in("k1", k1, 3)
  k2 = validation.integer_in("k2", k2, k1)
  if len(x) <= k2:
    raise ValueError(f"x must have more than k2 = {k2} points, got {len(x)}")
  t = neighbour_distances(x, k2)
  if np.any(t[:, 0] == 0):
    raise ValueError(f"x has {int(np.sum(t[:, 0] == 0))} points with a duplicate; the estimate "
                     "needs distinct points (deduplicate first)")
  logs = np.log(t)
  per_k = []
  for k in range(k1, k2 + 1):
    m = (k - 2) / np.sum(logs[:, k - 1:k] - logs[:, :k - 1], axis=1)  # (n,) m_k(x)
    per_k.append(1 / np.mean(1 / m) if estimator == "mackay" else np.mean(m))
  return float(np.mean(per_k))

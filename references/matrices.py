"""Independent per-matrix references in numpy, written from the papers, not from menet_jax."""

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)


def usvt(x, mask, keep=0.8, threshold="keep", eta=0.01):
  """The ME-Net release's USVT on one matrix (np.linalg.svd of the zero-filled observation)."""
  m, n = x.shape
  p_hat = mask.mean()
  if p_hat == 0:
    return np.zeros_like(x)
  u, s, vt = np.linalg.svd(np.where(mask, x, 0.0), full_matrices=False)
  if threshold == "keep":
    s = np.where(np.arange(s.size) < int(keep * min(m, n)), s, 0.0)
  else:
    s = np.where(s >= (2 + eta) * np.sqrt(max(m, n) * p_hat), s, 0.0)
  return (u * s) @ vt / p_hat


def soft_impute(x, mask, shrinkage=None, max_iters=100, tol=1e-3):
  """fancyimpute's SoftImpute.solve with an exact sigma_max, one matrix."""
  missing = ~mask
  filled = np.where(mask, x, 0.0)
  if shrinkage is None:
    shrinkage = np.linalg.svd(filled, compute_uv=False)[0] / 50
  for _ in range(max_iters):
    u, s, vt = np.linalg.svd(filled, full_matrices=False)
    rec = (u * np.maximum(s - shrinkage, 0)) @ vt
    old, new = filled[missing], rec[missing]
    ssd = np.sum((old - new) ** 2)
    old_norm = np.sqrt(np.sum(old ** 2))
    if old_norm == 0 or (old_norm < F32_EPS and np.sqrt(ssd) > F32_EPS):
      converged = False
    else:
      converged = np.sqrt(ssd) / old_norm < tol
    filled[missing] = new
    if converged:
      break
  return filled


def nuclear_objective(x, mask, estimate, mu):
  return mu * np.linalg.svd(estimate, compute_uv=False).sum() + np.sum((mask * (estimate - x)) ** 2)


def tv_gradient_loops(x):
  """Gradient of SPLIC eq. 6 by explicit loops over the 4-neighbourhood."""
  m, n = x.shape
  g = np.zeros_like(x)
  for i in range(m):
    for j in range(n):
      for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        if 0 <= i + di < m and 0 <= j + dj < n:
          g[i, j] += x[i, j] - x[i + di, j + dj]
  return g


def tv_gradient(x):
  """Gradient of SPLIC eq. 6 with numpy slicing (the fast form of tv_gradient_loops)."""
  g = np.zeros_like(x)
  dv, dh = x[:-1] - x[1:], x[:, :-1] - x[:, 1:]
  g[:-1] += dv
  g[1:] -= dv
  g[:, :-1] += dh
  g[:, 1:] -= dh
  return g


def splic(x, mask, rank, lam=0.02, rho=0.45, step=0.5, inner=7, max_outer=10, tol=1e-3):
  """SPLIC Algorithm 1 on one matrix with numpy's SVD."""
  xt = np.where(mask, x, 0.0)
  delta = np.linalg.svd(xt, compute_uv=False)[0] or 1.0
  for _ in range(max_outer):
    for _ in range(inner):
      u, s, vt = np.linalg.svd(xt, full_matrices=False)
      s = np.where(np.arange(s.size) < rank, s, 0.0)
      x_r = (u * s) @ vt
      grad_f = (u * (s / delta**2 * np.exp(-s**2 / (2 * delta**2)))) @ vt
      prev, xt = xt, np.where(mask, x, x_r - step * (grad_f + lam * tv_gradient(x_r)))
    if np.linalg.norm(xt - prev) <= tol * np.linalg.norm(prev):
      break
    delta *= rho
  return xt


def nuclear_norm_cvxpy(x, mask, mu, **solver_options):
  """The ME-Net release's nuclear_norm_solve: cvxpy + SCS on one matrix."""
  import cvxpy as cp  # test/benchmark-only dependency

  est = cp.Variable(x.shape)
  objective = mu * cp.normNuc(est) + cp.sum_squares(cp.multiply(mask.astype(np.float64), est - x))
  cp.Problem(cp.Minimize(objective)).solve(solver=cp.SCS, **solver_options)
  return est.value


def tv_objective(x, mask, z, weight, norm=2):
  """Guo et al.'s TV minimization objective of z (numpy, float64), as tv_minimization_cvxpy
  states it."""
  rows, cols = np.diff(z, axis=0), np.diff(z, axis=1)
  tv = (np.abs(rows).sum() + np.abs(cols).sum() if norm == 1 else
        np.linalg.norm(rows, axis=1).sum() + np.linalg.norm(cols, axis=0).sum())
  return 0.5 * np.sum((mask * (z - x)) ** 2) + weight * tv


def tv_minimization_cvxpy(x, mask, weight, norm=2):
  """Guo et al.'s TV minimization on one matrix, stated directly in cvxpy:
  min_z 0.5 ||mask * (z - x)||^2 + weight (sum_i ||z[i+1,:] - z[i,:]||_norm
  + sum_j ||z[:,j+1] - z[:,j]||_norm). Returns (z, optimal value)."""
  import cvxpy as cp  # test/benchmark-only dependency

  z = cp.Variable(x.shape)
  m, n = x.shape
  rows = [cp.norm(z[i + 1, :] - z[i, :], norm) for i in range(m - 1)]
  cols = [cp.norm(z[:, j + 1] - z[:, j], norm) for j in range(n - 1)]
  fit = 0.5 * cp.sum_squares(cp.multiply(mask.astype(np.float64), z - x))
  problem = cp.Problem(cp.Minimize(fit + weight * (cp.sum(cp.hstack(rows + cols)))))
  problem.solve(solver=cp.CLARABEL)
  return z.value, problem.value

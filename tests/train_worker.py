"""Runs a short training in its own process (device count and jax.distributed are per process).

    python -m tests.train_worker OUT_NPZ WORKDIR [--mode=adv --dataset=cifar10 --model=small_cnn
        --images=64 --mask_num=2 --objective=... --optimizer=sgd --x64]
        [--coordinator=host:port --process=i --processes=n]

Trains for one epoch on the first `images` test images of `dataset` (batch 16,
ME-Net with USVT, p 0.4 -> 0.6, `mask_num` masks; adv mode: PGD-2 through BPDA,
fresh masks per step; or `objective`, e.g. the ER-Classifier's, with the identity
defense) and saves this process's copy of the final parameters and BatchNorm
statistics. --x64: a float64 run (jax_enable_x64, the model's compute dtype float64, so every
parameter, activation and gradient is float64; the data and the augmentation draws as in float32).
"""

import argparse
import sys

import jax
import numpy as np

from menet_jax.training import loop, run_dir
from menet_jax.training.config import Config
from menet_jax.utils import parallel
from tests.conftest import DATA_DIR


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("workdir")
  parser.add_argument("--coordinator")
  parser.add_argument("--process", type=int)
  parser.add_argument("--processes", type=int)
  parser.add_argument("--mode", default="adv")
  parser.add_argument("--dataset", default="cifar10")
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--mask_num", type=int, default=2)
  parser.add_argument("--objective")
  parser.add_argument("--optimizer", default="sgd")
  parser.add_argument("--x64", action="store_true")
  args = parser.parse_args(argv)
  if args.x64:
    jax.config.update("jax_enable_x64", True)
    name, _, params = args.model.rstrip(")").partition("(")
    args.model = f"{name}({', '.join(filter(None, [params, 'dtype=float64']))})"
  if args.coordinator:
    parallel.initialize(args.coordinator, args.processes, args.process)
  config = Config.for_dataset(
      args.dataset, mode=args.mode, workdir=args.workdir, data_dir=str(DATA_DIR),
      cache_dir=args.workdir + "-cache",
      train_split=f"test[:{args.images}]", test_split=f"test[{args.images}:{args.images + 16}]",
      model=args.model, me_method="usvt", startp=0.4, endp=0.6,
      mask_num=args.mask_num, epochs=1, batch_size=16, eval_batch_size=8, lr=0.05, adv_steps=2,
      progress=False, log_every=2, optimizer=args.optimizer,
      **({"objective": args.objective, "defense": "identity"} if args.objective else {}))
  config.validate()
  if parallel.is_chief():
    run_dir.prepare(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("workdir")
  state, result = loop.train_and_evaluate(config, args.workdir)
  flat = {"/".join(map(str, path)): leaf for path, leaf in
          jax.tree_util.tree_leaves_with_path(parallel.to_host(
              {"params": state.params, "batch_stats": state.batch_stats,
               "critic": getattr(state, "critic", {})}))}
  np.savez(args.out, step=result["step"], accuracy=result["test_accuracy"], **flat)


if __name__ == "__main__":
  main(sys.argv[1:])

"""Datasets as registered components: what a Dataset declares is checked, the library reads a
dataset's facts from it, and a project's own dataset (a module outside the package) trains and
is evaluated by the stock entry point with --import."""

import json
import subprocess
import sys

import numpy as np
import pytest

from menet_jax import data, models
from menet_jax.training import config as config_lib
from menet_jax.training import factories
from tests import watchdog

# Whose facts the papers give (ME-Net's Table 8, its Section 3.3 PGD) and which the project
# reads from the datasets' modules.
PAPER = {
    "cifar10": ((32, 32, 3), 10, "resnet18", 200, 0.1, (100, 150), True, 8 / 255),
    "svhn_cropped": ((32, 32, 3), 10, "resnet18", 200, 0.01, (100, 150), True, 8 / 255),
    "mnist": ((28, 28, 1), 10, "lenet", 200, 0.01, (100, 150), False, 0.3),
    "fashion_mnist": ((28, 28, 1), 10, "lenet", 200, 0.01, (100, 150), False, 0.3),
    "tiny_imagenet": ((64, 64, 3), 200, "densenet121", 90, 0.1, (30, 60), True, 8 / 255),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_papers_datasets_and_their_table_8_defaults(name):
  shape, classes, model, epochs, lr, boundaries, augment, eps = PAPER[name]
  ds = data.dataset(name)
  assert (ds.image_shape, ds.num_classes) == (shape, classes)
  config = config_lib.Config.for_dataset(name, workdir="w")
  assert (config.model, config.epochs, config.lr, config.lr_boundaries, config.augment,
          config.num_classes, config.test_split) == (model, epochs, lr, boundaries, augment,
                                                     classes, ds.test_split)
  assert config.image_shape() == shape
  assert config_lib.pgd_defaults(name)["eps"] == pytest.approx(eps)


def test_a_model_normalises_with_its_datasets_statistics():
  config = config_lib.Config.for_dataset("svhn_cropped", workdir="w", model="small_cnn")
  model = factories.create_model(config)
  svhn = data.dataset("svhn_cropped")
  assert (model.mean, model.std) == (svhn.mean, svhn.std) != (data.dataset("cifar10").mean,
                                                              data.dataset("cifar10").std)
  # A recipe's own normalisation wins over the dataset's.
  config = config_lib.Config.for_dataset("mnist", workdir="w", model="ride_mnist_cnn")
  assert factories.create_model(config).mean == models.NORMALIZATION["mnist_examples"][0]


def _toy(**changes):
  values = dict(name="toy_check", image_shape=(4, 4, 1), num_classes=2, splits=("train", "test"),
                mean=(0.5,), std=(0.25,), pgd=dict(eps=0.1, step_size=0.05, steps=2),
                training=data.Training(model="small_cnn", epochs=1, lr=0.1, lr_boundaries=(),
                                       augment=False),
                has_split=lambda root, split: True, read=None, files="nothing")
  values.update(changes)
  return data.Dataset(**values)


@pytest.mark.parametrize("changes, match", [
    (dict(image_shape=(4, 4)), "image_shape must be"),
    (dict(image_shape=(4, 0, 1)), "image_shape must be"),
    (dict(num_classes=1), "num_classes"),
    (dict(test_split="validation"), "test_split must be one of"),
    (dict(mean=(0.5, 0.5)), "mean must have one entry per channel"),
    (dict(std=(0.0,)), "std must be positive"),
    (dict(pgd=dict(eps=0.1, steps=2)), "pgd must give eps, step_size and steps"),
])
def test_a_dataset_declaration_is_checked(changes, match):
  with pytest.raises(ValueError, match=match):
    _toy(**changes)


def test_registering_a_dataset_and_its_name_once():
  ds = data.register(_toy())
  try:
    assert data.dataset("toy_check") is ds and "toy_check" in data.names()
    with pytest.raises(ValueError, match="a dataset named 'toy_check' is already registered"):
      data.register(_toy())
  finally:
    data.datasets.DATASETS.unregister("toy_check")
  with pytest.raises(ValueError, match="unknown dataset 'toy_check'; known: cifar10"):
    data.dataset("toy_check")


def test_a_reader_that_breaks_its_declaration_is_an_error(tmp_path):
  def read(root, split):
    return np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1, 2], np.int32)

  data.register(_toy(read=read))
  try:
    with pytest.raises(ValueError, match=r"labels run from 0 to 2, outside \[0, 1\]"):
      data.load("toy_check", "train", tmp_path)
  finally:
    data.datasets.DATASETS.unregister("toy_check")


# A project's dataset: a module outside the package that registers itself, read from files in
# its own format (one .npz per split). Class 1 is brighter than class 0.
TOY = '''
import numpy as np
from menet_jax import data

def has_split(root, split):
  return (root / f"toy_{split}.npz").is_file()

def read(root, split):
  with np.load(root / f"toy_{split}.npz") as f:
    return f["images"], f["labels"]

data.register(data.Dataset(
    name="toy", image_shape=(12, 12, 1), num_classes=2, splits=("train", "test"),
    mean=(0.5,), std=(0.25,), pgd=dict(eps=0.1, step_size=0.05, steps=2),
    training=data.Training(model="small_cnn(widths=(4, 8), hidden=16)", epochs=1, lr=0.05,
                           lr_boundaries=(), augment=False),
    has_split=has_split, read=read, files="toy_train.npz and toy_test.npz"))
'''


def _write_toy(folder, split, n, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n).astype(np.int32)
  images = rng.integers(0, 120, (n, 12, 12, 1)) + 120 * labels[:, None, None, None]
  np.savez(folder / f"toy_{split}.npz", images=images.astype(np.uint8), labels=labels)


def test_a_projects_dataset_trains_and_is_evaluated_by_the_stock_entry_point(tmp_path):
  plugin, files, workdir = tmp_path / "toy_data.py", tmp_path / "files", tmp_path / "run"
  plugin.write_text(TOY)
  files.mkdir()
  _write_toy(files, "train", 64, 0)
  _write_toy(files, "test", 16, 1)

  def run(*args):
    proc = subprocess.run([sys.executable, "-m", "experiments.main", *map(str, args)],
                          cwd=watchdog.REPO, env=watchdog.env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  # ME-Net (USVT, 2 masks) trained on the toy images with the dataset's own defaults.
  run("--dataset=toy", f"--import={plugin}", f"--data_dir={files}", f"--workdir={workdir}",
      f"--cache_dir={tmp_path / 'cache'}", "--mode=pure", "--me_method=usvt", "--startp=0.5",
      "--endp=0.7", "--mask_num=2", "--batch_size=16", "--eval_batch_size=8", "--noprogress")
  config = json.loads((workdir / "config.json").read_text())
  assert (config["dataset"], config["model"], config["epochs"]) == \
      ("toy", "small_cnn(widths=(4, 8), hidden=16)", 1)
  # No --import and no --dataset: the run recorded its plug-in, which registers the dataset.
  run(f"--workdir={workdir}", "--mode=eval", "--attacks=clean,bpda_pgd", "--attack_steps=2",
      "--eval_images=16", "--eval_batch_size=8", "--sanity_eps=0,0.5", "--sanity_images=8",
      "--allow_failed_checks", "--eval_name=toy")
  record = json.loads((workdir / "eval" / "toy.json").read_text())
  assert [r["label"] for r in record["results"]] == ["clean", "bpda_pgd-2"]
  assert record["eps"] == pytest.approx(0.1)  # the dataset's PGD radius
  # The stock per-dataset entry points refuse it by name.
  proc = subprocess.run([sys.executable, "-m", "experiments.cifar10", f"--workdir={workdir}",
                         "--mode=eval"], cwd=watchdog.REPO, env=watchdog.env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  assert "this entry point runs cifar10, but the flags ask for toy; use python -m " \
      "experiments.main --dataset=toy" in proc.stderr


def _write_stl10(folder, images, labels, split):
  """The published binaries, written from their description: per image, each channel's 96 x 96
  plane column by column (Fortran order); labels 1..10, one byte each."""
  planes = [img[:, :, c].flatten(order="F") for img in images for c in range(3)]
  np.concatenate(planes).astype(np.uint8).tofile(folder / f"{split}_X.bin")
  (np.asarray(labels) + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")


def test_stl10_reads_its_published_binaries(tmp_path):
  folder = tmp_path / "stl10_binary"
  folder.mkdir()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
  images[0, 0, 1] = (255, 0, 0)  # row 0, column 1: one red pixel, to pin the orientation
  labels = np.array([0, 9, 4])
  _write_stl10(folder, images, labels, "test")
  got_images, got_labels = data.load("stl10", "test[1:]", tmp_path)
  np.testing.assert_array_equal(got_images, images[1:])
  np.testing.assert_array_equal(got_labels, labels[1:])
  first, _ = data.load("stl10", "test[:1]", tmp_path)
  assert tuple(first[0, 0, 1]) == (255, 0, 0)
  (folder / "test_X.bin").write_bytes((folder / "test_X.bin").read_bytes()[:-1])
  with pytest.raises(ValueError, match="not 3 images of 27648 bytes"):
    data.load("stl10", "test", tmp_path)
  with pytest.raises(FileNotFoundError, match="stl10_binary/ with train_X.bin"):
    data.load("stl10", "train", tmp_path, backend="files")


def test_stl10_trains_as_the_er_classifier_by_default():
  config = config_lib.Config.for_dataset("stl10", workdir="w")
  assert (config.model, config.optimizer, config.weight_decay, config.lr, config.augment) == \
      ("er_stl10", "adam", 0.0, 1e-4, False)
  assert config.image_shape() == (96, 96, 3)


@pytest.mark.parametrize("entry, args, match", [
    ("main", [], "--dataset is required to train: one of cifar10, fashion_mnist, imagenet, mnist"),
    ("main", ["--dataset=nope"], "unknown dataset 'nope'; known: cifar10"),
    # A name that is no dataset is not sent to the generic entry point.
    ("cifar10", ["--dataset=cifar100"], "unknown dataset 'cifar100'; known: cifar10"),
])
def test_the_entry_points_need_a_registered_dataset(tmp_path, entry, args, match):
  proc = subprocess.run([sys.executable, "-m", f"experiments.{entry}", f"--workdir={tmp_path / 'w'}",
                         "--mode=vanilla", "--only_check_args", *args], cwd=watchdog.REPO,
                        env=watchdog.env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and match in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def _reference_transform(path):
  """torchvision's Resize(256) and CenterCrop(224) on a PIL image, written out: the shorter side
  to 256 and the longer to int(256 * long / short), bilinear; the crop at round((size - 224) / 2)."""
  from PIL import Image

  with Image.open(path) as im:
    im = im.convert("RGB")
    w, h = im.size
    new = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    arr = np.asarray(im.resize(new, Image.BILINEAR))
  top, left = round((arr.shape[0] - 224) / 2), round((arr.shape[1] - 224) / 2)
  return arr[top:top + 224, left:left + 224]


def test_imagenet_reads_class_folders_at_224_with_the_standard_transform(tmp_path, monkeypatch):
  from PIL import Image

  val = tmp_path / "val"
  wnids = [f"n{i:08d}" for i in range(1000)]
  for w in wnids:
    (val / w).mkdir(parents=True)
  # A landscape image, red on the left half and blue on the right; a portrait noise image.
  wide = np.zeros((260, 500, 3), np.uint8)
  wide[:, :250, 0], wide[:, 250:, 2] = 255, 255
  Image.fromarray(wide).save(val / wnids[7] / "a.JPEG", quality=95)
  tall = np.random.default_rng(0).integers(0, 256, (401, 300, 3), dtype=np.uint8)
  Image.fromarray(tall).save(val / wnids[3] / "b.JPEG", quality=95)
  images, labels = data.load("imagenet", "validation", tmp_path)
  assert images.shape == (2, 224, 224, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [3, 7])  # the sorted wnids' indices, in folder order
  np.testing.assert_array_equal(images[0], _reference_transform(val / wnids[3] / "b.JPEG"))
  np.testing.assert_array_equal(images[1], _reference_transform(val / wnids[7] / "a.JPEG"))
  assert images[1, :, 0, 0].min() > 200 and images[1, :, -1, 2].min() > 200  # red left, blue right
  # A slice decodes only its images, and counting decodes none.
  one, label = data.load("imagenet", "validation[1:]", tmp_path)
  np.testing.assert_array_equal(one, images[1:])
  with monkeypatch.context() as patch:
    patch.setattr(Image, "open", lambda *a, **k: pytest.fail("count decoded an image"))
    assert data.count("imagenet", "validation", tmp_path) == 2
    assert data.count("imagenet", "validation[1:]", tmp_path) == 1
    opened = data.open_split("imagenet", "validation", tmp_path)
  first, first_label = opened.read(1)  # found once, then its first image decoded
  np.testing.assert_array_equal(first, images[:1])
  np.testing.assert_array_equal(first_label, labels[:1])
  (val / wnids[0]).rmdir()
  with pytest.raises(ValueError, match="holds 999 class folders, not the 1000 wnids"):
    data.load("imagenet", "validation", tmp_path)


def test_imagenet_has_no_training_defaults():
  with pytest.raises(ValueError, match="imagenet has no training defaults .* set model, epochs, "
                                       "lr, lr_boundaries, augment, optimizer, weight_decay"):
    config_lib.Config.for_dataset("imagenet", workdir="w")
  with pytest.raises(ValueError, match="set optimizer, weight_decay$"):
    config_lib.Config.for_dataset("imagenet", workdir="w", model="resnet18", epochs=1, lr=0.1,
                                  lr_boundaries=(), augment=False)
  config = config_lib.Config.for_dataset("imagenet", workdir="w", model="resnet18", epochs=1,
                                         lr=0.1, lr_boundaries=(), augment=False,
                                         optimizer="sgd", weight_decay=0.0)
  assert (config.num_classes, config.test_split, config.image_shape()) == \
      (1000, "validation", (224, 224, 3))
  assert config_lib.pgd_defaults("imagenet") == dict(eps=0.05, step_size=0.01, steps=10)

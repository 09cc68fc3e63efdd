import gzip
import logging
import pickle
import struct

import numpy as np
import pytest
from scipy import io as sio

from menet_jax import data
from tests import watchdog
from tests.conftest import DATA_DIR

CIFAR_DIR = DATA_DIR / "cifar10" / "cifar-10-batches-py"
MNIST_DIR = DATA_DIR / "mnist"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
# Class counts of the official MNIST test set.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _require(path):
  from pathlib import Path
  if not Path(path).exists():
    pytest.skip(f"{path} not present on this machine")


def test_cifar10_test_from_real_files():
  _require(CIFAR_DIR / "test_batch")
  images, labels = data.load("cifar10", "test", DATA_DIR)
  assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
  with open(CIFAR_DIR / "test_batch", "rb") as f:
    raw = pickle.load(f, encoding="bytes")
  # Pixel (row 3, col 5) of image 17, channel 2, read straight from the channel-major record.
  assert images[17, 3, 5, 2] == raw[b"data"][17][2 * 1024 + 3 * 32 + 5]
  assert labels[17] == raw[b"labels"][17]


def test_cifar10_partial_train_set_is_loaded_with_a_warning(caplog):
  _require(CIFAR_DIR / "data_batch_1")
  with caplog.at_level(logging.WARNING):
    images, labels = data.load("cifar10", "train", DATA_DIR)
  n_batches = sum((CIFAR_DIR / f"data_batch_{i}").is_file() for i in range(1, 6))
  assert images.shape == (10000 * n_batches, 32, 32, 3)
  if n_batches < 5:
    assert "training batches" in caplog.text


def test_mnist_test_from_real_files_and_slices():
  _require(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
  images, labels = data.load("mnist", "test", DATA_DIR)
  assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), MNIST_TEST_COUNTS)
  head, _ = data.load("mnist", "test[:8000]", DATA_DIR)
  tail, tail_labels = data.load("mnist", "test[8000:]", DATA_DIR)
  np.testing.assert_array_equal(np.concatenate([head, tail]), images)
  pct, _ = data.load("mnist", "test[-20%:]", DATA_DIR)
  np.testing.assert_array_equal(pct, tail)
  assert len(tail_labels) == 2000


def test_fashion_mnist_from_debian_package():
  _require(FASHION_DIR)
  images, labels = data.load("fashion_mnist", "train")
  assert images.shape == (60000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)


def _write_idx(path, array, compress):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_idx_format(tmp_path, rng, compress):
  images = rng.integers(0, 256, (5, 28, 28))
  labels = np.array([3, 1, 4, 1, 5])
  suffix = ".gz" if compress else ""
  _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
  _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
  got, got_labels = data.load("fashion_mnist", "train", tmp_path, backend="files")
  np.testing.assert_array_equal(got[..., 0], images)
  np.testing.assert_array_equal(got_labels, labels)


def test_truncated_idx_file_is_rejected(tmp_path, rng):
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)), True)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5), True)
  raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
  with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(raw[:-10])
  with pytest.raises(ValueError, match="truncated"):
    data.load("mnist", "test", tmp_path)


def test_svhn_mat_format(tmp_path, rng):
  from scipy import io as sio
  x = rng.integers(0, 256, (32, 32, 3, 4)).astype(np.uint8)
  y = np.array([[10], [1], [9], [10]], np.uint8)
  sio.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
  images, labels = data.load("svhn_cropped", "test", tmp_path)
  np.testing.assert_array_equal(images, x.transpose(3, 0, 1, 2))
  np.testing.assert_array_equal(labels, [0, 1, 9, 0])


def test_tiny_imagenet_folder_format(tmp_path, rng):
  from PIL import Image
  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n02", "n01"]
  (root / "val" / "images").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids))
  colours = {"n01": (250, 0, 0), "n02": (0, 0, 250)}
  for w in wnids:
    (root / "train" / w / "images").mkdir(parents=True)
    for k in range(2):
      Image.new("RGB", (64, 64), colours[w]).save(root / "train" / w / "images" / f"{w}_{k}.JPEG")
  Image.new("L", (64, 64), 128).save(root / "val" / "images" / "val_0.JPEG")  # grayscale file
  (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\n")
  images, labels = data.load("tiny_imagenet", "train", tmp_path)
  assert images.shape == (4, 64, 64, 3)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])  # classes in sorted wnid order
  assert images[0, 10, 10, 0] > 200 and images[2, 10, 10, 2] > 200
  val, val_labels = data.load("tiny_imagenet", "validation", tmp_path)
  assert val.shape == (1, 64, 64, 3) and val_labels.tolist() == [1]


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1)),
                                        ("fashion_mnist", (28, 28, 1)), ("svhn_cropped", (32, 32, 3)),
                                        ("stl10", (96, 96, 3)),
                                        # TFDS's images of every size, resized and cropped
                                        ("imagenet", (224, 224, 3))])
def test_tfds_backend_with_mock_data(tmp_path, monkeypatch, name, shape):
  import tempfile

  import tensorflow_datasets as tfds
  # TFDS leaves an empty temp dir behind when it cannot reach GCS for metadata; keep it in tmp_path.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tfds_tmp"))
  (tmp_path / "tfds_tmp").mkdir()
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    images, labels = data.load(name, "train", backend="tfds", download=True)
    # With no local files under data_dir (nor Debian's copy, for fashion_mnist),
    # "auto" falls through to TFDS.
    auto_images = (None if name == "fashion_mnist"
                   else data.load(name, "train", tmp_path, download=True)[0])
  assert images.shape == (6,) + shape and images.dtype == np.uint8
  assert labels.dtype == np.int32 and labels.shape == (6,)
  assert 0 <= labels.min() <= labels.max() < data.dataset(name).num_classes
  if auto_images is not None:
    np.testing.assert_array_equal(auto_images, images)


def _fake_sources(root, name, rng):
  """The published files TFDS would download for `name`, with a few random images.

  Returns ({url basename: local path}, {split: (images, labels)}) where the
  paths are what TFDS's download manager hands the builder (MNIST's IDX files
  already extracted, CIFAR-10's archive already unpacked).
  """
  counts = {"train": 6, "test": 4, "extra": 3}
  if name in ("mnist", "fashion_mnist"):
    splits = {s: (rng.integers(0, 256, (counts[s], 28, 28, 1), dtype=np.uint8),
                  rng.integers(0, 10, counts[s]).astype(np.int32)) for s in ("train", "test")}
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
      images, labels = splits[split]
      for kind, array, magic in (("images-idx3", images[..., 0], 3), ("labels-idx1", labels, 1)):
        path = root / f"{prefix}-{kind}-ubyte"
        path.write_bytes(struct.pack(">HBB", 0, 8, magic) + struct.pack(f">{array.ndim}I", *array.shape)
                         + array.astype(np.uint8).tobytes())
        files[f"{prefix}-{kind}-ubyte.gz"] = path
    return files, splits
  if name == "cifar10":
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    splits = {}
    names = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    for split, files in names.items():
      parts = []
      for f in files:
        images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 2).astype(np.int32)
        records = [np.concatenate([[l], im.transpose(2, 0, 1).ravel()]).astype(np.uint8)
                   for l, im in zip(labels, images)]
        (folder / f).write_bytes(b"".join(r.tobytes() for r in records))
        parts.append((images, labels))
      splits[split] = tuple(np.concatenate(p) for p in zip(*parts))
    return {"cifar-10-binary.tar.gz": root}, splits
  splits, files = {}, {}
  for split in ("train", "test", "extra"):
    images = rng.integers(0, 256, (counts[split], 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, counts[split]).astype(np.int32)
    path = root / f"{split}_32x32.mat"
    sio.savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": np.where(labels == 0, 10, labels)[:, None]})
    files[path.name], splits[split] = path, (images, labels)
  return files, splits


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "svhn_cropped"])
def test_tfds_downloads_and_prepares_up_to_the_network(tmp_path, monkeypatch, name):
  # The whole TFDS path that an online user without local files takes with download=True:
  # builder, download_and_prepare (the dataset's own parsing code, ArrayRecord writing),
  # data_source reading; then download=False reading the prepared copy. Only the network is
  # replaced: the download manager hands the builder local copies of the published files,
  # holding a few random images.
  import tempfile

  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist as tfds_mnist

  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tfds_tmp"))
  (tmp_path / "tfds_tmp").mkdir()
  (tmp_path / "src").mkdir()
  files, splits = _fake_sources(tmp_path / "src", name, np.random.default_rng(0))
  # TFDS's MNIST builders read a fixed number of images from each file.
  monkeypatch.setattr(tfds_mnist, "_TRAIN_EXAMPLES", len(splits["train"][1]))
  monkeypatch.setattr(tfds_mnist, "_TEST_EXAMPLES", len(splits["test"][1]))
  fetched = []

  def local_copy(self, urls):
    one = lambda url: (fetched.append(url), str(files[url.rsplit("/", 1)[-1]]))[1]
    return {k: one(v) for k, v in urls.items()} if isinstance(urls, dict) else one(urls)

  monkeypatch.setattr(tfds.download.DownloadManager, "download", local_copy)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", local_copy)
  tfds_dir = tmp_path / "tfds"
  # Preparing writes every split; the second load reads the prepared copy.
  loaded = {split: data.load(name, split, tfds_dir, backend="tfds", download=True)
            for split in ("train", "test")}
  assert fetched, "the builder downloaded nothing"
  # Prepared: download=False reads it (auto: no local files there), touching nothing. Auto
  # searches Debian's Fashion-MNIST too and rightly prefers it where the package is installed
  # (as .ci/run does), so that dataset names the TFDS back-end.
  watched = (tfds_dir, tmp_path / "tfds_tmp")
  before, n_fetched = [_tree(folder) for folder in watched], len(fetched)
  backend = "tfds" if name == "fashion_mnist" else "auto"
  for split in ("train", "test"):
    images, labels = data.load(name, split, tfds_dir, backend=backend)
    np.testing.assert_array_equal(images, loaded[split][0])
    np.testing.assert_array_equal(labels, loaded[split][1])
    # TFDS stores a split in its own (hashed) order, not the files' order.
    expected = {im.tobytes(): label for im, label in zip(*splits[split])}
    assert images.dtype == np.uint8 and images.shape == splits[split][0].shape
    assert {im.tobytes(): label for im, label in zip(images, labels)} == expected
  assert len(fetched) == n_fetched and [_tree(folder) for folder in watched] == before


# A Python without TensorFlow: site-packages seen through a folder of links to every entry
# but tensorflow itself, then data.load through TFDS with the download replaced.
WITHOUT_TENSORFLOW = """
import os, sys, sysconfig
site, view = sysconfig.get_paths()["purelib"], sys.argv[1]
os.makedirs(view)
for entry in os.listdir(site):
  if entry != "tensorflow" and not entry.startswith(("tensorflow_cpu", "tensorflow-")):
    os.symlink(os.path.join(site, entry), os.path.join(view, entry))
sys.path = [view if p == site else p for p in sys.path]
import tensorflow_datasets as tfds
from menet_jax import data
tfds.download.DownloadManager.download_and_extract = lambda self, urls: {k: "/nowhere" for k in urls}
try:
  data.load("mnist", "test", sys.argv[2], backend="tfds", download=True)
except FileNotFoundError as e:
  print("ERROR:", e)
"""


def test_tfds_preparation_without_tensorflow_names_the_package(tmp_path):
  out = watchdog.run(["-c", WITHOUT_TENSORFLOW, tmp_path / "site", tmp_path / "tfds"], timeout=120,
                     what="TFDS without TensorFlow")
  message = out[out.index("ERROR:"):]
  assert "needs TensorFlow" in message and data.TFDS_EXTRA in message


def _tree(root):
  """{path: (size, mtime)} of `root` and everything under it: what a write would change."""
  from pathlib import Path
  root = Path(root)
  return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
          for p in [root, *root.rglob("*")]}


# The missing-data cases of the issue, offline: every load must fail at once, reaching for no
# network (a connection attempt raises and is counted) and writing nothing. argv[1]: JSON list
# of (name, split, data_dir or None); prints one JSON line per case.
MISSING_OFFLINE = """
import json, socket, sys, time
attempts = []
def no_network(*args, **kwargs):
  attempts.append(repr(args[:2]))
  raise OSError("network access from a test that must stay offline")
socket.getaddrinfo = no_network
socket.socket.connect = no_network
from menet_jax import data
for name, split, data_dir in json.loads(sys.argv[1]):
  start = time.monotonic()
  try:
    data.load(name, split, data_dir)
    message = None
  except FileNotFoundError as e:
    message = str(e)
  print("CASE", json.dumps(dict(seconds=time.monotonic() - start, message=message,
                                network=attempts[:])))
"""


def test_missing_dataset_fails_at_once_offline_and_writes_nothing(tmp_path, monkeypatch, rng):
  import json
  empty, mnist_test_only = tmp_path / "empty", tmp_path / "mnist_test_only"
  empty.mkdir()
  mnist_test_only.mkdir()
  _write_idx(mnist_test_only / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)), True)
  _write_idx(mnist_test_only / "t10k-labels-idx1-ubyte.gz", np.arange(5), True)
  cases = [("cifar10", "test", str(empty)), ("mnist", "train", str(mnist_test_only)),
           ("cifar10", "train", None)]
  # The offline copy: its MNIST folder holds the test set only (the README command).
  if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
    cases.append(("mnist", "train", str(DATA_DIR)))
  # data_dir=None reads TFDS's default folder, ~/tensorflow_datasets; TMPDIR catches the
  # temporary folders TFDS makes when it builds a dataset from code.
  home, tmp = tmp_path / "home", tmp_path / "tmp"
  home.mkdir()
  tmp.mkdir()
  for key, value in (("HOME", home), ("TMPDIR", tmp)):
    monkeypatch.setenv(key, str(value))
  for key in ("TFDS_DATA_DIR", "MENET_DATA_DIR"):
    monkeypatch.delenv(key, raising=False)
  # Read-only as in CI; root ignores the mode bits, so the snapshots are what prove it.
  watched = [empty, mnist_test_only, home, tmp] + [DATA_DIR] * (len(cases) == 4)
  for folder in (empty, mnist_test_only):
    folder.chmod(0o555)
  before = [_tree(folder) for folder in watched]
  try:
    out = watchdog.run(["-c", MISSING_OFFLINE, json.dumps(cases)], timeout=60,
                       what="loading missing datasets offline")
  finally:
    for folder in (empty, mnist_test_only):
      folder.chmod(0o755)
  results = [json.loads(line.removeprefix("CASE ")) for line in out.splitlines()
             if line.startswith("CASE ")]
  assert len(results) == len(cases), out
  for (name, split, data_dir), result in zip(cases, results):
    message = result["message"]
    assert message is not None, f"{name} {split} from {data_dir} loaded"
    assert result["seconds"] < 5, f"{name} {split}: {result['seconds']:.1f} s to fail"
    assert "\n" not in message and f"dataset {name!r} split {split!r} not found" in message
    tfds_root = data_dir or str(home / "tensorflow_datasets")
    assert f"No tensorflow-datasets copy is prepared in {tfds_root}/{name}" in message
    assert "download=True (command line: --download)" in message
    assert f"prepare it into {tfds_root} " in message
  assert results[-1]["network"] == []
  assert "cifar-10-batches-py" in results[0]["message"] and str(empty) in results[0]["message"]
  for mnist in [result for case, result in zip(cases, results) if case[0] == "mnist"]:
    assert "train-images-idx3-ubyte.gz" in mnist["message"]
    assert "holds only the 'test' split" in mnist["message"]
    assert "'test[:80%]' to train on and 'test[80%:]'" in mnist["message"]
  assert "No data_dir given" in results[2]["message"]
  assert [_tree(folder) for folder in watched] == before


def test_missing_dataset_says_where_it_looked(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    data.load("cifar10", "test", tmp_path, backend="files")
  message = str(err.value)
  assert str(tmp_path / "cifar-10-batches-py") in message and "test_batch" in message
  with pytest.raises(FileNotFoundError, match="not in the TFDS catalog"):
    data.load("tiny_imagenet", "train", tmp_path)


@pytest.mark.parametrize("args,kwargs,match", [
    (("mnist2", "train"), {}, "unknown dataset .mnist2.; known: cifar10"),
    ((None, "train"), {}, "dataset must be a name"),
    (("mnist", "validation"), {}, "split must be one of"),
    (("mnist", "train[:"), {}, "split must look like"),
    (("mnist", "test"), dict(backend="hub"), "backend must be one of"),
    (("mnist", 3), {}, "split must be a string"),
])
def test_bad_arguments(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.load(*args, **kwargs)


def test_slice_out_of_range():
  _require(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
  with pytest.raises(ValueError, match="selects no examples"):
    data.load("mnist", "test[9000:8000]", DATA_DIR)

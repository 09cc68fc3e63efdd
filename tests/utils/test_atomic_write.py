import os
import stat

import pytest

from menet_jax.utils.atomic_write import atomic_write


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
  target = tmp_path / "sub" / "out.bin"
  with pytest.raises(RuntimeError):
    with atomic_write(target) as tmp:
      tmp.write_bytes(b"partial")
      raise RuntimeError("killed")
  assert not target.exists() and list(target.parent.iterdir()) == []
  with atomic_write(target) as tmp:
    tmp.write_bytes(b"complete")
  assert target.read_bytes() == b"complete" and list(target.parent.iterdir()) == [target]
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask

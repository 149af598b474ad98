import os
import stat

import numpy as np
import pytest

from amlight.utils.atomic_write import atomic_write
from amlight.utils.visualize import save_png


def test_written_files_get_normal_permissions_and_no_leftovers(tmp_path):
    out = save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]

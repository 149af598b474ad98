"""One loader, one wording: a cut-off, empty, foreign or unsafe checkpoint is a one-line error that
names the file (issue 11, item 4)."""
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from amlight.checkpoints.files import CheckpointError, check_safetensors_file, load_torch_file, read_checkpoint


class NotAWeight:
    pass


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    torch.save({"amlight": {"format_version": 1, "stage": "generation"}, "w": torch.randn(64, 64)}, path)
    return path


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.99])
def test_a_cut_off_checkpoint_is_named_truncated(good, tmp_path, keep):
    data = good.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as error:
        load_torch_file(cut)
    assert _one_line(error).startswith(f"{cut} is truncated or not a PyTorch checkpoint (")


@pytest.mark.parametrize("content,why", [
    (b"", "the file is empty"),
    (b"hello world\n", "12 bytes of text, not a zip archive"),
    (bytes(range(200, 256)), "56 bytes of binary data, not a zip archive"),
])
def test_an_empty_or_foreign_file_says_what_it_is(tmp_path, content, why):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert _one_line(error).startswith(f"{path} is truncated or not a PyTorch checkpoint ({why}")


def test_a_zip_that_torch_did_not_write(tmp_path):
    path = tmp_path / "other.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match=r"other\.ckpt is truncated or not a PyTorch checkpoint \(a zip archive "
                                              r"without the data\.pkl record"):
        load_torch_file(path)


def test_pickled_objects_are_refused_not_run(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"thing": NotAWeight()}, path)
    with pytest.raises(CheckpointError) as error:
        load_torch_file(path)
    assert "objects.ckpt holds Python objects other than tensors and plain values" in _one_line(error)


def test_a_folder_or_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=f"--ckpt_path {tmp_path} is a directory"):
        load_torch_file(tmp_path, what="--ckpt_path")
    with pytest.raises(CheckpointError, match="checkpoint .*nope.ckpt does not exist"):
        load_torch_file(tmp_path / "nope.ckpt")


def test_safetensors_cut_off_or_foreign(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.randn(32, 32)}, path, metadata={"amlight_stage": "adapter"})
    assert check_safetensors_file(path) == {"amlight_stage": "adapter"}
    data = path.read_bytes()
    for name, content, why in [("short", data[:5], "shorter than the 8-byte header length"),
                               ("header", data[:40], "the header claims"),
                               ("tensors", data[:-10], "the tensors need"),
                               ("text", b"x" * 8 + b"{}" * 10, "the header claims")]:
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            check_safetensors_file(bad)
        assert _one_line(error).startswith(f"{bad} is truncated or not a safetensors file (") and why in str(error.value)


def test_every_loader_uses_it(good, tmp_path):
    """--stage1 / stage1_checkpoint (load_stage1) and --adapter (read_adapter_file) word it the same."""
    from amlight.checkpoints.stage1 import load_stage1
    from amlight.checkpoints.adapter_files import read_adapter_file

    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:100])
    for load in (load_stage1, read_adapter_file):
        with pytest.raises(CheckpointError, match=f"{cut} is truncated or not a PyTorch checkpoint"):
            load(cut)
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(b"\x10" + b"\x00" * 7 + b"{")
    with pytest.raises(CheckpointError, match=f"{cut_st} is truncated or not a safetensors file"):
        read_adapter_file(cut_st)


def test_load_stage1_reads_and_hashes_an_unchanged_file_once(tmp_path, monkeypatch):
    """Issue 17, item 7: a stage-1 checkpoint is gigabytes; a second load_stage1 of the same file must
    neither hash nor read it again, and the one read maps the file instead of loading all of it."""
    import os

    import amlight.checkpoints.files as files_module  # where the hashing lives
    import amlight.checkpoints.stage1 as stage1_module
    from helpers.tiny_models import save_stage1_checkpoint

    path = save_stage1_checkpoint(tmp_path / "s1.ckpt")
    hashed, loads = [], []
    file_sha256, torch_load = stage1_module.file_sha256, torch.load
    monkeypatch.setattr(files_module, "file_sha256", lambda p: hashed.append(p) or file_sha256(p))
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("mmap")) or torch_load(*a, **k))

    first = stage1_module.load_stage1(path)
    assert len(hashed) == 1 and loads == [True]
    assert stage1_module.load_stage1(str(path)) is first  # before the fix: read and hashed again
    assert len(hashed) == 1 and len(loads) == 1

    save_stage1_checkpoint(path, seed=1)  # rewritten in place: new weights, new hash, new model
    os.utime(path, ns=(first_mtime := path.stat().st_mtime_ns, first_mtime + 10**9))  # coarse clocks
    second = stage1_module.load_stage1(path)
    assert second is not first and second.sha256 != first.sha256 and len(hashed) == 2
    assert second.sha256 == file_sha256(path)
    a, b = (next(m.model.guidance.parameters()) for m in (first, second))  # seeded by torch, not the backbone
    assert not torch.equal(a, b)


def test_load_stage1_still_refuses_another_stage(tmp_path):
    from amlight.checkpoints.stage1 import load_stage1

    torch.save({"amlight": {"format_version": 1, "stage": "adapter"}, "state_dict": {}}, tmp_path / "s2.ckpt")
    for _ in range(2):  # the refusal is not cached away
        with pytest.raises(CheckpointError, match=r"is a stage-2 \(adapter\) checkpoint"):
            load_stage1(tmp_path / "s2.ckpt")


def test_mmap_loading_takes_the_legacy_format_too(tmp_path):
    torch.save({"amlight": {"stage": "generation"}, "w": torch.ones(3)}, tmp_path / "old.ckpt",
               _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_file(tmp_path / "old.ckpt", mmap=True)["w"], torch.ones(3))

"""`export-adapter`: normal file permissions, and a one-line error for an output it cannot write."""
import os
import stat

import pytest

from amlight.cli.main import main


@pytest.fixture(scope="module")
def stage2_ckpt(stage1_ckpt, tmp_path_factory):
    import lightning as L

    from amlight.stages import AdapterStage

    stage = AdapterStage(str(stage1_ckpt))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    path = tmp_path_factory.mktemp("export") / "stage2.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_exported_file_gets_normal_permissions(stage2_ckpt, tmp_path, capsys):
    out = tmp_path / "adapter.safetensors"
    assert main(["export-adapter", str(stage2_ckpt), str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # was 0600 (safetensors' own mode)
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_unwritable_output_is_one_line_error(stage2_ckpt, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    assert main(["export-adapter", str(stage2_ckpt), str(blocker / "adapter.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {blocker / 'adapter.safetensors'}: {blocker} is a file, not a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line_error(stage2_ckpt, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["export-adapter", str(stage2_ckpt), str(folder / "a.safetensors")]) == 1
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err


def test_export_adapter_usage_errors_return_a_code(capsys):
    assert main(["export-adapter"]) == 2
    assert "the following arguments are required" in capsys.readouterr().err

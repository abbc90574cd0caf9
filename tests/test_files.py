import os
import stat

import pytest
import torch
from torch import nn

from lrtrain.files import atomic_write_text, load_torch_file


@pytest.mark.parametrize("content,reason", [
    (b"", "the file is empty or cut short"),
    (bytes(range(256)) * 2, "not a PyTorch file, or a damaged one"),
    (b"plain text, not a tensor file\n" * 4, "not a PyTorch file, or a damaged one"),
])
def test_an_unreadable_file_is_named_with_its_reason_in_one_line(tmp_path, content, reason):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_torch_file(path, "checkpoint")
    text = str(info.value)
    assert text.startswith(f"cannot read checkpoint {path}: {reason}")
    assert "\n" not in text and "weights_only" not in text  # not torch's advice to unpickle code


def test_a_truncated_file_and_pickled_objects_get_their_own_reasons(tmp_path):
    torch.save({"w": torch.ones(100)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="a damaged PyTorch file: its zip archive is incomplete"):
        load_torch_file(tmp_path / "cut.pt", "compact model")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"holds pickled Python objects \(a torch.nn.modules.linear.Linear\), "
                                         r"not only tensors and plain data: lrtrain reads weights only \(torch.load"):
        load_torch_file(tmp_path / "module.pt", "compact model")
    (tmp_path / "module.pt").rename(tmp_path / "compact_module.pt")  # a run's pickled module: its compact.pt
    with pytest.raises(ValueError, match=r"weights only .*give lrtrain the run folder or its compact.pt$"):
        load_torch_file(tmp_path / "compact_module.pt", "compact model")
    with pytest.raises(ValueError, match="is a directory, not a checkpoint file"):
        load_torch_file(tmp_path, "checkpoint")
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "nope.pt", "checkpoint")
    assert torch.equal(load_torch_file(tmp_path / "whole.pt", "checkpoint")["w"], torch.ones(100))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umasks_permissions_and_a_replaced_file_keeps_its_own(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
        assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == mode
        os.chmod(tmp_path / "out.txt", 0o640)
        atomic_write_text(tmp_path / "out.txt", "y")
    finally:
        os.umask(before)
    assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and (tmp_path / "out.txt").read_text() == "y"


def test_every_cut_of_a_torch_file_reads_as_damaged(tmp_path):
    torch.save({"w": torch.randn(66_000)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    for i in range(1, 20):
        (tmp_path / "cut.pt").write_bytes(data[: len(data) * i // 20])
        with pytest.raises(ValueError, match="zip archive is incomplete|empty or cut short"):
            load_torch_file(tmp_path / "cut.pt", "checkpoint")


def test_writing_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"cannot write .*g.onnx: there is no folder {tmp_path / 'nodir'}$"):
        atomic_write_text(tmp_path / "nodir" / "g.onnx", "x")


def test_damaged_bytes_inside_a_whole_file_and_torchscript_and_exported_files_are_named(tmp_path):
    torch.save({"w": torch.randn(256, 256)}, tmp_path / "whole.pt")
    data = bytearray((tmp_path / "whole.pt").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # inside the tensor's bytes: torch.load takes them
        data[i] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    assert torch.load(tmp_path / "flipped.pt", weights_only=True)["w"].shape == (256, 256)
    with pytest.raises(ValueError, match=r"flipped.pt: damaged \(the checksum of its part '.*data/0' does not"):
        load_torch_file(tmp_path / "flipped.pt", "checkpoint")
    torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "model.ts"))
    with pytest.raises(ValueError, match=r"model.ts: a TorchScript file \(torch.jit.load reads it\), not a model"):
        load_torch_file(tmp_path / "model.ts", "compact model")
    torch.export.save(torch.export.export(nn.Linear(2, 2), (torch.ones(3, 2),)), tmp_path / "model.pt2")
    with pytest.raises(ValueError, match=r"model.pt2: an ExportedProgram file \(torch.export.load\(path\)"):
        load_torch_file(tmp_path / "model.pt2", "compact model")


def test_a_file_saved_without_checksums_loads(tmp_path):
    from torch.utils.serialization import config

    before = config.save.compute_crc32  # set and put back by hand: monkeypatch would delete the option
    config.save.compute_crc32 = False
    try:
        torch.save({"w": torch.arange(5.0)}, tmp_path / "plain.pt")
    finally:
        config.save.compute_crc32 = before
    assert torch.equal(load_torch_file(tmp_path / "plain.pt", "checkpoint")["w"], torch.arange(5.0))

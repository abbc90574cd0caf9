"""Device names are checked against this machine, the same way for training and for loading files."""

import pytest
import torch

from lrtrain.devices import resolve_device
from lrtrain.files import load_torch_file


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine as if it had one CUDA device (nothing here runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_gpu_index_this_machine_lacks_is_named(one_gpu, tmp_path):
    with pytest.raises(ValueError, match=r"^device 'cuda:3': this machine has 1 CUDA device\(s\)$"):
        resolve_device("cuda:3")
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"^map_location 'cuda:3': this machine has 1 CUDA device\(s\)$"):
        load_torch_file(path, "a checkpoint", map_location="cuda:3")


def test_cuda_without_an_index_is_the_processs_own_gpu(one_gpu):
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:0", local_rank=5) == torch.device("cuda", 0)  # an index given is kept


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'cuda': this machine has no CUDA device \(use cpu or auto\)$"):
        resolve_device("cuda")

"""``synctalk.device.torch_device``: device names from the command line, checked."""
from __future__ import annotations

import pytest
import torch

from synctalk.device import torch_device
from synctalk.errors import InputError


def test_cpu_and_bad_names():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match="not a torch device"):
        torch_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_a_clear_error():
    with pytest.raises(InputError, match="no CUDA device"):
        torch_device("cuda")
    with pytest.raises(InputError, match="no CUDA device"):
        torch_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_index_out_of_range():
    assert torch_device("cuda").type == "cuda"
    with pytest.raises(InputError, match="CUDA device"):
        torch_device(f"cuda:{torch.cuda.device_count()}")

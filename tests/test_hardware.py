"""Peaks that MFU is measured against: GPU names to dense datasheet figures, the CPU's measured
matmul peak (cached per machine), and MFU itself."""

import json

import pytest
import torch

from nanoseek import hardware
from nanoseek.hardware import device_peak_flops, gpu_name, mfu, peak_flops


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))  # never the user's ~/.cache


def test_mfu_is_model_flops_over_the_peak():
    assert mfu(1000.0, 6e9, 12e12) == pytest.approx(0.5)


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100 PCIe"), ("h800", "H800"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"),
    ("Tesla T4", "T4"), ("NVIDIA H100 NVL", "H100 NVL")])
def test_gpu_names(name, key):
    assert gpu_name(name) == key


def test_peaks_are_dense():
    # not the 1,979 sparse figure
    assert peak_flops("H800") == peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("H800", "fp8") == 1978.9e12 and peak_flops("H100 PCIe") == 756e12
    assert peak_flops("A100") == 312e12 and peak_flops("B200") == 2.25e15


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA GeForce RTX 4090 Laptop GPU",
                                  "Tesla V100-PCIE-32GB", "TPU v5e", ""])
def test_unknown_gpu_is_a_value_error_listing_known_ones(name):
    with pytest.raises(ValueError, match="unknown GPU.*known: H100"):
        gpu_name(name)


def test_device_peak_flops_on_cuda_reads_the_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops(torch.device("cuda", 0), "bf16") == 989.4e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Quantum Q1")
    with pytest.raises(ValueError, match="Quantum Q1"):  # the training loop: "no MFU"
        device_peak_flops(torch.device("cuda"), "bf16")
    with pytest.raises(ValueError, match="meta"):
        device_peak_flops(torch.device("meta"), "fp32")


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "cpu_peak_flops.json"
    first = device_peak_flops(torch.device("cpu"), "fp32")
    assert 1e8 < first < 1e15  # a real matmul rate
    (key, value), = json.loads(path.read_text()).items()
    assert value == first
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key

    def no_probe(*a, **k):
        raise AssertionError("probed again instead of reading the cache")

    monkeypatch.setattr(hardware, "_matmul_probe", no_probe)
    assert device_peak_flops("cpu", "fp32") == first  # read back from the file
    path.write_text(json.dumps({key: 123.0e9}))
    assert device_peak_flops("cpu", "fp32") == 123.0e9  # the file's value, whatever it is

    monkeypatch.setattr(hardware, "_matmul_probe", lambda dtype, budget_s=1.0: 7.0e9)
    path.write_text("{not json")  # corrupt: measured again and rewritten whole
    assert device_peak_flops("cpu", "fp32") == 7.0e9
    assert json.loads(path.read_text()) == {key: 7.0e9}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # another thread count: another entry
    assert device_peak_flops("cpu", "fp32") == 7.0e9 and len(json.loads(path.read_text())) == 2
    # a refresh keeps the higher of the cached and the new figure: a probe on a busy machine reads
    # low
    assert hardware.cpu_peak_flops("fp32", refresh=True) == 7.0e9
    monkeypatch.setattr(hardware, "_matmul_probe", lambda dtype, budget_s=1.0: 9.0e9)
    assert hardware.cpu_peak_flops("fp32", refresh=True) == 9.0e9
    assert device_peak_flops("cpu", "fp32") == 9.0e9
    with pytest.raises(ValueError):
        device_peak_flops("cpu", "fp8")

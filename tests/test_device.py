"""Device and precision choice (bertkit/device.py), and which kernels a tensor may reach off the CPU's fp32 path."""

import pytest
import torch
import torch.nn as nn

from bertkit import device as dev
from bertkit.config import BertConfig
from bertkit.cpu.dispatch import kernel
from bertkit.cpu.packed_linear import PackedLinear
from bertkit.errors import BertkitError
from bertkit.model import BertModel, jagged_offsets, jagged_qkv, uses_jagged_attention


def test_auto_and_cpu_resolve_to_the_cpu_here(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_a_gpu_is_a_one_line_error(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BertkitError, match=rf"--device {spec}: this torch sees no CUDA GPU") as e:
        dev.resolve_device(spec)
    assert "\n" not in str(e.value) and "--device cpu" in str(e.value)


def test_a_gpu_index_past_the_last_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BertkitError, match=r"--device cuda:7: there is no GPU 7; this machine has 1 \(cuda:0\)"):
        dev.resolve_device("cuda:7")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu0"])
def test_unknown_devices_are_refused(spec):
    with pytest.raises(BertkitError, match="not a device"):
        dev.resolve_device(spec)


def test_precision_names_and_gluonnlp_dtype_spellings():
    cpu = torch.device("cpu")
    bf16_flags = frozenset({"avx512f", "avx512_bf16"})
    assert dev.resolve_precision("float32", cpu) == "fp32"
    assert dev.resolve_precision(None, cpu) == "fp32"
    assert dev.resolve_precision("bfloat16", cpu, bf16_flags) == "bf16"
    assert dev.resolve_precision("bf16", cpu, frozenset({"amx_bf16"})) == "bf16"
    with pytest.raises(BertkitError, match="use fp32, bf16 or fp16"):
        dev.resolve_precision("int8", cpu)


def test_fp16_on_a_cpu_is_refused_with_the_reason():
    with pytest.raises(BertkitError, match="--precision float16 needs a CUDA GPU") as e:
        dev.resolve_precision("float16", torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_bf16_on_a_cpu_without_native_bf16_is_refused():
    with pytest.raises(BertkitError, match="no native bf16 instructions"):
        dev.resolve_precision("bf16", torch.device("cpu"), frozenset({"avx2", "avx512f"}))


def test_native_bf16_detection_reads_the_cpu_flags():
    assert dev.native_bf16_cpu(frozenset({"avx512_bf16"})) and dev.native_bf16_cpu(frozenset({"amx_bf16", "amx_tile"}))
    assert not dev.native_bf16_cpu(frozenset({"avx512f", "avx512_vnni"}))
    assert dev.native_bf16_cpu() == bool({"avx512_bf16", "amx_bf16"} & dev.cpu_flags())


def test_autocast_is_nothing_for_fp32_and_bf16_autocast_otherwise():
    cpu = torch.device("cpu")
    with dev.autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with dev.autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert dev.needs_grad_scaler("fp16") and not dev.needs_grad_scaler("bf16")


def test_to_device_moves_nested_batches():
    batch = {"ids": torch.ones(2), "rows": (torch.zeros(1), [torch.zeros(1)]), "name": "x"}
    moved = dev.to_device(batch, torch.device("meta"))
    assert moved["ids"].is_meta and moved["rows"][0].is_meta and moved["rows"][1][0].is_meta and moved["name"] == "x"


# ---- no CPU-only kernel for a tensor that is not a CPU float32 one --------------------------------
def test_cpu_only_paths_refuse_tensors_off_the_cpu():
    """The byte-mask dropout, the fused oneDNN / packed MKL linears and the native encoder check the
    tensor's device (and dtype) before they run (cpu/dispatch.py); a CUDA tensor is, like this meta one,
    not a CPU tensor."""
    x = torch.empty(4, 8, device="meta")
    lin = nn.Linear(8, 8, device="meta")
    with torch.no_grad():
        assert kernel("linear", x, lin) == "module"
        assert kernel("linear", x, PackedLinear(lin).eval()) == "module"
    assert kernel("dropout", x, p=0.1, training=True) == "torch"
    assert kernel("dropout", torch.empty(4, 8), p=0.1, training=True) == "byte_mask"  # the CPU fp32 case does take it
    assert kernel("dropout", torch.empty(4, 8, dtype=torch.bfloat16), p=0.1, training=True) == "torch"
    assert kernel("attention", x, p=0.1, training=True) == "sdpa"
    assert not uses_jagged_attention(torch.empty(2, 3))  # the CPU keeps its own attention paths
    assert not uses_jagged_attention(x)


def test_fp32_only_kernels_step_aside_under_cpu_autocast():
    """--precision bf16 on a CPU: autocast's bf16 ops run, not the float32 oneDNN / MKL / native paths."""
    x, lin = torch.randn(4, 8), nn.Linear(8, 8)
    packed = PackedLinear(lin).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernel("linear", x, lin) == "module" and kernel("linear", x, packed) == "module"
        assert packed(x).dtype == torch.bfloat16  # F.linear under autocast, not MKL's fp32 packed GEMM
    with torch.no_grad():
        assert packed(x).dtype == torch.float32


def test_bf16_autocast_runs_the_model_in_bf16_on_a_cpu():
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = BertModel(cfg).eval()
    ids = torch.randint(5, 50, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    with torch.no_grad():
        ref, _ = model(ids, valid_lengths=lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = model(ids, valid_lengths=lengths)
    mask = torch.arange(7)[None] < lengths[:, None]
    assert torch.allclose(low.float()[mask], ref[mask], atol=0.1, rtol=0.05)
    assert not torch.equal(low.float()[mask], ref[mask])  # the matrix multiplies really ran in bf16 (LayerNorm's output is fp32)


def test_jagged_qkv_keeps_each_rows_tokens_together():
    """The CUDA attention path's packing: row b of each nested tensor is exactly that row's real tokens."""
    heads, head_dim = 2, 4
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    offsets = jagged_offsets(mask)
    assert offsets.tolist() == [0, 3, 4, 8]
    n = int(mask.sum())
    qkv = torch.arange(n * 3 * heads * head_dim, dtype=torch.float32).view(n, 3 * heads * head_dim)
    q, k, v = jagged_qkv(qkv, offsets, heads, head_dim)
    per_token = qkv.view(n, 3, heads, head_dim)
    for b, (start, end) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        for which, t in enumerate((q, k, v)):
            row = t.unbind()[b]  # (heads, tokens, head_dim)
            assert torch.equal(row, per_token[start:end, which].transpose(0, 1))


def test_load_takes_a_device(tmp_path, monkeypatch):
    import bertkit

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    bertkit.save(BertModel(cfg), tmp_path / "m")
    assert dev.model_device(bertkit.load(tmp_path / "m", device="cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BertkitError, match="--device cuda: this torch sees no CUDA GPU"):
        bertkit.load(tmp_path / "m", device="cuda")

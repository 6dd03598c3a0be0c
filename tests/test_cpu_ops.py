"""bertkit.cpu as a whole: one activation table, the kernel choice and its settings, `optimize_for_cpu`'s
knobs, and global hooks only once a weight cache exists (importing the model registers none)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertkit
from bertkit import config
from bertkit.cpu import optimize_for_cpu
from bertkit.cpu import dispatch
from bertkit.cpu.dispatch import kernel, mkl_gemm_preferred, mkl_packing_available, onednn_available
from bertkit.cpu.native.encoder import MAX_TOKENS, load_kernels
from bertkit.cpu.ops import ACTIVATIONS
from bertkit.cpu.optimize import for_inference, inference_path
from bertkit.cpu.packed_linear import PACKED_ROWS, PackedLinear
from bertkit.cpu.weight_cache import ParametersWatch
from conftest import randomize_


def test_one_activation_table_for_every_configurable_activation():
    assert set(ACTIVATIONS) == set(config.ACTIVATIONS)
    x = torch.randn(50)
    for name, act in ACTIVATIONS.items():
        reference = {"gelu": torch.nn.functional.gelu(x), "relu": torch.relu(x)}.get(
            name, torch.nn.functional.gelu(x, approximate="tanh"))
        assert torch.equal(act.fn(x), reference), name


@pytest.mark.skipif(not (mkl_packing_available() and onednn_available()), reason="PyTorch built without MKL or oneDNN")
def test_a_linear_reaches_the_kernel_its_settings_and_the_rows_say():
    lin = torch.nn.Linear(8, 8)
    few, many = torch.randn(PACKED_ROWS, 8), torch.randn(PACKED_ROWS + 1, 8)
    packed = PackedLinear(lin).eval()
    with torch.no_grad():
        assert kernel("linear", few, lin) == "onednn"  # a plain Linear fuses at any row count
        assert kernel("linear", few, packed) == "packed" and kernel("linear", many, packed) == "onednn"
        assert kernel("linear", many, PackedLinear(lin, fuse=False)) == "module"
        assert kernel("linear", few, PackedLinear(lin, packed_rows=0, fuse=False)) == "module"
        assert kernel("linear", few, PackedLinear(lin).train()) == "module"  # packing is for eval mode
        assert kernel("linear", many, PackedLinear(lin).train()) == "onednn"  # fusing asks only for no gradients
        assert kernel("linear", few[:0], lin) == "module"  # no rows
        assert kernel("linear", few.view(16, -1, 8), packed) == "packed"  # rows of a 3-D input
    assert kernel("linear", few, packed) == "module"  # gradients on
    with pytest.raises(ValueError, match="no kernel choice"):
        kernel("conv", few)


@pytest.mark.skipif(not mkl_packing_available(), reason="PyTorch built without MKL")
def test_optimize_for_cpu_takes_its_knobs_as_parameters(minilm, sst2_dev):
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=minilm.tokenizer.vocab_size)
    model = randomize_(bertkit.BertForSequenceClassification(cfg, num_labels=3)).eval()
    tuned = optimize_for_cpu(copy.deepcopy(model), native=False, packed_rows=16, fuse=False)
    linears = [m for m in tuned.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, PackedLinear) and (m.packed_rows, m.fuse) == (16, False) for m in linears)
    assert tuned.bert.cpu_encoder is None
    batch = minilm.tokenizer(sst2_dev[:3])  # more than 16 rows: plain addmm, no fusion
    with torch.inference_mode():
        assert kernel("linear", torch.zeros(17, 128), tuned.bert.layers[0].ffn_in) == "module"
        assert (tuned(batch) - model(batch)).abs().max() < 1e-5
    optimize_for_cpu(tuned, native=False)  # again: the defaults (this CPU's) replace the settings
    default_rows = PACKED_ROWS if mkl_gemm_preferred() else 0
    assert all((getattr(m, "packed_rows", 0), getattr(m, "fuse", True)) == (default_rows, True)
               for m in tuned.modules() if isinstance(m, torch.nn.Linear))
    assert list(tuned.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", ""])
def test_layer_path_takes_mkl_only_on_intel(vendor, monkeypatch):
    """MKL picks kernels by vendor (slower GEMMs on AMD), oneDNN by instruction set: the layer path's
    defaults follow; the compiled encoder (its own GEMMs) is attached on every vendor."""
    monkeypatch.setattr(dispatch, "cpu_vendor", lambda: vendor)
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=64)
    model = optimize_for_cpu(bertkit.BertModel(cfg).eval(), native=False)
    rows = {getattr(m, "packed_rows", 0) for m in model.modules() if isinstance(m, torch.nn.Linear)}  # plain: 0
    assert rows == ({PACKED_ROWS} if vendor == "GenuineIntel" else {0})
    with torch.inference_mode():
        assert kernel("linear", torch.zeros(5, 128), model.layers[0].ffn_in) == (
            "packed" if vendor == "GenuineIntel" and mkl_packing_available() else "onednn" if onednn_available() else "module")
    if load_kernels() is not None:
        assert optimize_for_cpu(model).cpu_encoder is not None


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_the_path_for_each_shape_and_precision_is_the_documented_one(vendor, monkeypatch):
    """docs/benchmarks.md and `bertkit info`: on the CPU, fp32 and bf16 (with AVX512_BF16) run the compiled
    encoder for batch 1 and padded batches of 32 up to MAX_TOKENS real tokens, the layer path above it;
    int8 (with AVX512_VNNI) the same with its int8 kernels. The same on both vendors."""
    if load_kernels() is None:
        pytest.skip("the compiled encoder does not build here")
    monkeypatch.setattr(dispatch, "cpu_vendor", lambda: vendor)
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=64)
    model = for_inference(bertkit.BertModel(cfg).eval(), torch.device("cpu"))
    enc = model.cpu_encoder
    one, batch = torch.ones(1, 25, dtype=torch.long), torch.ones(32, 60, dtype=torch.long)
    lengths = [60] + [20] * 31
    big = torch.ones(16, 512, dtype=torch.long)
    with torch.inference_mode():
        assert kernel("encoder", one, enc, lengths=[25]) == "native"
        assert kernel("encoder", batch, enc, lengths=lengths) == "native"
        assert kernel("encoder", big, enc, lengths=[512] * 16) == "eager"  # 8,192 real tokens > MAX_TOKENS
        assert 512 * 16 > MAX_TOKENS >= 60 + 31 * 20
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = "native-bf16" if load_kernels().bf16_supported() else "eager"
            assert kernel("encoder", one, enc, lengths=[25]) == bf16
            assert kernel("encoder", batch, enc, lengths=lengths) == bf16
    assert "compiled encoder" in inference_path(cfg, "fp32")
    assert ("AVX512_BF16 GEMMs" in inference_path(cfg, "bf16")) == load_kernels().bf16_supported()
    int8 = for_inference(model, torch.device("cpu"), "fp32", "int8")
    vnni = load_kernels().int8_supported()
    with torch.inference_mode():
        assert kernel("encoder", one, int8.cpu_encoder, lengths=[25]) == ("native-int8" if vnni else "eager")
        assert kernel("encoder", big, int8.cpu_encoder, lengths=[512] * 16) == "eager"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kernel("encoder", one, int8.cpu_encoder, lengths=[25]) == "eager"  # int8 layers are not bf16
    assert inference_path(cfg, "fp32", "int8").startswith("int8: compiled encoder" if vnni else "int8: layer-by-layer")


def test_parameters_watch_sees_every_kind_of_change():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    watch = ParametersWatch(model)
    key = watch.key()
    assert watch.key() == key  # nothing changed
    torch.nn.Linear(3, 3)  # another module being built anywhere is not a change of this one
    assert watch.key() == key
    with torch.no_grad():
        model[1].weight.add_(1)
    assert watch.key() != key
    key = watch.key()
    model[0].weight.data = torch.randn(4, 4)  # new storage, same Parameter
    assert watch.key() != key
    key = watch.key()
    model[1].bias = torch.nn.Parameter(torch.zeros(4))  # a swapped Parameter
    assert watch.key() != key
    key = watch.key()
    model[0] = torch.nn.Linear(4, 4)  # a swapped module
    assert watch.key() != key
    key = watch.key()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    assert watch.key() != key


HOOKS_CHILD = """
import json, sys
import bertkit, bertkit.cpu
no_torch = "torch" not in sys.modules  # `import bertkit` runs before torch loads (cpu/threads.py)
import torch
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optimizer_hooks

def hooks():
    return {name: len(getattr(m, name)) for m in (module_hooks, optimizer_hooks) for name in dir(m)
            if name.startswith("_global") and name.endswith("hooks")}

start = hooks()
import bertkit.model, bertkit.cpu.ops, bertkit.cpu.optimize
cfg = bertkit.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
model = bertkit.BertModel(cfg).eval()
after_import = hooks()
with torch.inference_mode():
    model(torch.ones(1, 5, dtype=torch.long))  # the oneDNN weight cache (where oneDNN is built in)
after_forward = hooks()
print(json.dumps([no_torch, start, after_import, after_forward]))
"""


def test_importing_the_model_registers_no_global_hook():
    out = subprocess.run([sys.executable, "-c", HOOKS_CHILD], capture_output=True, text=True, check=True, timeout=300,
                         cwd=Path(__file__).parent)
    no_torch, start, after_import, after_forward = json.loads(out.stdout)
    assert no_torch
    assert after_import == start, "importing bertkit.model or bertkit.cpu registered a global PyTorch hook"
    if onednn_available():  # the first weight cache brings the optimizer-step and registration hooks
        grew = {name for name in start if after_forward[name] > start[name]}
        assert grew == {"_global_optimizer_post_hooks", "_global_parameter_registration_hooks",
                        "_global_module_registration_hooks"}

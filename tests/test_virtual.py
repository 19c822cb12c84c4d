"""Virtual CUDA devices agree with torch on real GPUs: op by op, then end to end on the installed stack.

There is no GPU here, so each op case states what torch does on GPUs and the rule in torch's source (or the
upstream thread) that says so; the test asserts the simulation does the same. The end-to-end tests run the
installed transformers and accelerate, and compare the verdict with the per-version outcome FACTS.md records.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import transformers
from accelerate import dispatch_model
from packaging.version import Version
from torch import nn

from diag.virtual import INVALID_ORDINAL_MESSAGE, CrossDevice, VirtualCuda, current_module_path

SAME = "Expected all tensors to be on the same device, but found at least two devices, {} and {}!"
INDICES = "indices should be either on cpu or on the same device as the indexed tensor ({})"
MASK = "expected self and mask to be on the same device, but got mask on {} and self on {}"


@pytest.fixture
def node() -> Iterator[VirtualCuda]:
    with VirtualCuda(4) as simulated:
        yield simulated


def gpu(index: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=f"cuda:{index}")


def cpu(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def mask(device: str = "cpu") -> torch.Tensor:
    return torch.tensor([True, False, True, False, False], device=device)


def _assign(target: torch.Tensor, index: object, value: object) -> torch.Tensor:
    target[index] = value  # type: ignore[index]
    return target


@dataclass(frozen=True)
class Case:
    """One op, what torch does with it on GPUs (the error text it raises, or None when it runs), and why."""

    id: str
    run: Callable[[], object]
    torch_raises: str | None
    rule: str


CASES = [
    Case("mm-cuda0-cuda1", lambda: torch.mm(gpu(0, 2, 3), gpu(1, 3, 2)), SAME.format("cuda:0", "cuda:1"),
         "non-elementwise ops check each tensor argument against the first (check_and_update_common_device)"),
    Case("matmul-cuda0-cuda1", lambda: torch.matmul(gpu(0, 2, 3), gpu(1, 3, 2)), SAME.format("cuda:0", "cuda:1"),
         "matmul folds to mm/bmm, checked in argument order"),
    Case("matmul-operator", lambda: gpu(0, 2, 3) @ gpu(1, 3, 2), SAME.format("cuda:0", "cuda:1"),
         "Tensor.__matmul__ is torch.matmul"),
    Case("bmm-cpu-cuda0", lambda: torch.bmm(cpu(1, 4, 1), gpu(0, 1, 1, 5)), SAME.format("cpu", "cuda:0"),
         "the rotary failure: `cpu and cuda:0! (... argument mat2 in method wrapper_CUDA_bmm)` (InternVL #774)"),
    Case("bmm-same-gpu", lambda: torch.bmm(gpu(2, 1, 4, 1), gpu(2, 1, 1, 5)), None, "all on one device"),
    Case("add-cuda0-cuda1", lambda: gpu(0, 3) + gpu(1, 3), SAME.format("cuda:0", "cuda:1"),
         "TensorIterator: the first non-CPU operand is the common device"),
    Case("add-cuda-scalar-cuda", lambda: gpu(0, 3) + gpu(1, 1), SAME.format("cuda:0", "cuda:1"),
         "a 1-element (not 0-dim) tensor is no scalar"),
    Case("mul-cpu-cuda0", lambda: cpu(3) * gpu(0, 3), SAME.format("cuda:0", "cpu"),
         "TensorIterator names the common (first non-CPU) device first, even when the CPU operand comes first"),
    Case("mul-cpu-scalar-cuda0", lambda: torch.tensor(2.0) * gpu(0, 3), None,
         "TensorIterator: a 0-dim CPU input rides along with CUDA tensors (allow_cpu_scalars)"),
    Case("mul-cuda1-scalar-cuda0", lambda: torch.tensor(2.0, device="cuda:1") * gpu(0, 3),
         SAME.format("cuda:1", "cuda:0"), "only CPU scalars are exempt"),
    Case("inplace-into-cpu-scalar", lambda: torch.tensor(2.0).mul_(torch.tensor(3.0, device="cuda:0")),
         SAME.format("cuda:0", "cpu"), "the exemption covers inputs, never the output"),
    Case("cat-cuda0-cuda1", lambda: torch.cat([gpu(0, 2), gpu(1, 2)]), SAME.format("cuda:0", "cuda:1"),
         "cat checks every tensor of the list"),
    Case("stack-cuda0-cuda1", lambda: torch.stack([gpu(0, 2), gpu(1, 2)]), SAME.format("cuda:0", "cuda:1"),
         "stack is cat of unsqueezed tensors"),
    Case("where-cuda0-cuda1", lambda: torch.where(gpu(0, 3) > 0, gpu(0, 3), gpu(1, 3)),
         SAME.format("cuda:0", "cuda:1"), "where is a TensorIterator op"),
    Case("where-cpu-scalar", lambda: torch.where(gpu(0, 3) > 0, gpu(0, 3), torch.tensor(0.0)), None,
         "a 0-dim CPU value of where is a scalar"),
    Case("embedding-cpu-ids", lambda: F.embedding(torch.tensor([1, 2]), gpu(0, 10, 4)), SAME.format("cuda:0", "cpu"),
         "embedding is index_select(weight, 0, ids): weight is checked first; real-world reports quote "
         "`index is on cpu, different from other tensors on cuda:0 (... wrapper_CUDA__index_select)`"),
    Case("embedding-same-gpu", lambda: F.embedding(torch.tensor([1, 2]).to("cuda:1"), gpu(1, 10, 4)), None,
         "ids moved to the weight's device"),
    Case("index_select-cpu-index", lambda: torch.index_select(gpu(0, 5, 3), 0, torch.tensor([0, 2])),
         SAME.format("cuda:0", "cpu"), "index_select has no CPU-index exemption (codegen argument check)"),
    Case("gather-cpu-index", lambda: torch.gather(gpu(0, 5, 3), 0, torch.zeros(1, 3, dtype=torch.long)),
         SAME.format("cuda:0", "cpu"), "gather has no CPU-index exemption either"),
    Case("getitem-cpu-index", lambda: gpu(0, 5, 3)[torch.tensor([0, 2])], None,
         "advanced indexing allows CPU index tensors (check_indices_on_cpu_or_selfdevice, pytorch PR #69607)"),
    Case("getitem-cpu-mask", lambda: gpu(0, 5, 3)[mask()], None, "a CPU boolean mask is a CPU index"),
    Case("getitem-cpu-int-scalar", lambda: gpu(0, 5, 3)[torch.tensor(2)], None,
         "a 0-dim integer index is read with item()"),
    Case("getitem-other-gpu-index", lambda: gpu(0, 5, 3)[torch.tensor([0, 2], device="cuda:1")],
         INDICES.format("cuda:0"), "index tensors must be on the CPU or on the indexed tensor's device"),
    Case("setitem-mask-value-other-gpu", lambda: _assign(gpu(0, 5, 3), mask(), gpu(1, 2, 3)),
         SAME.format("cuda:0", "cuda:1"),
         "x[mask] = y is index_put_: value meets self in a TensorIterator (InternVL #133 merge)"),
    Case("setitem-mask-value-same-gpu", lambda: _assign(gpu(0, 5, 3), mask(), gpu(0, 2, 3)), None,
         "index tensors are moved to self's device (make_info)"),
    Case("setitem-gpu-mask-value-same-gpu", lambda: _assign(gpu(0, 5, 3), mask("cuda:0"), gpu(0, 2, 3)), None,
         "mask and value on self's device"),
    Case("setitem-mask-value-cpu", lambda: _assign(gpu(0, 5, 3), mask(), cpu(2, 3)), SAME.format("cuda:0", "cpu"),
         "a non-scalar CPU value is no scalar"),
    Case("setitem-mask-0dim-value-other-gpu", lambda: _assign(gpu(0, 5, 3), mask(), torch.tensor(1.0, device="cuda:1")),
         None, "_index_put_impl_ moves a 0-dim value to self's device"),
    Case("setitem-slice-value-other-gpu", lambda: _assign(gpu(0, 5, 3), slice(0, 2), gpu(1, 2, 3)), None,
         "basic indexing copies into a view, and copy_ crosses devices"),
    Case("copy-across-gpus", lambda: gpu(0, 3).copy_(gpu(1, 3)), None, "copy_ is the cross-device copy"),
    Case("linear-weight-other-gpu", lambda: F.linear(gpu(0, 2, 3), gpu(1, 4, 3)), SAME.format("cuda:0", "cuda:1"),
         "linear without bias is mm(input, weight.t())"),
    Case("linear-bias-weight-other-gpu", lambda: F.linear(gpu(0, 2, 3), gpu(1, 4, 3), gpu(1, 4)),
         SAME.format("cuda:1", "cuda:0"), "linear with bias is addmm(bias, input, weight.t()): bias first"),
    Case("sdpa-value-other-gpu", lambda: F.scaled_dot_product_attention(gpu(0, 1, 2, 4, 8), gpu(0, 1, 2, 4, 8),
                                                                        gpu(1, 1, 2, 4, 8)),
         SAME.format("cuda:0", "cuda:1"), "attention kernels check q, k, v in order"),
    Case("masked_fill-0dim-value-other-gpu",
         lambda: gpu(0, 5).masked_fill(mask("cuda:0"), torch.tensor(1.0, device="cuda:1")), None,
         "masked_fill reads a 0-dim value with item() (masked_fill__cuda)"),
    Case("masked_fill-cpu-mask", lambda: gpu(0, 5).masked_fill(mask(), 1.0), MASK.format("cpu", "cuda:0"),
         "masked_fill__cuda: `expected self and mask to be on the same device`"),
    Case("expand_as-other-gpu", lambda: gpu(0, 1, 3).expand_as(gpu(1, 2, 3)), None,
         "expand_as reads only the other tensor's shape"),
    Case("shallow-copy-type-across-gpus", lambda: torch._has_compatible_shallow_copy_type(gpu(0, 1), gpu(1, 1)), None,
         "metadata: Module.to asks it before assigning param.data (DESIGN.md)"),
    Case("param-data-across-gpus", lambda: setattr(nn.Parameter(gpu(0, 2)), "data", gpu(1, 2)), None,
         "Module.to assigns param.data across devices"),
    Case("to-then-same-gpu", lambda: gpu(0, 3).to("cuda:1") + gpu(1, 3), None, ".to moves the data"),
    Case("cpu-result-with-gpu", lambda: gpu(0, 3).cpu() + gpu(0, 3), SAME.format("cuda:0", "cpu"),
         ".cpu() result is a CPU tensor"),
    Case("cpu-scalar-result-with-gpu", lambda: gpu(0, 3).sum().cpu() * gpu(0, 3), None,
         "a 0-dim .cpu() result is a CPU scalar"),
    Case("empty-cuda0-cuda1", lambda: torch.empty(0, device="cuda:0") + torch.empty(0, device="cuda:1"),
         SAME.format("cuda:0", "cuda:1"), "empty tensors keep their devices (DESIGN.md: never key by data_ptr)"),
    Case("factory-invalid-ordinal", lambda: torch.zeros(1, device="cuda:5"), INVALID_ORDINAL_MESSAGE,
         "4 visible GPUs: ordinal 5 does not exist (lmms-eval #31)"),
    Case("to-invalid-ordinal", lambda: cpu(1).to("cuda:4"), INVALID_ORDINAL_MESSAGE, "ordinal 4 of 4 GPUs"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_ops_agree_with_torch_on_gpus(node: VirtualCuda, case: Case) -> None:
    if case.torch_raises is None:
        case.run()
        assert node.last_error is None
        return
    with pytest.raises(RuntimeError) as raised:
        case.run()
    assert str(raised.value).startswith(case.torch_raises), case.rule


def test_a_same_device_violation_records_the_op_and_devices(node: VirtualCuda) -> None:
    with pytest.raises(RuntimeError):
        torch.matmul(gpu(0, 2, 3), gpu(1, 3, 2))
    assert node.last_error == CrossDevice("torch.matmul", ("cuda:0", "cuda:1"), None)


def test_fresh_outputs_take_the_op_device_and_views_keep_labels(node: VirtualCuda) -> None:
    x = gpu(1, 4, 6)
    views = [
        x.view(24),
        x[1:],
        x.t(),
        x.transpose(0, 1),
        x.unsqueeze(0),
        x[..., :2],
        x.reshape(2, 12),
        x.expand(2, 4, 6),
    ]
    assert {str(view.device) for view in views} == {"cuda:1"}
    assert (torch.tensor(2.0) * x).device == torch.device("cuda:1")
    assert torch.zeros_like(x).device == torch.device("cuda:1")
    assert x.new_zeros(3).device == torch.device("cuda:1")
    assert torch.arange(3, device="cuda:2").device == torch.device("cuda:2")
    assert torch.tensor([1, 2], device="cuda:3").device == torch.device("cuda:3")
    assert torch.full((2,), 7.0, device=torch.device("cuda", 2)).device == torch.device("cuda:2")
    assert torch.ones(2, device=1).device == torch.device("cuda:1")  # an int device is a CUDA ordinal
    assert x[torch.tensor([0, 2])].device == torch.device("cuda:1")
    # Fresh outputs inside structured results (tuple subclasses) and lists are labelled too.
    values, indices = torch.max(x, dim=1)
    assert (values.device, indices.device) == (torch.device("cuda:1"), torch.device("cuda:1"))
    assert {str(t.device) for t in torch.topk(x, 2)} == {"cuda:1"}
    assert {str(t.device) for t in x.contiguous().t().contiguous().split(2)} == {"cuda:1"}
    assert {str(t.device) for t in torch.broadcast_tensors(x, gpu(1, 6))} == {"cuda:1"}


def test_tensor_device_answers_the_virtual_device(node: VirtualCuda) -> None:
    x = gpu(1, 2)
    assert x.device == torch.device("cuda", 1)
    assert x.is_cuda and not x.is_cpu
    assert x.get_device() == 1
    assert x.type() == "torch.cuda.FloatTensor"
    assert "device='cuda:1'" in repr(x)
    assert node.device_of(x) == torch.device("cuda:1")
    assert cpu(2).device == torch.device("cpu") and cpu(2).get_device() == -1


def test_empty_tensors_on_two_gpus_keep_their_own_labels(node: VirtualCuda) -> None:
    first, second = torch.empty(0, device="cuda:0"), torch.empty(0, device="cuda:1")
    assert first.data_ptr() == second.data_ptr() == 0  # why data_ptr cannot be the key
    assert (first.device, second.device) == (torch.device("cuda:0"), torch.device("cuda:1"))
    assert torch.cat([first, torch.empty(0, device="cuda:0")]).device == torch.device("cuda:0")


def test_moves_copy_only_when_the_device_changes(node: VirtualCuda) -> None:
    x = gpu(1, 3)
    assert x.to("cuda:1") is x and x.cuda(1) is x and x.to(torch.float32) is x
    moved = x.to("cuda:0")
    assert moved.device == torch.device("cuda:0") and x.device == torch.device("cuda:1")
    assert torch.equal(moved.cpu(), x.cpu())
    assert x.to(0).device == torch.device("cuda:0")  # an int is a CUDA ordinal, as on the node
    assert x.to(torch.float16).device == torch.device("cuda:1")
    assert x.to(None, None, False) is x  # how Module.to calls it (DESIGN.md, "Simulation")
    torch.cuda.set_device(2)
    assert cpu(1).cuda().device == torch.device("cuda:2")
    assert torch.zeros(1, device="cuda").device == torch.device("cuda:2")


def test_host_conversions(node: VirtualCuda) -> None:
    x = torch.arange(6.0, device="cuda:3").reshape(2, 3)
    host = x.cpu()
    assert host.device == torch.device("cpu") and not host.is_cuda
    assert x.sum().item() == 15.0 and x.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert host.numpy().shape == (2, 3)
    with pytest.raises(TypeError, match=r"^can't convert cuda:3 device type tensor to numpy\. Use Tensor\.cpu\(\)"):
        x.numpy()


def test_module_to_moves_parameters_and_names_the_failing_module(node: VirtualCuda) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    node.track(model)
    model[0].to("cuda:0")
    model[2].to("cuda:1")
    assert isinstance(model[2].weight, nn.Parameter) and model[2].weight.device == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match=r"found at least two devices, cuda:1 and cuda:0!"):
        model(gpu(0, 5, 3))
    assert node.last_error == CrossDevice("torch.nn.functional.linear", ("cuda:1", "cuda:0"), "2")
    model[2].to("cuda:0")
    assert model(gpu(0, 5, 3)).device == torch.device("cuda:0")
    model.double()  # Module.to(dtype): Tensor.to(None, dtype, False) keeps each tensor's device
    assert model[2].bias.device == torch.device("cuda:0") and model[2].bias.dtype == torch.float64


def test_the_running_module_is_known_by_its_dotted_name(node: VirtualCuda) -> None:
    seen: list[str | None] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(current_module_path())
            return x

    model = nn.Sequential(nn.Sequential(nn.Identity(), Probe()))
    model(cpu(1))
    assert seen == ["0.1"]
    assert current_module_path() is None


def test_torch_cuda_answers_from_the_node() -> None:
    gib = 1024**3
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "Tesla P40"]
    with VirtualCuda(3, names=names, total_memory_bytes=[80 * gib, 80 * gib, 24 * gib]):
        assert torch.cuda.is_available() and torch.cuda.is_initialized()
        assert torch.cuda.device_count() == 3
        assert torch.cuda.get_device_name(2) == "Tesla P40"
        assert torch.cuda.get_device_properties(2).total_memory == 24 * gib
        assert torch.cuda.get_device_capability(0) == (9, 0)
        assert torch.cuda.mem_get_info(2) == (24 * gib, 24 * gib)
        assert torch.cuda.memory_allocated(1) == torch.cuda.memory_reserved(1) == 0
        torch.cuda.set_device(1)
        assert torch.cuda.current_device() == 1
        with torch.cuda.device(2):
            assert torch.cuda.current_device() == 2
        assert torch.cuda.current_device() == 1
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            end.record()
            end.synchronize()
            assert start.elapsed_time(end) == 0.0
        torch.cuda.current_stream().wait_stream(stream)
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0


def test_ordinals_beyond_the_node_raise_as_torch_does(node: VirtualCuda) -> None:
    with pytest.raises(RuntimeError, match=r"^CUDA error: invalid device ordinal"):
        torch.cuda.set_device(4)
    with pytest.raises(RuntimeError, match=r"^CUDA error: invalid device ordinal"):
        torch.cuda.mem_get_info(7)
    with pytest.raises(AssertionError, match=r"^Invalid device id$"):  # torch/cuda/__init__.py checks in Python
        torch.cuda.get_device_properties(4)


def test_autocast_cuda_works_as_on_a_gpu(node: VirtualCuda) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cuda"):
            assert torch.is_autocast_enabled("cuda")
        with torch.autocast(device_type="cuda", enabled=False):
            assert not torch.is_autocast_enabled("cuda")
        with torch.cuda.amp.autocast():
            pass
    assert not [w for w in caught if "Disabling autocast" in str(w.message)]


def test_accelerate_reads_int_map_values_as_cuda_ordinals(node: VirtualCuda) -> None:
    from accelerate.utils import modeling, set_module_tensor_to_device

    assert modeling.torch.device(1) == torch.device("cuda", 1)
    assert isinstance(torch.device("cpu"), modeling.torch.device)
    layer = nn.Linear(2, 2)
    set_module_tensor_to_device(layer, "weight", 1)
    assert layer.weight.device == torch.device("cuda:1")


def test_accelerate_sizes_the_node_it_sees() -> None:
    from accelerate.utils import get_max_memory

    with VirtualCuda(2, total_memory_bytes=[10 * 1024**3, 20 * 1024**3]):
        budget = get_max_memory()
    assert (budget[0], budget[1]) == (10 * 1024**3, 20 * 1024**3) and 2 not in budget


def test_everything_is_put_back_on_exit() -> None:
    from accelerate.utils import modeling

    hooks = dict(torch.nn.modules.module._global_forward_hooks)
    pre_hooks = dict(torch.nn.modules.module._global_forward_pre_hooks)
    cuda_functions = (torch.cuda.is_available, torch.cuda.device_count, torch.cuda.Stream)
    with VirtualCuda(2) as simulated:
        inside = gpu(1, 3)
        assert len(simulated._labels) > 0  # white-box: the labels the exit must drop
    assert inside.device == torch.device("cpu")
    assert len(simulated._labels) == 0
    assert (torch.cuda.is_available, torch.cuda.device_count, torch.cuda.Stream) == cuda_functions
    assert modeling.torch is torch
    assert dict(torch.nn.modules.module._global_forward_hooks) == hooks
    assert dict(torch.nn.modules.module._global_forward_pre_hooks) == pre_hooks


def test_labels_die_with_their_storage_and_live_ones_survive(node: VirtualCuda) -> None:
    kept = gpu(2, 3)
    for _ in range(10_000):
        gpu(1, 2).add_(1)
    assert len(node._labels) < 5_000  # white-box: dead storages were swept, not kept for the whole context
    assert kept.device == torch.device("cuda:2")


def test_contexts_do_not_nest(node: VirtualCuda) -> None:
    with pytest.raises(RuntimeError, match="do not nest"), VirtualCuda(2):
        pass


@pytest.mark.parametrize(
    ("count", "options"),
    [(0, {}), (2, {"names": ["A100"]}), (2, {"total_memory_bytes": [1, 2, 3]})],
    ids=["no-gpu", "names-short", "memory-long"],
)
def test_a_node_that_does_not_add_up_is_rejected(count: int, options: dict[str, list[object]]) -> None:
    with pytest.raises(ValueError):
        VirtualCuda(count, **options)  # type: ignore[arg-type]


# --- end to end, on the installed transformers and accelerate --------------------------------------------------
LLAMA = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # fmt: skip
FULL_MAP = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
            "model.layers.2": 2, "model.layers.3": 3, "model.norm": 3, "lm_head": 3}  # fmt: skip


def transformers_older_than(version: str) -> bool:
    """The per-version expectations live here, in the tests, never in diag/."""
    return Version(transformers.__version__) < Version(version)


def tiny_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()


def tiny_llava() -> transformers.LlavaForConditionalGeneration:
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=30,
        patch_size=6,
        projection_dim=32,
    )
    config = transformers.LlavaConfig(vision_config=vision, text_config=transformers.LlamaConfig(**LLAMA),
                                      image_token_index=100, image_seq_length=25, projector_hidden_act="gelu",
                                      vision_feature_select_strategy="default", vision_feature_layer=-2)  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(config).eval()


def spread_map(model: nn.Module, gpus: int) -> dict[str, int]:
    """A hand-written map in the installed transformers' module names: the language model's layers spread over
    the GPUs, its final norm and the head on the last one, everything else (vision tower, projector,
    embeddings, rotary embedding) on the first."""
    layers = next(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and "vision" not in name
    )
    parts = layers.split(".")
    ancestors = {".".join(parts[:depth]) for depth in range(len(parts))}
    device_map: dict[str, int] = {}
    for ancestor in sorted(ancestors, key=len):
        for child, _ in model.get_submodule(ancestor).named_children():
            name = f"{ancestor}.{child}" if ancestor else child
            if name not in ancestors and name != layers:
                device_map[name] = gpus - 1 if child in ("norm", "lm_head") else 0
    count = len(model.get_submodule(layers))
    device_map.update({f"{layers}.{index}": index * gpus // count for index in range(count)})
    return device_map


def run_virtually(model: nn.Module, device_map: dict[str, int], step: Callable[[nn.Module], object]) -> VirtualCuda:
    """Dispatch over 4 virtual GPUs and run `step`; the node's last_error says whether and where it failed."""
    with VirtualCuda(4, model=model) as simulated, torch.no_grad():
        dispatched = dispatch_model(model, device_map=device_map)
        try:
            step(dispatched)
        except RuntimeError as error:
            assert simulated.last_error is not None, error  # only the simulated same-device check may fail
    return simulated


def test_llama_over_four_gpus_runs_forward_and_generate_as_on_the_cpu() -> None:
    ids = torch.tensor([[1, 5, 7, 9]])
    reference = tiny_llama()
    with torch.no_grad():
        logits, generated = reference(ids).logits, reference.generate(ids, max_new_tokens=2, do_sample=False)
    model, seen = tiny_llama(), {}

    def step(dispatched: nn.Module) -> None:
        output = dispatched(ids.to("cuda:0")).logits
        seen["devices"] = (output.device, model.model.layers[2].mlp.up_proj.weight.device, model.lm_head.weight.device)
        seen["logits"] = output.cpu()
        seen["generated"] = dispatched.generate(ids.to("cuda:0"), max_new_tokens=2, do_sample=False).cpu()  # type: ignore[operator]

    assert spread_map(model, 4) == FULL_MAP
    simulated = run_virtually(model, FULL_MAP, step)
    assert simulated.last_error is None
    assert seen["devices"] == (torch.device("cuda:0"), torch.device("cuda:2"), torch.device("cuda:3"))
    assert torch.allclose(seen["logits"], logits)
    assert torch.equal(seen["generated"], generated)


def test_a_map_without_rotary_emb_gives_the_documented_verdict() -> None:
    # FACTS.md, "Which versions break": Llama's rotary forward multiplies the CPU-resident inv_freq with
    # position_ids as they are up to 4.50.3 (fails), and moves inv_freq to the input's device from 4.52 on.
    if not transformers_older_than("4.51") and transformers_older_than("4.52"):
        pytest.skip("FACTS.md records 4.43-4.50 and 4.52+ only")
    device_map = {name: gpu for name, gpu in FULL_MAP.items() if name != "model.rotary_emb"}
    simulated = run_virtually(
        tiny_llama(), device_map, lambda dispatched: dispatched(torch.tensor([[1, 5, 7]]).to("cuda:0"))
    )
    if transformers_older_than("4.51"):
        assert simulated.last_error is not None
        assert simulated.last_error.devices == ("cpu", "cuda:0")
        assert simulated.last_error.module == "model.rotary_emb"
    else:
        assert simulated.last_error is None


def test_head_on_the_last_gpu_in_an_inner_generate_gives_the_documented_verdict() -> None:
    # FACTS.md, "Generation" (InternVL #587): up to 4.45 the sampling step multiplies next_tokens (head's GPU)
    # by a mask on input_ids' device; InternVL-Chat calls language_model.generate, which no top-level hook wraps.
    class Chat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.language_model = tiny_llama()

    device_map = {f"language_model.{name}": gpu for name, gpu in FULL_MAP.items()}
    ids = torch.tensor([[1, 5, 7]])

    def step(chat: nn.Module) -> None:
        chat.language_model.generate(ids.to("cuda:0"), attention_mask=torch.ones_like(ids).to("cuda:0"),  # type: ignore[operator]
                                     max_new_tokens=2, do_sample=False)  # fmt: skip

    simulated = run_virtually(Chat().eval(), device_map, step)
    if transformers_older_than("4.46"):
        assert simulated.last_error is not None and simulated.last_error.devices == ("cuda:3", "cuda:0")
    else:
        assert simulated.last_error is None


def test_llava_over_four_gpus_runs_an_image_forward_and_generate_as_on_the_cpu() -> None:
    ids = torch.tensor([[1, *[100] * 25, 10, 11, 12]])
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 30, 30)
    reference = tiny_llava()
    with torch.no_grad():
        logits = reference(input_ids=ids, pixel_values=pixels).logits
        generated = reference.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=2, do_sample=False)
    model, seen = tiny_llava(), {}
    device_map = spread_map(model, 4)
    assert sorted(set(device_map.values())) == [0, 1, 2, 3]

    def step(dispatched: nn.Module) -> None:
        inputs = {"input_ids": ids.to("cuda:0"), "pixel_values": pixels.to("cuda:0")}
        seen["logits"] = dispatched(**inputs).logits.cpu()
        seen["generated"] = dispatched.generate(**inputs, max_new_tokens=2, do_sample=False).cpu()  # type: ignore[operator]

    simulated = run_virtually(model, device_map, step)
    assert simulated.last_error is None
    assert torch.allclose(seen["logits"], logits)
    assert torch.equal(seen["generated"], generated)

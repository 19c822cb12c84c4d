"""The fixtures the checks use: the node read once per session, the selection, one check handle per test."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from diag.checking import Check
from diag.roots import PlanView, node_root, on_gpus, on_gpus_like
from diag.session import DiagState, state_of
from diag.topology.records import Gpu, Node, Selection, Topology

if TYPE_CHECKING:
    import torch

    from diag.devicemap.cases import MapCase
    from diag.twins import ModelSpec

MODEL_CHECK = "see test_model_code_runs_here"
NVML_SKIP = "NVML did not answer, so this cannot be checked (see test_nvidia_driver_and_nvml_answer, ENV-001)"


@pytest.fixture(scope="session")
def diag_topology(request: pytest.FixtureRequest) -> Topology:
    """The node, the selection and the CUDA view, built once per session (once per run under xdist)."""
    return state_of(request.config).topology


@pytest.fixture(scope="session")
def diag_node(diag_topology: Topology) -> Node:
    return diag_topology.node


@pytest.fixture(scope="session")
def gpu_node(diag_node: Node) -> Node:
    """The node, for checks that need NVML's answers: they skip (not fail) where ENV-001 already failed."""
    if diag_node.nvml_error is not None:
        pytest.skip(NVML_SKIP)
    return diag_node


@pytest.fixture(scope="session")
def diag_selection(diag_topology: Topology) -> Selection:
    return diag_topology.selection


@pytest.fixture
def check(request: pytest.FixtureRequest) -> Check:
    """Fail with a fix code, warn, or record facts for this check's report entry.

    A check run per model case also records which config its verdict rests on (`data.model`): the checkpoint's
    own (`source` "hub-cache" or "config", with its path) or diag's preset standing in for it ("preset")."""
    check = Check(request.node.user_properties)
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    case = params.get("map_case") or params.get("model_case") or (params.get("twin_case") or (None,))[0]
    model = getattr(case, "model", None)
    if model is not None:
        check.record("model", model_data(model))
    return check


def model_data(model: ModelSpec) -> dict[str, object]:
    """`data.model` of a check: which config and whose code its verdict rests on (`code`: "installed", "twin",
    "remote" or "none"), with a note when it is diag's hand-written twin rather than the checkpoint's own code."""
    from diag.twins.remote import twin_note

    data: dict[str, object] = {"name": model.name, "family": model.family, "source": model.source,
                               "config_path": model.config_path, "code": model.code}  # fmt: skip
    if model.code_dir is not None:
        data["code_dir"] = model.code_dir
    if model.code == "twin":
        data["note"] = twin_note(model)
    return data


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`selected_gpu` runs a check once per selected GPU that exists, with ids like `gpu4`."""
    own = inspect.signature(metafunc.function).parameters  # `map_case` (a fixture) also reaches `twin_case`
    if "model_case" in own:  # one run per model (not per map): whether the model builds and runs here at all
        cases = list({(c.model.name if c.model else ""): c for c in state_of(metafunc.config).map_cases}.values())
        metafunc.parametrize("model_case", cases, ids=[c.model.name if c.model else "model" for c in cases])
    if "twin_case" in own:
        twins = twin_cases(state_of(metafunc.config))
        ids = [f"{c.model.name}-forced" if forced and c.model else c.id for c, forced in twins]
        metafunc.parametrize("twin_case", twins, ids=ids)
    elif "map_case" in own:
        cases = state_of(metafunc.config).map_cases
        metafunc.parametrize("map_case", cases, ids=[c.id for c in cases])
    if "selected_gpu" not in metafunc.fixturenames:
        return
    topology = state_of(metafunc.config).topology
    gpus: list[Gpu] = [topology.node.gpu(i) for i in topology.selection.nvml_indices]
    if gpus:
        metafunc.parametrize("selected_gpu", gpus, ids=[f"gpu{g.nvml_index}" for g in gpus])
    else:
        metafunc.parametrize("selected_gpu", [pytest.param(None, id="no-gpu")])


@pytest.fixture(scope="session")
def report_dir(request: pytest.FixtureRequest) -> Path:
    """Where corrected device maps are written: beside the report."""
    return state_of(request.config).report_path.parent


def twin_cases(state: DiagState) -> list[tuple[MapCase, bool]]:
    """The runs of the same-device check: without --model / a known pretrained=, the default twins forced across
    every selected GPU; otherwise the model with the eval's own map."""
    options = state.options
    usable = [c for c in state.map_cases if c.model is not None and c.source is not None]
    default = options.model is None and not (options.model_args and "pretrained=" in options.model_args)
    return [(c, default) for c in usable]


@pytest.fixture
def map_case(twin_case: tuple[MapCase, bool]) -> MapCase:
    """The (model, map) case of a same-device run (the device-map checks parametrize `map_case` directly)."""
    return twin_case[0]


@pytest.fixture
def case_topology(map_case: MapCase, diag_topology: Topology) -> Topology:
    """The GPUs a map case is judged on: its VLMEvalKit process's slice of the selection, else the selection."""
    return map_case.topology or diag_topology


@pytest.fixture
def plan_view(
    request: pytest.FixtureRequest, map_case: MapCase, case_topology: Topology, diag_topology: Topology
) -> PlanView:
    """What the memory and same-device checks plan on, after the root findings (diag.roots).

    No driver (ENV-001), a missing GPU (ENV-002), a busy GPU with too few free ones (ENV-006) or a launch that
    must change (LAYOUT-001/002): skip, naming the root. A busy GPU with enough free ones: plan on the free
    GPUs ENV-006's fix names, so every fix of the report names the same GPUs.
    """
    import os

    from diag.layout import layout_root

    root = node_root(diag_topology)
    if root is not None and root.skip:
        pytest.skip(root.skip)
    layout = layout_root(state_of(request.config).options, os.environ, len(diag_topology.cuda.devices))
    if layout is not None and layout.skip:
        pytest.skip(layout.skip)
    if root is None:
        return PlanView(case_topology)
    if map_case.topology is None:
        return PlanView(on_gpus(diag_topology, root.gpus), root)
    return PlanView(on_gpus_like(case_topology, diag_topology, root.gpus), root)


@pytest.fixture
def meta_model(request: pytest.FixtureRequest, map_case: MapCase) -> torch.nn.Module:
    """The full-width model of the case on the meta device, in the eval's dtype; built once per model."""
    from diag.twins.remote import ModelCodeError

    spec = map_case.model
    if spec is None:
        pytest.skip(f"{map_case.problem or 'no model'} ({MODEL_CHECK} says how to give diag the model, MODEL-003)")
    if spec.code == "none":
        pytest.skip(f"{spec.name}: diag may build nothing of it ({MODEL_CHECK} says why)")
    state = state_of(request.config)
    try:
        return state.meta_model(spec, model_dtype(state.options.model_args, spec))
    except ModelCodeError as exc:
        pytest.skip(f"{spec.name}: the checkpoint's own code does not build here ({exc}; MODEL-001, {MODEL_CHECK})")
    except Exception as exc:  # the config does not build: every check of this model says so (FWD-008)
        Check(request.node.user_properties).fail(
            "FWD-008", f"{spec.name}: the model does not build from its config: {type(exc).__name__}: {exc}",
            subject=spec.name)  # fmt: skip


def model_dtype(model_args: str | None, spec: ModelSpec) -> str:
    """bf16 unless --model-args says torch_dtype= / dtype= (`auto` means the checkpoint's own dtype)."""
    from diag.devicemap.model_args import ModelArgsError, parse_model_args

    try:
        args = parse_model_args(model_args or "")
    except ModelArgsError:
        args = {}
    value = str(args.get("torch_dtype", args.get("dtype", "bfloat16")))
    return spec.dtype if value == "auto" else value.removeprefix("torch.")

"""Is this node ready: driver up, the selected GPUs there, visible to torch in the expected order, free, healthy."""

from __future__ import annotations

import pytest

from diag.checking import Check
from diag.envfacts import busy_reasons, compare_view, describe_gpu, is_mixed, parse_cuda_version
from diag.roots import busy_finding, command_with_env, env_fix_commands, recheck_command
from diag.session import state_of
from diag.topology.records import Gpu, Node, Selection, Topology
from diag.topology.selection import PCI_BUS_ID, uuid_matches

pytestmark = pytest.mark.diag


def test_nvidia_driver_and_nvml_answer(diag_node: Node, check: Check) -> None:
    if diag_node.nvml_error is not None:
        error = diag_node.nvml_error
        check.fail("ENV-001", f"NVML did not answer: {error.reason}{f' ({error.detail})' if error.detail else ''}.")
    if not diag_node.gpus:
        check.fail("ENV-001", "NVML answered but lists no GPU on this node.")


def test_selected_gpus_exist(gpu_node: Node, diag_selection: Selection, check: Check) -> None:
    available = f"this node has GPUs 0-{len(gpu_node.gpus) - 1}" if gpu_node.gpus else "this node has no GPU"
    if not diag_selection.entries:
        check.fail("ENV-002", f"CUDA_VISIBLE_DEVICES is empty: no GPU is selected ({available}).",
                   commands=["nvidia-smi -L"])  # fmt: skip
    if diag_selection.missing:
        problems = []
        for token in diag_selection.missing:
            hits = [] if token.isdigit() else uuid_matches(gpu_node, token)
            if len(hits) > 1:
                problems.append(f"{token} matches GPUs {', '.join(str(i) for i, _ in hits)} (give more of the UUID)")
            else:
                problems.append(f"{token} is not on this node")
        check.fail(
            "ENV-002",
            f"{diag_selection.origin}: {'; '.join(problems)} ({available}); "
            "CUDA hides an entry it cannot use and every entry after it.",
            f"Select GPUs that `nvidia-smi -L` lists; {available}.",
            subject=", ".join(f"GPU {t}" if t.isdigit() else t for t in diag_selection.missing),
            commands=["nvidia-smi -L"],
        )
    indices = [e.nvml_index for e in diag_selection.found if e.nvml_index is not None]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        names = {i: [e.token for e in diag_selection.found if e.nvml_index == i] for i in twice}
        check.fail(
            "ENV-002",
            "; ".join(f"GPU {i} is selected twice ({', '.join(t)})" for i, t in names.items())
            + ": CUDA hides a repeated entry and every entry after it.",
            "Name each GPU once.",
            subject=", ".join(f"GPU {i}" for i in twice),
        )


TORCH_BUILD_COMMAND = "python -c 'import torch; print(torch.__version__, torch.version.cuda)'"


def test_torch_is_a_cuda_build_the_driver_supports(gpu_node: Node, diag_topology: Topology, check: Check) -> None:
    # A simulated or replayed node is judged by the torch it records (the capture's), never by this process's own.
    if gpu_node.source == "file" and not gpu_node.torch_recorded:
        pytest.skip("the capture does not record the eval environment's torch (torch_cuda and torch_version are "
                    "null): capture the node with `python -m diag topology` in the eval environment, or set "
                    "\"torch_cuda\" in the file")  # fmt: skip
    torch_cuda = parse_cuda_version(diag_topology.cuda.torch_cuda)
    driver_cuda = parse_cuda_version(gpu_node.cuda_driver_version)
    if torch_cuda is None and gpu_node.source == "file":
        check.fail("ENV-004", f"torch {gpu_node.torch_version} where the node was captured cannot use any GPU: it is "
                   "not a CUDA build (the capture's torch_cuda is null).", commands=[TORCH_BUILD_COMMAND])  # fmt: skip
    if torch_cuda is None:
        check.fail("ENV-004", f"torch cannot use any GPU: {diag_topology.cuda.error or 'it is a CPU-only build'}.",
                   commands=[TORCH_BUILD_COMMAND])  # fmt: skip
    if driver_cuda is None:
        pytest.skip("the driver did not say which CUDA version it supports")
    if torch_cuda[0] > driver_cuda[0]:
        check.fail(
            "ENV-004",
            f"torch was built for CUDA {diag_topology.cuda.torch_cuda}, but driver {gpu_node.driver_version} "
            f"supports CUDA {gpu_node.cuda_driver_version} at most.",
        )
    if torch_cuda > driver_cuda:
        check.warn(
            "ENV-004",
            f"torch's CUDA {diag_topology.cuda.torch_cuda} is newer than the driver's {gpu_node.cuda_driver_version}: "
            "it runs through CUDA minor-version compatibility, but kernels that need PTX JIT will fail.",
        )


def _env_commands(request: pytest.FixtureRequest, env: dict[str, str]) -> list[str]:
    eval_command = state_of(request.config).options.eval_command
    return env_fix_commands(eval_command, request.config.invocation_params.args, env)


def test_torch_sees_exactly_the_selected_gpus(
    gpu_node: Node, diag_topology: Topology, check: Check, request: pytest.FixtureRequest
) -> None:
    cuda = diag_topology.cuda
    # A replay whose capture does not record torch still shows which GPUs a CUDA torch would see.
    if cuda.torch_cuda is None and (gpu_node.source != "file" or gpu_node.torch_recorded):
        pytest.skip("torch is not a CUDA build (see test_torch_is_a_cuda_build_the_driver_supports, ENV-004)")
    if cuda.error and not cuda.devices:
        check.fail("ENV-003", f"the CUDA probe found no usable GPU: {cuda.error}.")
    mismatch = compare_view(diag_topology)
    problems = [f"{describe_gpu(g)} is selected but torch does not see it" for g in mismatch.unseen]
    problems += [f"torch also sees {extra}, which is not selected" for extra in mismatch.extra]
    if not problems:
        return
    selection = diag_topology.selection
    message = "; ".join(problems) + f" (CUDA_VISIBLE_DEVICES={selection.cuda_visible_devices!r})"
    wanted = ",".join(e.token for e in selection.found)
    env = {"CUDA_DEVICE_ORDER": PCI_BUS_ID, "CUDA_VISIBLE_DEVICES": wanted}
    by_index = any(e.token.isdigit() for e in selection.entries)
    if by_index and is_mixed(gpu_node) and selection.cuda_device_order != PCI_BUS_ID:
        # On a mixed node CUDA reads the indices in its fastest-first order, not nvidia-smi's (pytorch #86539).
        check.fail("ENV-005", message + f": CUDA_DEVICE_ORDER is {selection.cuda_device_order}, so CUDA reads "
                   "these indices in its fastest-first order, not nvidia-smi's.",
                   f"Start the eval with CUDA_DEVICE_ORDER={PCI_BUS_ID} CUDA_VISIBLE_DEVICES={wanted}.",
                   env=env, commands=_env_commands(request, env))  # fmt: skip
    check.fail(
        "ENV-003",
        message + ".",
        f"Start the eval with CUDA_DEVICE_ORDER={PCI_BUS_ID} CUDA_VISIBLE_DEVICES={wanted} in its environment, "
        "set before the process starts.",
        subject=", ".join(f"GPU {g.nvml_index}" for g in mismatch.unseen) or None,
        env=env,
        commands=_env_commands(request, env),
    )


def test_cuda_numbering_agrees_with_nvidia_smi(
    gpu_node: Node, diag_topology: Topology, check: Check, request: pytest.FixtureRequest
) -> None:
    order = diag_topology.selection.cuda_device_order
    mismatch = compare_view(diag_topology)
    if mismatch.order:
        first = mismatch.order[0]
        check.fail(
            "ENV-005",
            f"cuda:{first[0]} is {describe_gpu(first[1])}, not the selected {describe_gpu(first[2])}: "
            f"CUDA_DEVICE_ORDER is {order}, so CUDA numbers the fastest GPU first "
            f"({len(mismatch.order)} ordinals differ from nvidia-smi's order).",
            env={"CUDA_DEVICE_ORDER": PCI_BUS_ID},
            commands=_env_commands(request, {"CUDA_DEVICE_ORDER": PCI_BUS_ID}),
        )
    if is_mixed(gpu_node) and order != PCI_BUS_ID:
        check.warn(
            "ENV-005",
            f"this node mixes {', '.join(sorted({g.name for g in gpu_node.gpus}))} and CUDA_DEVICE_ORDER is {order}: "
            "indices in CUDA_VISIBLE_DEVICES and cuda:N follow CUDA's fastest-first order, not nvidia-smi's.",
        )


def test_selected_gpu_is_free(
    gpu_node: Node, diag_topology: Topology, selected_gpu: Gpu | None, check: Check, request: pytest.FixtureRequest
) -> None:
    if selected_gpu is None:
        pytest.skip("no selected GPU exists on this node (see test_selected_gpus_exist, ENV-002)")
    reasons = busy_reasons(selected_gpu)
    if not reasons:
        return
    finding = busy_finding(diag_topology)  # the same answer the memory and same-device checks re-plan on
    assert finding is not None
    ids = finding.ids
    env = {"CUDA_VISIBLE_DEVICES": ids, "CUDA_DEVICE_ORDER": PCI_BUS_ID} if finding.free else {}
    if finding.enough:
        summary = f"Use free GPUs: --gpus {ids} (or CUDA_VISIBLE_DEVICES={ids} CUDA_DEVICE_ORDER={PCI_BUS_ID})."
    elif finding.free:
        summary = (f"Only {len(finding.free)} GPUs are free ({ids}): wait for the other job or use fewer GPUs "
                   f"(--gpus {ids}).")  # fmt: skip
    else:
        summary = "No GPU on this node is free: wait for the other jobs to end, or use another node."
    commands = [f"nvidia-smi -i {selected_gpu.nvml_index}"]
    if finding.free:
        options = state_of(request.config).options
        if options.eval_command is not None:
            commands.insert(0, command_with_env(options.eval_command, env))
        else:
            commands.append(recheck_command(request.config.invocation_params.args, {"--gpus": ids}))
    check.fail(
        "ENV-006",
        f"{describe_gpu(selected_gpu)} is busy: {'; '.join(reasons)}.",
        summary,
        subject=f"GPU {selected_gpu.nvml_index}",
        commands=commands,
        env=env,
    )


def test_selected_gpu_is_not_in_mig_mode(diag_selection: Selection, selected_gpu: Gpu | None, check: Check) -> None:
    if selected_gpu is None:
        pytest.skip("no selected GPU exists on this node (see test_selected_gpus_exist, ENV-002)")
    if not selected_gpu.mig_mode:
        return
    tokens = [e.token for e in diag_selection.entries if e.nvml_index == selected_gpu.nvml_index]
    if any(t.upper().startswith("MIG-") for t in tokens):
        check.warn("ENV-007", f"{describe_gpu(selected_gpu)} is used through a MIG instance: a slice of the GPU, "
                   "with no peer access.")  # fmt: skip
        return
    check.fail(
        "ENV-007",
        f"{describe_gpu(selected_gpu)} is in MIG mode: CUDA cannot use it as a whole GPU.",
        f"Select another GPU, a MIG instance of it by its MIG- UUID (nvidia-smi -L), or ask the admin to disable "
        f"MIG: nvidia-smi -i {selected_gpu.nvml_index} -mig 0, then reset the GPU.",
        subject=f"GPU {selected_gpu.nvml_index}",
        commands=[f"nvidia-smi -i {selected_gpu.nvml_index} -L"],
    )


def test_selected_gpu_has_no_memory_repairs_pending(selected_gpu: Gpu | None, check: Check) -> None:
    if selected_gpu is None:
        pytest.skip("no selected GPU exists on this node (see test_selected_gpus_exist, ENV-002)")
    pending = [
        text
        for flag, text in (
            (selected_gpu.retired_pages_pending, "retired pages are pending"),
            (selected_gpu.remapped_rows_pending, "remapped rows are pending"),
            (selected_gpu.remapping_failed, "row remapping failed"),
        )
        if flag
    ]
    check.record("memory_repairs", {"retired_pages_pending": selected_gpu.retired_pages_pending,
                                    "remapped_rows_pending": selected_gpu.remapped_rows_pending,
                                    "remapping_failed": selected_gpu.remapping_failed})  # fmt: skip
    if pending:
        check.fail(
            "ENV-008",
            f"{describe_gpu(selected_gpu)}: {', '.join(pending)}; it needs a reset.",
            subject=f"GPU {selected_gpu.nvml_index}",
            commands=[f"nvidia-smi -q -d PAGE_RETIREMENT,ROW_REMAPPER -i {selected_gpu.nvml_index}"],
        )


MATRIX_GPUS = 16  # up to this many selected GPUs the report holds the whole peer-access matrix
LISTED_PAIRS = 8  # pairs without peer access named in the warning (and the report) before "and N more"


def test_selected_gpus_can_reach_their_peers(gpu_node: Node, diag_selection: Selection, check: Check) -> None:
    selected = list(diag_selection.nvml_indices)
    if len(selected) < 2:
        pytest.skip("fewer than two GPUs selected: no peer access needed")
    # Linear in the pairs the node reports, bounded in what is kept: a 1,000-GPU node is not a million-cell matrix.
    shown, count = gpu_node.pairs_without_p2p(selected, LISTED_PAIRS)
    data: dict[str, object] = {"nvml_indices": selected}
    if len(selected) <= MATRIX_GPUS:
        data["matrix"] = [[None if a == b else gpu_node.p2p_status(a, b) for b in selected] for a in selected]
    data.update(without_access=[list(p) for p in shown], without_access_count=count)
    check.record("p2p", data)
    if count:
        more = f" and {count - len(shown)} more pairs" if count > len(shown) else ""
        listed = ", ".join(f"{a}<->{b}" for a, b in shown) + more
        check.warn("ENV-009", f"no peer access between GPUs {listed}: tensors between them go through host memory.")

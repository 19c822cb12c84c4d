"""Where the node's records come from: a chain of providers, tried in order, each giving a node or None.

`--topology FILE` (replayed), `--simulate SPEC` (simulated), else the real node: NVML for the physical view
and a CUDA probe in a child process for the logical view, joined by UUID.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import metadata

from diag.topology.records import CudaView, Node, Topology
from diag.topology.selection import resolve_selection, simulated_cuda_view


def _torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _real_node() -> Node:
    from diag.topology.nvml import read_node

    return read_node()


def _real_cuda_view(env: Mapping[str, str]) -> CudaView:
    from diag.topology.probe import run_probe

    return run_probe(env)


def build_topology(
    *,
    env: Mapping[str, str],
    gpus: Sequence[str] | None = None,
    simulate: str | None = None,
    replay: Node | None = None,
    read_node: Callable[[], Node] = _real_node,
    probe: Callable[[Mapping[str, str]], CudaView] = _real_cuda_view,
) -> Topology:
    """The node, the selection and the process's CUDA view, each computed once for the session."""
    if replay is not None:
        node = replay
    elif simulate is not None:
        from diag.topology.simulated import simulated_node

        node = simulated_node(simulate)
    else:
        node = read_node()
    selection = resolve_selection(node, gpus, env)
    if node.simulated:
        cuda = simulated_cuda_view(node, env, _torch_version())
    elif node.nvml_error is not None:
        cuda = CudaView(_torch_version(), None, error="not probed: NVML did not answer")
    else:
        cuda = probe(env)
    return Topology(node=node, cuda=cuda, selection=selection)

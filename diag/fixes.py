"""The fix catalog: one stable code per cause, with the fix and the public threads it rests on.

Codes are grouped by area (ENV, MAP, SPLIT, FWD, MEM, LAYOUT, DIAG) and never renumbered; docs/fix-codes.md is
generated from this table (`python -m diag fix-codes`) and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FixCode:
    code: str
    title: str
    cause: str
    fix: str
    references: tuple[str, ...] = ()


_CATALOG: tuple[FixCode, ...] = (
    FixCode(
        "ENV-001",
        "The NVIDIA driver and NVML do not answer",
        "NVML could not be initialised: this is not a GPU node, the NVIDIA driver is not installed or not "
        "loaded, or the container was started without GPU access.",
        "Run on the GPU node (inside the container, start it with `--gpus all`), check `nvidia-smi`; "
        "or check anywhere with `--simulate 8xA100-80GB` or a captured `--topology FILE`.",
        ("NVML API reference: nvmlInit", "FACTS.md: CUDA and NVML"),
    ),
    FixCode(
        "ENV-002",
        "A selected GPU does not exist on this node",
        "An index or UUID in `--gpus` or CUDA_VISIBLE_DEVICES names no GPU that nvidia-smi lists. CUDA hides an "
        "invalid entry and every entry after it, and code that asks for the ordinal meets "
        "`CUDA error: invalid device ordinal`.",
        "Select GPUs that `nvidia-smi -L` lists, by index or by UUID.",
        ("EvolvingLMMs-Lab/lmms-eval#31", "FACTS.md: CUDA and NVML"),
    ),
    FixCode(
        "ENV-003",
        "torch does not see exactly the selected GPUs",
        "The process's CUDA view differs from the selection: CUDA_VISIBLE_DEVICES was set after CUDA "
        "initialised, was overridden by a launcher, or names an entry CUDA cannot use.",
        "Set CUDA_VISIBLE_DEVICES (and CUDA_DEVICE_ORDER=PCI_BUS_ID) before the process starts, "
        "not inside it after `import torch` has touched CUDA.",
        ("pytorch/pytorch#23544", "FACTS.md: CUDA and NVML"),
    ),
    FixCode(
        "ENV-004",
        "torch cannot use the GPUs with this driver",
        "torch is a CPU-only build, or it was built for a newer CUDA major version than the driver supports.",
        "Install a CUDA build of torch whose CUDA version the driver supports (nvidia-smi's `CUDA Version`), "
        "or update the driver.",
        ("PyTorch 'Get started' install matrix", "NVIDIA CUDA compatibility guide"),
    ),
    FixCode(
        "ENV-005",
        "CUDA numbers the GPUs differently from nvidia-smi",
        "CUDA_DEVICE_ORDER is not PCI_BUS_ID on a node of mixed GPUs, so CUDA numbers the fastest GPU first: "
        "`cuda:0` and the indices in CUDA_VISIBLE_DEVICES are not nvidia-smi's GPU 0.",
        "`export CUDA_DEVICE_ORDER=PCI_BUS_ID` before the eval starts (diag sets it for its own run).",
        ("pytorch/pytorch#86539", "FACTS.md: CUDA and NVML"),
    ),
    FixCode(
        "ENV-006",
        "A selected GPU is busy",
        "Another process already holds memory on a selected GPU; the model will not fit beside it "
        "and the eval dies loading weights, or both jobs slow down.",
        "Pick the free GPUs the fix names (`--gpus …` / CUDA_VISIBLE_DEVICES=…), or wait for the other job.",
        ("THUDM/CogVLM#462", "EvolvingLMMs-Lab/lmms-eval#191"),
    ),
    FixCode(
        "ENV-007",
        "MIG mode is on for a selected GPU",
        "A GPU in MIG mode is not usable as a whole device: CUDA shows only a MIG instance selected by its "
        "`MIG-…` UUID, with a fraction of the memory, and no peer access.",
        "Select another GPU, or ask the admin to disable MIG (`nvidia-smi -i N -mig 0`, then reset the GPU).",
        ("NVIDIA MIG user guide: CUDA device enumeration",),
    ),
    FixCode(
        "ENV-008",
        "A selected GPU has memory repairs pending",
        "Retired pages or remapped rows are pending (or row remapping failed): the GPU needs a reset before the "
        "repair takes effect and may raise uncorrectable ECC errors mid-run.",
        "Select another GPU and ask the admin to reset this one (`nvidia-smi -r -i N`) or drain the node.",
        ("NVIDIA GPU memory error management guide",),
    ),
    FixCode(
        "ENV-009",
        "Two selected GPUs cannot reach each other directly",
        "Peer-to-peer access between two selected GPUs is not available: a model split across them copies "
        "activations through host memory (slower), and NCCL falls back to slower paths.",
        "Prefer GPUs that `nvidia-smi topo -m` shows linked by NVLink or one PCIe switch; set "
        "NCCL_P2P_DISABLE=1 only if NCCL hangs on this pair.",
        ("nvidia-smi topo -m", "FACTS.md: CUDA and NVML"),
    ),
    FixCode(
        "ENV-010",
        "CUDA started before diag could apply --gpus",
        "Something imported torch and initialised CUDA before the diag plugin ran, and CUDA reads "
        "CUDA_VISIBLE_DEVICES only once, at initialisation.",
        "Set CUDA_VISIBLE_DEVICES in the environment instead of `--gpus`, or remove the conftest or plugin "
        "that touches CUDA at import (`-p no:NAME`).",
        ("pytorch/pytorch#23544",),
    ),
    FixCode(
        "DIAG-001",
        "diag itself failed in a check",
        "An unexpected exception inside a check or fixture: a defect in diag, not a finding about the node.",
        "Re-run with `-x --tb=long` and report it with the report file; the other checks' verdicts stand.",
    ),
    FixCode(
        "DIAG-002",
        "The run ended in an internal error",
        "pytest stopped on an internal error; the report holds the checks that finished before it.",
        "Re-run with `--tb=long` and report the traceback with the report file.",
    ),
    FixCode(
        "DIAG-003",
        "A checks module could not be collected",
        "A file under checks/ failed to import or a fixture could not be set up before any check ran.",
        "Read the collection error above; reinstall diag in the eval environment (`pip install -e .`).",
    ),
)

CATALOG: dict[str, FixCode] = {fix.code: fix for fix in _CATALOG}


def lookup(code: str) -> FixCode:
    """The catalog entry for a code; an unknown code is a defect in diag, so it raises KeyError."""
    return CATALOG[code]


def catalog_markdown() -> str:
    """The docs page listing every fix code."""
    lines = [
        "# Fix codes",
        "",
        "Every failed check in a diag report carries one of these codes (`checks[].code`) and a fix",
        "(`checks[].fix`). Codes are stable: scripts may match on them. This page is generated by",
        "`python -m diag fix-codes > docs/fix-codes.md`; a test keeps it in step with `diag/fixes.py`.",
        "",
    ]
    for fix in _CATALOG:
        lines += [f"## {fix.code}: {fix.title}", "", f"**Cause.** {fix.cause}", "", f"**Fix.** {fix.fix}", ""]
        if fix.references:
            lines += ["**References.** " + "; ".join(fix.references), ""]
    return "\n".join(lines)

"""The fix catalog: one stable code per cause, with the fix and the public threads it rests on.

Codes are grouped by area (ENV, MAP, SPLIT, FWD, MEM, LAYOUT, DIST, MODEL, KIT, BACKEND, DIAG) and never
renumbered; docs/fix-codes.md is generated from this table (`python -m diag fix-codes`) and a test keeps the two in
step. The newest areas: DIST (the collective check across ranks and nodes, and launcher timeouts), MODEL (whether
the installed transformers can load the model at all, and whose code a verdict rests on: the checkpoint's own or
diag's twin), KIT (the eval kit itself: which of its versions or classes decides, and whether its installed code
could be run) and BACKEND (the vLLM, SGLang and LMDeploy engines an eval starts: parallel sizes, heads, memory
fraction, start method, device entries).
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
        (
            "https://docs.nvidia.com/deploy/nvml-api/group__nvmlInitializationAndCleanup.html",
            "https://docs.nvidia.com/deploy/nvidia-smi/index.html",
        ),
    ),
    FixCode(
        "ENV-002",
        "A selected GPU does not exist on this node",
        "An index or UUID in `--gpus` or CUDA_VISIBLE_DEVICES names no GPU that nvidia-smi lists. CUDA hides an "
        "invalid entry and every entry after it, and code that asks for the ordinal meets "
        "`CUDA error: invalid device ordinal`.",
        "Select GPUs that `nvidia-smi -L` lists, by index or by UUID.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/31",
            "https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/environment-variables.html",
        ),
    ),
    FixCode(
        "ENV-003",
        "torch does not see exactly the selected GPUs",
        "The process's CUDA view differs from the selection: CUDA_VISIBLE_DEVICES was set after CUDA "
        "initialised, was overridden by a launcher, or names an entry CUDA cannot use.",
        "Set CUDA_VISIBLE_DEVICES (and CUDA_DEVICE_ORDER=PCI_BUS_ID) before the process starts, "
        "not inside it after `import torch` has touched CUDA.",
        (
            "https://github.com/pytorch/pytorch/issues/23544",
            "https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/environment-variables.html",
        ),
    ),
    FixCode(
        "ENV-004",
        "torch cannot use the GPUs with this driver",
        "torch is a CPU-only build, or it was built for a newer CUDA major version than the driver supports.",
        "Install a CUDA build of torch whose CUDA version the driver supports (nvidia-smi's `CUDA Version`), "
        "or update the driver.",
        ("https://pytorch.org/get-started/locally/", "https://docs.nvidia.com/deploy/cuda-compatibility/"),
    ),
    FixCode(
        "ENV-005",
        "CUDA numbers the GPUs differently from nvidia-smi",
        "CUDA_DEVICE_ORDER is not PCI_BUS_ID on a node of mixed GPUs, so CUDA numbers the fastest GPU first: "
        "`cuda:0` and the indices in CUDA_VISIBLE_DEVICES are not nvidia-smi's GPU 0.",
        "`export CUDA_DEVICE_ORDER=PCI_BUS_ID` before the eval starts (diag sets it for its own run).",
        (
            "https://github.com/pytorch/pytorch/issues/86539",
            "https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/environment-variables.html",
        ),
    ),
    FixCode(
        "ENV-006",
        "A selected GPU is busy",
        "Another process already holds memory on a selected GPU; the model will not fit beside it "
        "and the eval dies loading weights, or both jobs slow down.",
        "Pick the free GPUs the fix names (`--gpus`, or CUDA_VISIBLE_DEVICES with CUDA_DEVICE_ORDER=PCI_BUS_ID as "
        "in fix.env), or wait for the other job.",
        ("https://github.com/THUDM/CogVLM/issues/462", "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/191"),
    ),
    FixCode(
        "ENV-007",
        "MIG mode is on for a selected GPU",
        "A GPU in MIG mode is not usable as a whole device: CUDA shows only a MIG instance selected by its "
        "`MIG-…` UUID, with a fraction of the memory, and no peer access.",
        "Select another GPU, or ask the admin to disable MIG (`nvidia-smi -i N -mig 0`, then reset the GPU).",
        ("https://docs.nvidia.com/datacenter/tesla/mig-user-guide/",),
    ),
    FixCode(
        "ENV-008",
        "A selected GPU has memory repairs pending",
        "Retired pages or remapped rows are pending (or row remapping failed): the GPU needs a reset before the "
        "repair takes effect and may raise uncorrectable ECC errors mid-run.",
        "Select another GPU and ask the admin to reset this one (`nvidia-smi -r -i N`) or drain the node.",
        ("https://docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt/index.html",),
    ),
    FixCode(
        "ENV-009",
        "Two selected GPUs cannot reach each other directly",
        "Peer-to-peer access between two selected GPUs is not available: a model split across them copies "
        "activations through host memory (slower), and NCCL falls back to slower paths.",
        "Prefer GPUs that `nvidia-smi topo -m` shows linked by NVLink or one PCIe switch; set "
        "NCCL_P2P_DISABLE=1 only if NCCL hangs on this pair.",
        (
            "https://docs.nvidia.com/deploy/nvidia-smi/index.html",
            "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html",
        ),
    ),
    FixCode(
        "ENV-010",
        "CUDA started before diag could apply --gpus",
        "Something imported torch and initialised CUDA before the diag plugin ran, and CUDA reads "
        "CUDA_VISIBLE_DEVICES only once, at initialisation.",
        "Set CUDA_VISIBLE_DEVICES in the environment instead of `--gpus`, or remove the conftest or plugin "
        "that touches CUDA at import (`-p no:NAME`).",
        ("https://github.com/pytorch/pytorch/issues/23544",),
    ),
    FixCode(
        "MAP-001",
        "transformers rejects the device_map string",
        "`from_pretrained` accepts 'auto', 'balanced', 'balanced_low_0', 'sequential' or a device name; anything "
        "else, the empty value `device_map=` included, raises `ValueError: When passing device_map as a string, "
        "the value needs to be a device name (e.g. cpu, cuda:0) or 'auto', 'balanced', 'balanced_low_0', "
        "'sequential' but found {value}.` The lmms-eval classes llava_hf, idefics2, llama_vision and aria "
        "default to the empty value.",
        "Pass `device_map=auto` in --model_args for several GPUs, or `device_map=cuda:0` for one GPU.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/33",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/438",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/19",
            "https://huggingface.co/docs/transformers/main_classes/model#transformers.PreTrainedModel.from_pretrained",
        ),
    ),
    FixCode(
        "MAP-002",
        "transformers rejects a negative device_map",
        "A negative int raises `You can't pass device_map as a negative int. If you want to put the model on the "
        "cpu, pass device_map = 'cpu'`.",
        "Pass a GPU ordinal the process can see (0 for the first), `cpu`, or `auto`.",
        ("https://huggingface.co/docs/transformers/main_classes/model#transformers.PreTrainedModel.from_pretrained",),
    ),
    FixCode(
        "MAP-003",
        "The device map names a GPU this process cannot see",
        "An int, `cuda:N` or map value is at or beyond the number of GPUs the process sees; CUDA raises "
        "`CUDA error: invalid device ordinal`. transformers 5 turns `cuda` into `cuda:{LOCAL_RANK}`, which a "
        "per-process GPU slice may not have.",
        "Use ordinals 0..N-1 of the visible GPUs (cuda:0 is the first GPU in CUDA_VISIBLE_DEVICES).",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/31",
            "https://huggingface.co/docs/transformers/main_classes/model#transformers.PreTrainedModel.from_pretrained",
        ),
    ),
    FixCode(
        "MAP-004",
        "The device map uses nvidia-smi numbers under CUDA_VISIBLE_DEVICES",
        "With CUDA_VISIBLE_DEVICES=4,5,6,7 the process numbers those GPUs cuda:0..3; a map that says 4..7 "
        "addresses GPUs that do not exist in the process (`invalid device ordinal`).",
        "Use the corrected map diag wrote (fix.device_map_file): each physical number replaced by its cuda ordinal.",
        ("https://github.com/open-compass/VLMEvalKit/issues/674", "https://github.com/pytorch/pytorch/issues/23544"),
    ),
    FixCode(
        "MAP-005",
        "The device map names modules the model does not have",
        "A key matches no module of the model as the installed transformers names it (module names changed in "
        "transformers 4.52 and 5 for LLaVA-style models); accelerate ignores it and the module it meant gets no "
        "device or the wrong one.",
        "Use the corrected map diag wrote, with each key renamed to the closest module name of this model.",
        (
            "https://github.com/huggingface/transformers/releases",
            "https://github.com/huggingface/transformers/releases/tag/v5.0.0",
        ),
    ),
    FixCode(
        "MAP-006",
        "The device map leaves parameters without a device",
        "accelerate's check_device_map finds parameters no key covers: "
        "`The device_map provided does not give any device for the following parameters: …`.",
        "Use the corrected map diag wrote, which puts each uncovered module on the first GPU of the map.",
        ("https://github.com/huggingface/accelerate/blob/main/src/accelerate/utils/modeling.py",),
    ),
    FixCode(
        "MAP-007",
        "A module that holds only buffers is left out of the map and stays on the CPU",
        "The model-level `rotary_emb` holds only the non-persistent `inv_freq` buffer; a hand-written map that "
        "omits it leaves it on the CPU. transformers 4.43-4.50 (Llama; 4.45-4.50 for Qwen2) then fail in the "
        "first forward with `Expected all tensors to be on the same device, but found at least two devices, "
        "cpu and cuda:0!`; 4.52 and later copy it to the GPU each step.",
        "Add the module to the map on the embeddings' GPU, as InternVL's split_model does "
        "(`device_map['language_model.model.rotary_emb'] = 0`).",
        (
            "https://github.com/OpenGVLab/InternVL/issues/774",
            "https://github.com/OpenGVLab/InternVL/issues/688",
            "https://github.com/OpenGVLab/InternVL/issues/789",
            "https://github.com/open-compass/VLMEvalKit/issues/723",
            "https://github.com/huggingface/transformers/issues/35583",
        ),
    ),
    FixCode(
        "MAP-008",
        "A device map value is not a device",
        "Map values must be a GPU ordinal (int or `cuda:N`), `cpu` or `disk`.",
        "Replace each named value with a GPU ordinal the process can see, `cpu` or `disk`.",
        ("https://github.com/huggingface/accelerate/blob/main/src/accelerate/big_modeling.py",),
    ),
    FixCode(
        "MAP-009",
        "lmms-eval cannot parse --model_args",
        "lmms-eval splits --model_args on commas and each item on the first `=`; an item without `=` raises "
        "`ValueError: not enough values to unpack (expected 2, got 1)` before the model is built.",
        "Write every item as key=value (`device_map=auto`), with no bare keys and no trailing comma.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/pull/915",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/utils.py",
        ),
    ),
    FixCode(
        "MAP-010",
        "`batch_size` inside lmms-eval's --model_args",
        "lmms-eval builds the model class with `create_from_arg_string`, which passes `batch_size` from its own "
        "`--batch_size` option (default 1) beside the --model_args items, so `batch_size=` in --model_args raises "
        "`TypeError: ... got multiple values for keyword argument 'batch_size'` in every model class, before the "
        "model loads.",
        "Remove batch_size from --model_args and give it as lmms-eval's own option, `--batch_size N`.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/api/model.py",),
    ),
    FixCode(
        "SPLIT-001",
        "AUTO_SPLIT builds a map for GPUs this process cannot see",
        "VLMEvalKit's InternVL split (AUTO_SPLIT=1) between Dec 9 and Dec 30 2024 assumed 8 GPUs starting at 0: "
        "under CUDA_VISIBLE_DEVICES=4,5,6,7 it addresses cuda:4..7 in a process that sees cuda:0..3.",
        "Update VLMEvalKit (the split is capped by device_count // LOCAL_WORLD_SIZE since Dec 30 2024), or set "
        "GPUS_PER_PROCESS to the GPUs each process sees.",
        (
            "https://github.com/open-compass/VLMEvalKit/issues/674",
            "https://github.com/open-compass/VLMEvalKit/pull/566",
        ),
    ),
    FixCode(
        "SPLIT-002",
        "VLMEvalKit cannot parse GPU UUIDs in CUDA_VISIBLE_DEVICES",
        "VLMEvalKit's run.py reads CUDA_VISIBLE_DEVICES entries with int(), which raises `ValueError: invalid "
        "literal for int() with base 10: 'GPU-…'` for UUID entries.",
        "Select the GPUs by index for VLMEvalKit (`CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=4,5,6,7`).",
        ("https://github.com/open-compass/VLMEvalKit/blob/main/run.py",),
    ),
    FixCode(
        "FWD-001",
        "A module left out of the map stays on the CPU and meets GPU tensors",
        "A module that holds only buffers (the model-level `rotary_emb`) was left out of a hand-written map, so "
        "it stayed on the CPU; on transformers 4.43-4.50 the first forward fails with `Expected all tensors to "
        "be on the same device, but found at least two devices, cpu and cuda:0!` in the rotary matmul.",
        "Add the module to the map on the embeddings' GPU (diag wrote the map and re-ran the twin with it).",
        (
            "https://github.com/OpenGVLab/InternVL/issues/774",
            "https://github.com/OpenGVLab/InternVL/issues/688",
            "https://github.com/OpenGVLab/InternVL/issues/789",
            "https://github.com/open-compass/VLMEvalKit/issues/723",
        ),
    ),
    FixCode(
        "FWD-002",
        "The head returns logits on another GPU than the embeddings during generate",
        "With the head on the last GPU (device_map=auto), transformers up to 4.45 multiplies the next tokens "
        "(on the head's GPU) by a mask made on the inputs' GPU; InternVL-Chat calls `language_model.generate` on "
        "the inner model, so its logits are not moved back: `… found at least two devices, cuda:3 and cuda:0!`.",
        "Pin the head, the final norm and the last decoder layer to the embeddings' GPU, as InternVL's "
        "split_model does (diag wrote the map and re-ran the twin with it); or use transformers 4.46 or newer.",
        (
            "https://github.com/OpenGVLab/InternVL/issues/587",
            "https://github.com/huggingface/transformers/releases/tag/v4.46.0",
        ),
    ),
    FixCode(
        "FWD-003",
        "The image embeddings are merged into the text embeddings across GPUs",
        "The vision tower and projector sit on another GPU than the text embeddings, and the masked assignment "
        "`input_embeds[selected] = vit_embeds` mixes the two GPUs.",
        "Keep the vision model, the projector (`mlp1`) and the embeddings on one GPU, or use the InternVL code "
        "that moves the image embeddings first (commit 07ef6e9).",
        ("https://github.com/OpenGVLab/InternVL/issues/133", "https://github.com/OpenGVLab/InternVL/commit/07ef6e9"),
    ),
    FixCode(
        "FWD-004",
        "A block that must not be split is split across GPUs",
        "The planner split a block whose own forward adds tensors from its parts (CogVLM's vision TransformerLayer: "
        "`output = mlp_input + mlp_output` with `cuda:5 and cuda:6!`) because its class is not in "
        "no_split_module_classes.",
        'Add the class to no_split_module_classes and plan again (CogVLM: ["CogVLMDecoderLayer", '
        '"TransformerLayer"]); diag re-planned and re-ran the twin with it.',
        (
            "https://github.com/THUDM/CogVLM/issues/122",
            "https://github.com/THUDM/CogVLM/issues/256",
            "https://github.com/THUDM/CogVLM2/issues/32",
            "https://github.com/open-compass/VLMEvalKit/issues/411",
        ),
    ),
    FixCode(
        "FWD-005",
        "The inputs are on another device than the model needs",
        "A tensor on the CPU met the dispatched model on a GPU: the inputs were not moved to the GPU of the first "
        "module, or a module of the model was left on the CPU.",
        "Move the inputs to the model's first GPU (`.to(model.device)` / `.cuda()`), and cover every module in "
        "the map.",
        ("https://huggingface.co/docs/accelerate/usage_guides/big_modeling",),
    ),
    FixCode(
        "FWD-006",
        "The run addresses a GPU this process cannot see",
        "A map value or an input device is at or beyond the number of visible GPUs: `CUDA error: invalid device "
        "ordinal`.",
        "Use ordinals 0..N-1 of the visible GPUs.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/31", "https://github.com/THUDM/CogVLM/issues/33"),
    ),
    FixCode(
        "FWD-007",
        "The twin failed with this map for another reason",
        "The forward or generate of the twin failed with an error diag cannot attribute to one of the known "
        "causes; the message is the error itself.",
        "Read the error and the module named; report it to diag with the report file if the map is one the eval "
        "kits build.",
    ),
    FixCode(
        "FWD-008",
        "diag could not build a twin of this model",
        "The model's config (a local folder or config.json) does not build with the installed transformers or "
        "diag's twin classes, so the same-device run could not start; the message is the error.",
        "Check that the config is the checkpoint's own and that the installed transformers supports its "
        "architecture (the eval will need the same); if it is, report it to diag with the report file.",
    ),
    FixCode(
        "FWD-009",
        "A CUDA error stopped the run on a GPU",
        "A GPU failed while the twin ran on it: it fell off the bus or hit an uncorrectable ECC error (Xid 79 / "
        "48 in `dmesg`), it is in an exclusive compute mode and another process holds it (`CUDA-capable device(s) "
        "is/are busy or unavailable`), or the driver reset it. The eval would die the same way, later.",
        "Run `nvidia-smi -q -i N` on the GPU named and look for Xid errors in `dmesg`; select other GPUs, or ask "
        "the admin to reset the GPU (`nvidia-smi -r -i N`) or set its compute mode to DEFAULT.",
        (
            "https://docs.nvidia.com/deploy/xid-errors/index.html",
            "https://docs.nvidia.com/deploy/nvidia-smi/index.html",
        ),
    ),
    FixCode(
        "FWD-010",
        'A map with the root key "" beside other keys',
        'The map gives the whole model a device with the key "" and some of its modules another one. accelerate '
        "hooks the whole model for the root's device as well as each keyed module for its own, so a module mapped "
        "elsewhere keeps its weights there while its inputs arrive on the root's device: `… found at least two "
        "devices, cuda:0 and cuda:1!`.",
        'Write out the modules "" stood for, each with the root\'s device, instead of "" (diag wrote the map and '
        "re-ran the twin with it).",
        (
            "https://github.com/huggingface/accelerate/blob/main/src/accelerate/hooks.py",
            "https://huggingface.co/docs/accelerate/usage_guides/big_modeling",
        ),
    ),
    FixCode(
        "MEM-001",
        "A GPU is predicted to run out of memory",
        "The weights planned onto a GPU plus the reserve for the CUDA context and the KV cache exceed its free "
        "memory: the eval fails with CUDA out of memory while loading or in the first generate.",
        "Use more or freer GPUs, cap the GPU with max_memory so the planner moves modules elsewhere, or load "
        "a smaller dtype (8-bit / 4-bit quantisation).",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/191", "https://github.com/THUDM/CogVLM/issues/462"),
    ),
    FixCode(
        "MEM-002",
        "Part of the model is planned onto the CPU or disk",
        "The selected GPUs' free memory does not hold the model, so from_pretrained offloads the rest to the "
        "CPU or disk: the eval runs, many times slower, and InternVL/CogVLM remote code may fail on offloaded "
        "modules.",
        "Select more GPUs (diag names how many), free memory on them, or load a smaller dtype.",
        (
            "https://huggingface.co/docs/accelerate/usage_guides/big_modeling",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/191",
        ),
    ),
    FixCode(
        "MEM-003",
        "A GPU ran out of memory during the run",
        "The tiny twin needs a few MiB per GPU, so `CUDA out of memory` during its run means the GPU is (nearly) "
        "full: another process holds it, or memory was not released by an earlier job in this process.",
        "Pick GPUs with free memory (the environment checks name them), wait for the other job, or end the "
        "process that holds the memory.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/191", "https://github.com/THUDM/CogVLM/issues/462"),
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
    FixCode(
        "LAYOUT-001",
        "More processes on this node than GPUs it can see",
        "torchrun and `accelerate launch` start one process per `--nproc-per-node` / `--num_processes`, and each "
        "process takes `cuda:{LOCAL_RANK}`: a rank beyond the visible GPUs fails with `RuntimeError: CUDA error: "
        "invalid device ordinal`. VLMEvalKit's run.py stops first with `AssertionError: The number of processes "
        "should be less than or equal to the number of GPUs`.",
        "Launch no more processes per node than the GPUs selected (`--nproc-per-node` / `--num_processes`), or "
        "select more GPUs.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/31",
            "https://github.com/THUDM/CogVLM/issues/33",
            "https://github.com/THUDM/CogVLM/issues/293",
            "https://github.com/open-compass/VLMEvalKit/blob/main/run.py",
        ),
    ),
    FixCode(
        "LAYOUT-002",
        "Several lmms-eval processes and device_map=auto at once",
        "With `accelerate launch --num_processes` above 1, lmms-eval's llava_hf family (llava_hf, idefics2, "
        "llama_vision, aria) still passes device_map=auto to from_pretrained in every process, so each process "
        "loads its own copy split over every visible GPU and evaluates the whole task; llava, llava_onevision, "
        "internvl2 and qwen2_vl ignore it and load the whole model on `cuda:{local_process_index}`. Either way "
        "the run is out of memory, crosses devices or repeats the work.",
        "Either one process with device_map=auto (a model too large for one GPU: run `python -m lmms_eval`, not "
        "`accelerate launch`), or several processes without device_map=auto (a model that fits one GPU each). The "
        "fix in the report says which of the two fits the selected GPUs.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/50",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/12",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/docs/run_examples.md",
        ),
    ),
    FixCode(
        "LAYOUT-003",
        "VLMEvalKit leaves some selected GPUs unused",
        "VLMEvalKit's run.py gives each of LOCAL_WORLD_SIZE processes `NGPU // LOCAL_WORLD_SIZE` GPUs from the "
        "list in CUDA_VISIBLE_DEVICES, in order; the remainder at the end of the list is never used.",
        "Select a multiple of the process count (`CUDA_VISIBLE_DEVICES` with N x processes entries), or launch a "
        "process count that divides the GPUs.",
        ("https://github.com/open-compass/VLMEvalKit/blob/main/run.py",),
    ),
    FixCode(
        "DIST-001",
        "A rank did not answer the collective",
        "One or more ranks of the launched job did not reach the rendezvous, the process-group setup or the "
        "all-reduce within the collective check's timeout: the process died, hangs, or cannot reach the others. "
        "The eval would wait at its first collective for its own process-group timeout, then die with an NCCL "
        "watchdog timeout.",
        "Look at the rank and node the message names (is it running; what is it waiting for?), then the usual "
        "causes: a firewall between the nodes, NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME naming an interface the "
        "nodes do not share, a peer-to-peer path that hangs (NCCL_P2P_DISABLE=1), CUDA_VISIBLE_DEVICES that "
        "differs between the ranks of a node.",
        (
            "https://github.com/open-compass/VLMEvalKit/issues/1131",
            "https://pytorch.org/docs/stable/distributed.html#torch.distributed.init_process_group",
        ),
    ),
    FixCode(
        "DIST-002",
        "This rank cannot reach the rendezvous",
        "The store at MASTER_ADDR:MASTER_PORT (served by rank 0, or by torchrun's agent on the first node) did not "
        "answer within the timeout: rank 0 is not running, MASTER_ADDR does not name it as this node resolves it, "
        "or a firewall blocks the port.",
        "Start rank 0 first; export MASTER_ADDR as the first node's name or address and a free MASTER_PORT on every "
        "node; open that port between the nodes.",
        ("https://pytorch.org/docs/stable/distributed.html#environment-variable-initialization",),
    ),
    FixCode(
        "DIST-003",
        "The ranks met but the collective failed",
        "Every rank reached the step, yet the process group could not connect or the all-reduce failed or returned "
        "a wrong sum: the ranks can reach the rendezvous but not each other on the ports and interface the backend "
        "uses.",
        "Set NCCL_SOCKET_IFNAME (GLOO_SOCKET_IFNAME for gloo) to an interface every node shares, open the ports "
        "between the nodes, and re-run with NCCL_DEBUG=INFO; try NCCL_P2P_DISABLE=1 if ranks on one node hang.",
        (
            "https://github.com/open-compass/VLMEvalKit/issues/1131",
            "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html",
        ),
    ),
    FixCode(
        "DIST-004",
        "This rank cannot take part in a collective",
        "The rank found before joining that it cannot: torch has no torch.distributed or no such backend, or (NCCL) "
        "the GPU at its local rank does not exist. It told the others, which then fail with DIST-001 naming it.",
        "Install a torch build with the backend (a CUDA build for NCCL) in the eval environment on every node, and "
        "give each rank a GPU at its local rank.",
        ("https://pytorch.org/docs/stable/distributed.html#backends",),
    ),
    FixCode(
        "DIST-005",
        "Ranks on one node share a GPU or see different GPUs",
        "Two ranks of one node resolve `cuda:LOCAL_RANK` to the same GPU, and NCCL refuses it with `Duplicate GPU "
        "detected : rank 1 and rank 0 both on CUDA device …`; or the ranks of a node were given different "
        "CUDA_VISIBLE_DEVICES, while lmms-eval takes `cuda:{local_process_index}` and VLMEvalKit slices the visible "
        "list by LOCAL_RANK, both assuming every rank of a node sees the same GPUs.",
        "Give every rank of a node the same CUDA_VISIBLE_DEVICES and let the launcher's LOCAL_RANK pick the GPU; "
        "do not set a fixed device (`cuda:0`, `torch.cuda.set_device(0)`) in every process.",
        ("https://github.com/NVIDIA/Megatron-LM/issues/661", "https://github.com/NVIDIA/nccl/issues/1241"),
    ),
    FixCode(
        "DIST-006",
        "A process-group timeout of hours or weeks hides a dead rank",
        "When a rank dies, the others wait at their next collective for the process-group timeout before the job "
        "fails, holding every GPU: VLMEvalKit waits DIST_TIMEOUT seconds (3600 by default); lmms-eval passes "
        "accelerate `InitProcessGroupKwargs(timeout=timedelta(seconds=60000))` in `lmms_eval/__main__.py` and "
        "`timedelta(weeks=52)` in model classes such as `lmms_eval/models/llava.py`.",
        "Run diag's collective check under the same launcher before the eval (it fails in seconds); set "
        "DIST_TIMEOUT to what one step may take (VLMEvalKit); for lmms-eval, watch the job's logs and cancel it "
        "when ranks stop reporting, or lower the timeout in your lmms-eval copy.",
        (
            "https://github.com/open-compass/VLMEvalKit/issues/1131",
            "https://github.com/open-compass/VLMEvalKit/blob/main/run.py",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/__main__.py",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/models/simple/llava.py",
        ),
    ),
    FixCode(
        "DIST-007",
        "DIST_TIMEOUT is not a whole number of seconds",
        "VLMEvalKit's run.py reads `int(os.environ.get('DIST_TIMEOUT', 3600))` when WORLD_SIZE is above 1; any other "
        "value raises `ValueError: invalid literal for int() with base 10` before the eval starts.",
        "Set DIST_TIMEOUT to a whole number of seconds (`export DIST_TIMEOUT=1800`), or unset it for the default hour.",
        (
            "https://github.com/open-compass/VLMEvalKit/blob/main/run.py",
            "https://github.com/open-compass/VLMEvalKit/issues/1131",
        ),
    ),
    FixCode(
        "DIST-008",
        "The launcher's environment is incomplete or inconsistent",
        "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR or MASTER_PORT (or SLURM_PROCID / SLURM_NTASKS under srun) is "
        "missing, not a number, or out of range (RANK at or above WORLD_SIZE), or DIAG_COLLECTIVE_TIMEOUT is not a "
        "number of seconds: torch.distributed cannot initialise from it.",
        "Start the run with torchrun, `accelerate launch` or srun as docs/multi-node.md shows, which set these "
        "variables; under srun export MASTER_ADDR (the first node) and MASTER_PORT yourself.",
        ("https://pytorch.org/docs/stable/distributed.html#environment-variable-initialization",),
    ),
    FixCode(
        "BACKEND-001",
        "The launcher's processes do not match the engine's tensor x data parallel size",
        "lmms-eval's vllm class under a launcher with more than one process runs vLLM with "
        '`distributed_executor_backend="external_launcher"`: every process is one rank of the engine, and it '
        "raises `ValueError: For external_launcher mode, accelerate world size must equal tensor_parallel_size * "
        "data_parallel_size (N), but got M.` unless processes = tp x dp. vLLM's `LLM()` started by VLMEvalKit's "
        "run.py under torchrun with several processes stops with `RuntimeError: world_size (8) is not equal to "
        "tensor_model_parallel_size (1) x pipeline_model_parallel_size (1)`.",
        "Launch exactly tensor_parallel_size x data_parallel_size processes (`accelerate launch --num_processes "
        "TPxDP`), or one process (`python -m lmms_eval`) and let vLLM start its own workers; run VLMEvalKit with "
        "--use-vllm as one process (`python run.py`), or serve the model and evaluate it as an API model.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/models/simple/vllm.py",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/pull/1236",
            "https://github.com/open-compass/VLMEvalKit/issues/561",
        ),
    ),
    FixCode(
        "BACKEND-002",
        "data_parallel_size above 1 in a single process",
        "lmms-eval's vllm class runs data parallelism as separate processes of a launcher; with one process and "
        "`data_parallel_size` above 1 it stops with `ValueError: vLLM data parallel requires torchrun/accelerate "
        "multi-process launch`.",
        "Start tp x dp processes under `accelerate launch --num_processes` (or torchrun), or drop "
        "data_parallel_size from --model_args.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/pull/1236",),
    ),
    FixCode(
        "BACKEND-003",
        "The engine needs more GPUs than the process sees",
        "tensor_parallel_size x data_parallel_size GPUs are more than CUDA_VISIBLE_DEVICES shows the process: vLLM "
        "stops with `CUDA error: invalid device ordinal` in a worker or `AssertionError: local_world_size must be "
        "less than or equal to the number of visible devices`; SGLang and LMDeploy fail the same way. Also here: a "
        "size the engine refuses (not a whole number).",
        "Lower tensor_parallel_size (and data_parallel_size) to fit the visible GPUs, or select as many GPUs as "
        "the engine needs.",
        (
            "https://github.com/vllm-project/vllm/issues/16456",
            "https://github.com/vllm-project/vllm/issues/8984",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/31",
        ),
    ),
    FixCode(
        "BACKEND-004",
        "The tensor-parallel size does not divide the language model's attention heads",
        "Tensor parallelism gives every rank the same number of attention heads. vLLM checks it at start-up: "
        "`ValueError: Total number of attention heads (28) must be divisible by tensor parallel size (8).`; KV "
        "heads must split evenly below tp or replicate evenly from tp up; LMDeploy's TurboMind asserts "
        "`head_num % tensor_para_size == 0`. VLMEvalKit's --use-vllm picks tp 8/4/2/1 from the GPU count and its "
        "LMDeploy path takes every visible GPU, so a 28-head model on 8 GPUs fails there too.",
        "Use a tensor-parallel size that divides the heads (the fix lists them), and use the remaining GPUs for "
        "data parallelism; for VLMEvalKit, select that many GPUs (CUDA_VISIBLE_DEVICES).",
        (
            "https://github.com/vllm-project/vllm/issues/414",
            "https://github.com/vllm-project/vllm/issues/11797",
            "https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/layers/linear.py",
            "https://github.com/InternLM/lmdeploy/blob/main/lmdeploy/turbomind/deploy/target_model/base.py",
        ),
    ),
    FixCode(
        "BACKEND-005",
        "The tensor-parallel size does not divide the vision tower's attention heads",
        "vLLM and SGLang shard the vision tower of Qwen2-VL-style models (16 heads) and CLIP (LLaVA) by head too: "
        "a size that divides the language model can still stop with `AssertionError: 16 is not divisible by 3` "
        "while the vision tower is built. vLLM PR #57119 (2026-09) lets Qwen's vision towers fall back to "
        "replicated heads; earlier releases stop.",
        "Use a tensor-parallel size that divides both the language model's and the vision tower's heads (1, 2, 4, "
        "8 for Qwen2-VL), with data parallelism for the rest of the GPUs.",
        (
            "https://github.com/vllm-project/vllm/pull/57119",
            "https://github.com/gpustack/gpustack/issues/4769",
        ),
    ),
    FixCode(
        "BACKEND-006",
        "vLLM's memory fraction is more than a selected GPU has free",
        "vLLM reserves gpu_memory_utilization x the GPU's total memory and checks at start-up that this much is "
        "free: `ValueError: Free memory on device (7.34/139.72 GiB) on startup is less than desired GPU memory "
        "utilization (0.9, 125.75 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
        "processes.` Another job on one of the engine's GPUs fails it (lmms-eval's default is 0.8, VLMEvalKit's "
        "and vLLM's 0.9).",
        "Select free GPUs (the fix names them), or lower gpu_memory_utilization to what every engine GPU has free "
        "(the fix computes it), or wait for the other job.",
        (
            "https://github.com/vllm-project/vllm/issues/20305",
            "https://github.com/vllm-project/vllm/issues/23192",
        ),
    ),
    FixCode(
        "BACKEND-007",
        "SGLang (or LMDeploy) meets a GPU another process uses",
        "SGLang compares the free memory of its tensor-parallel GPUs at start-up and stops with `The memory "
        "capacity is unbalanced. Some GPUs may be occupied by other processes.` when the least is below 0.9 of the "
        "most; it sizes its KV pool as mem_fraction_static x total minus what is already used, and stops with "
        "`Not enough memory. Please try to increase --mem-fraction-static` when nothing is left. LMDeploy sizes "
        "its cache from the free memory (cache_max_entry_count), so another job shrinks it without failing.",
        "Select GPUs that no other process uses (the fix names them), or wait for the other job.",
        (
            "https://github.com/sgl-project/sglang/issues/4233",
            "https://github.com/sgl-project/sglang/issues/322",
        ),
    ),
    FixCode(
        "BACKEND-008",
        "vLLM workers would be forked after CUDA is initialised",
        "With tensor_parallel_size above 1 vLLM starts one worker process per rank; forked after the parent touched "
        "CUDA they stop with `RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with "
        "multiprocessing, you must use the 'spawn' start method`. lmms-eval's vllm class sets "
        "VLLM_WORKER_MULTIPROC_METHOD=spawn itself; VLMEvalKit's --use-vllm only warns when it is not spawn.",
        "`export VLLM_WORKER_MULTIPROC_METHOD=spawn` before the eval starts.",
        (
            "https://github.com/EleutherAI/lm-evaluation-harness/issues/2704",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/pull/728",
            "https://docs.vllm.ai/en/latest/design/multiprocessing.html",
        ),
    ),
    FixCode(
        "BACKEND-009",
        "CUDA_VISIBLE_DEVICES holds GPU-/MIG- UUIDs or MIG instances the engine cannot use",
        "vLLM reads every CUDA_VISIBLE_DEVICES entry with int() and stops with `ValueError: invalid literal for "
        "int() with base 10: 'MIG-…'` for a UUID entry (reported on v0.20.1; PR #46132 open). A process sees at "
        "most one MIG instance, so tensor parallelism over MIG instances cannot start with any backend.",
        "Select the GPUs by index with CUDA_DEVICE_ORDER=PCI_BUS_ID (the fix gives the indices), or run the "
        "engine in a container that exposes the MIG instance as device 0, with tensor_parallel_size 1.",
        (
            "https://github.com/vllm-project/vllm/issues/41848",
            "https://github.com/vllm-project/vllm/issues/6551",
            "https://github.com/vllm-project/vllm/pull/46132",
            "https://docs.nvidia.com/datacenter/tesla/mig-user-guide/",
        ),
    ),
    FixCode(
        "MAP-011",
        "The lmms-eval model class does not take a --model_args key",
        "lmms-eval hands every --model_args item to the model class as a keyword argument; classes that take "
        "`**kwargs` only to reject them (`assert kwargs == {}`: cogvlm2, minicpm_v, phi3v and others) raise "
        "`AssertionError: Unexpected kwargs`, and classes without `**kwargs` raise `TypeError: unexpected keyword "
        "argument`, before the model loads. minicpm_v and phi3v have no device_map parameter at all.",
        "Remove the key from --model_args (the fix gives the eval command without it); for the device, use the "
        "parameter the class has (`device=`).",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/api/model.py",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/models/simple/minicpm_v.py",
        ),
    ),
    FixCode(
        "MAP-012",
        "lmms-eval's internvl2 cannot build its split for this checkpoint name",
        "With device_map=auto in one process, lmms-eval's internvl2 class (since PR #481) builds its own split from "
        "a table of InternVL2 / InternVL2.5 checkpoint folder names; any other name (a local path's folder, "
        "InternVL3, …) raises `KeyError: '<name>'` before the model loads. The split is then moved whole to "
        "cuda:0 by the class's `.to(self._device)`.",
        "Give the layer count with `num_layers=N` in --model_args, or load the checkpoint under its upstream folder "
        "name.",
        (
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/pull/481",
            "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/models/simple/internvl2.py",
        ),
    ),
    FixCode(
        "MAP-013",
        "The eval's model class stops before loading the model",
        "The installed eval kit's model class, built as the eval builds it (loaders intercepted, nothing read), "
        "raised an error of its own before it reached from_pretrained.",
        "Read the error the class raises (quoted in the message) and change the model arguments it names.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/api/model.py",),
    ),
    FixCode(
        "KIT-001",
        "The installed eval kit could not be run; diag's emulation answered",
        "diag found lmms-eval or VLMEvalKit installed but could not import or run the part it needs (a missing "
        "dependency of the model class, a run.py that does not run), so the verdict comes from diag's emulation of "
        "the kit's version instead of the kit's own code.",
        "Run diag inside the eval's own environment (where the kit's imports work), or give --eval-kit-version so "
        "the emulation assumes the kit's version.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/models/__init__.py",),
    ),
    FixCode(
        "KIT-002",
        "The eval kit has no such model class",
        "lmms-eval resolves --model through its registry; a name it does not list (a class added in a later "
        "version, a typo) stops the eval with `ValueError: Model ... not found` before anything loads.",
        "Use a --model name the installed lmms-eval lists, or update lmms-eval to a version that has the class.",
        ("https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/models/__init__.py",),
    ),
    FixCode(
        "MODEL-001",
        "The checkpoint's own code does not build or run on the installed transformers",
        "The checkpoint ships its modelling code (config.json `auto_map`) and that code, run with "
        "`--trust-remote-code` as the eval runs it with trust_remote_code=True, fails here before any device "
        "matters: an import the installed transformers no longer has, a model class without GenerationMixin (no "
        "`generate` on transformers 5), a missing `post_init()` (`AttributeError: ... all_tied_weights_keys` when "
        "planning or loading), a keyword the installed `generate` rejects. The eval fails the same way.",
        "Run the eval with the transformers release the checkpoint was saved with (config.json "
        "`transformers_version`, the message names it), or use a native port the installed transformers loads "
        "without remote code (InternVL: the OpenGVLab `-hf` checkpoints).",
        (
            "https://huggingface.co/docs/transformers/custom_models",
            "https://github.com/OpenGVLab/InternVL/pull/1100",
        ),
    ),
    FixCode(
        "MODEL-002",
        "The installed transformers does not know the model's model_type",
        "config.json names a `model_type` that the installed transformers does not register (its CONFIG_MAPPING) "
        "and has no `auto_map` to load code from: from_pretrained raises before loading, so the eval cannot load "
        "the model either (Qwen2.5-VL on transformers 4.45, for instance).",
        "Upgrade transformers to the release that wrote the config (config.json `transformers_version`, the "
        "message names it) or newer: `pip install 'transformers>=X.Y.Z'`.",
        ("https://huggingface.co/docs/transformers/model_doc/auto",),
    ),
    FixCode(
        "MODEL-003",
        "diag has no model it may build: the memory and same-device checks skip",
        "The model is not one diag can build here: the checkpoint's config is not on this machine and diag has no "
        "preset for it, or the checkpoint ships its own code and `--trust-remote-code` was not given (without it "
        "none of that code runs) and diag has no twin of it. The checks that need no model still run.",
        "Give diag the model: `--model path/to/checkpoint` (or its config.json), or a hub id whose snapshot is in "
        "the local Hugging Face cache; for a checkpoint with its own code add `--trust-remote-code`.",
        ("https://huggingface.co/docs/huggingface_hub/guides/manage-cache",),
    ),
    FixCode(
        "MODEL-004",
        "The verdict rests on diag's hand-written twin, not the checkpoint's own code",
        "The checkpoint ships its own code, which was not run: diag's twin of the family (diag/twins/internvl.py, "
        "cogvlm.py) mirrors one upstream revision in its device-sensitive steps only. The checkpoint's code may be "
        "another revision and may not even run on the installed transformers (MODEL-001).",
        "Run the checks with the checkpoint on the node (`--model` its folder, or its snapshot in the Hugging Face "
        "cache) and `--trust-remote-code`; `python -m diag run` adds it when the eval itself runs that code.",
        ("https://huggingface.co/docs/transformers/custom_models",),
    ),
    FixCode(
        "MODEL-005",
        "The model's code fails on the installed transformers whatever the map",
        "The twin failed with an error that is not a device error, and it fails the same way with the whole model "
        "on one GPU: the model's code (the installed transformers' class, or the checkpoint's own) does not run "
        "here, so the eval fails the same way with any device_map. Example: Llama4ForConditionalGeneration.forward "
        "in transformers 5.24 reads `image_outputs` from its language model's output, which has no such field.",
        "Install a transformers release whose class of this model runs (an earlier or later release; the model "
        "card names the one it was released with), or report the error upstream with the failing line; the "
        "message quotes the error.",
        ("https://github.com/huggingface/transformers/issues",),
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

"""`python -m diag topology` (capture a node as JSON), `python -m diag fix-codes` (the codes page) and
`python -m diag run [diag options] -- COMMAND …` (the checks an eval command implies, then the command)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from diag.fixes import catalog_markdown
from diag.report import topology_section
from diag.topology import build_topology
from diag.topology.files import load_node, node_to_dict
from diag.topology.selection import PCI_BUS_ID, parse_gpus
from diag.topology.simulated import parse_spec


def _spec(value: str) -> str:
    parse_spec(value)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diag", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    topology = commands.add_parser("topology", help="print this node as JSON, to replay with --topology FILE")
    topology.add_argument("--simulate", type=_spec, metavar="SPEC", help="a simulated node, e.g. 8xA100-80GB")
    topology.add_argument("--topology", type=load_node, metavar="PATH", help="re-read a saved node")
    topology.add_argument(
        "--gpus",
        type=parse_gpus,
        metavar="IDS",
        help="also show which GPUs this selection gives cuda:0..N (adds a 'view' section)",
    )
    commands.add_parser("fix-codes", help="print the fix-code catalog as Markdown (docs/fix-codes.md)")
    merge = commands.add_parser("merge", help="join the per-rank reports of a launched job into one fleet report")
    merge.add_argument("reports", nargs="+", metavar="REPORT", help="diag reports, one per rank (reports/*.json)")
    merge.add_argument("-o", "--output", default="reports/fleet.json", metavar="PATH",
                       help="where the fleet report goes (default: reports/fleet.json)")  # fmt: skip
    run = commands.add_parser(
        "run",
        help="run the checks an eval command implies, then the command if they pass: "
        "run [diag options] [--dry-run | --check-only] [--start-anyway] -- COMMAND (run --help: its options)",
        prefix_chars="+",  # every `-…` argument belongs to diag's options or to COMMAND, not to this parser
        add_help=False,
    )
    run.add_argument(
        "args", nargs=argparse.REMAINDER, help="[diag options] [--dry-run | --check-only] [--start-anyway] -- COMMAND"
    )
    return parser


def _print(text: str) -> None:
    try:
        print(text)
    except BrokenPipeError:  # `python -m diag fix-codes | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _merge(paths: Sequence[str], output: str) -> int:
    """Exit 0: every rank reported and passed; 1: a failure or a missing rank; 2: a report cannot be merged."""
    from diag.fleet import FleetError, fleet_ok, fleet_text, load_report, merge
    from diag.report import write_report

    try:
        fleet = merge([load_report(p) for p in paths])
        written = write_report(output, fleet)
    except FleetError as exc:
        print(f"python -m diag merge: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"python -m diag merge: error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    _print(fleet_text(fleet) + f"\nfleet report: {written}")
    return 0 if fleet_ok(fleet) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # handed over as written: argparse would consume the `--` before COMMAND
        from diag.launch.wrapper import main as run_main

        return run_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "fix-codes":
        _print(catalog_markdown())
        return 0
    if args.command == "merge":
        return _merge(args.reports, args.output)
    if args.simulate and args.topology:
        _parser().error("--simulate and --topology both describe the node: give one of them")
    env = dict(os.environ)
    if args.gpus:
        env.update(CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA_VISIBLE_DEVICES=",".join(args.gpus))
    topology = build_topology(env=env, gpus=args.gpus, simulate=args.simulate, replay=args.topology)
    data = node_to_dict(topology.node)
    # A captured node records the probe's torch (version and CUDA build), so a replay judges the same torch.
    data["torch_cuda"] = data["torch_cuda"] or topology.cuda.torch_cuda
    if topology.node.source == "nvml" and topology.node.nvml_error is None:  # the probe ran in this environment
        data["torch_version"] = topology.cuda.torch_version
    if args.gpus:
        data["view"] = topology_section(topology)["selection"] | {"cuda": topology_section(topology)["cuda"]}
    _print(json.dumps(data, indent=2))
    return 1 if topology.node.nvml_error else 0


if __name__ == "__main__":
    sys.exit(main())

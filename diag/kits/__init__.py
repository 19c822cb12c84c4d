"""The eval kit whose code decides what the eval passes to `from_pretrained`: installed, or emulated by date.

When lmms-eval or VLMEvalKit is importable (diag runs inside the user's eval environment), or the wrapped command
names a VLMEvalKit checkout's run.py, diag runs the kit's own code with the loaders intercepted
(`diag.kits.capture`): nothing is downloaded, no weight is read and no GPU memory is taken. Otherwise diag's
emulation answers, keyed by the kit's date: the installed version, the checkout's commit, or `--eval-kit-version`.

`KitUse` says which of the two answered and which kit version the verdict assumes; every message built on a kit
verdict names it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LMMS_EVAL = "lmms-eval"
VLMEVALKIT = "vlmevalkit"
LATEST = "2026-08"  # the newest behaviour diag's emulation models (lmms-eval 75571cfe, VLMEvalKit e8e78f05)

# Commits and releases whose dates key the emulation (the commits where the files that matter changed).
KNOWN_COMMITS: dict[str, tuple[str, str]] = {
    # VLMEvalKit
    "2b3f1aff": (VLMEVALKIT, "2024-11-01"),  # first AUTO_SPLIT split in internvl_chat.py
    "e7ddd4d6": (VLMEVALKIT, "2024-12-09"),  # the Dec-9 split (8 GPUs per node hard-coded)
    "b13a37db": (VLMEVALKIT, "2024-12-30"),  # the Dec-30 split (capped by device_count // LOCAL_WORLD_SIZE)
    "3b6bca0f": (VLMEVALKIT, "2025-04-29"),  # PR #952: InternVL loads with `auto`; run.py slices on WORLD_SIZE
    "002fc953": (VLMEVALKIT, "2025-05-23"),  # run.py slices only on LOCAL_WORLD_SIZE > 1
    "e8e78f05": (VLMEVALKIT, "2026-08-18"),
    # lmms-eval
    "0cee464b": (LMMS_EVAL, "2024-11-27"),  # v0.3.0
    "75f45363": (LMMS_EVAL, "2024-12-30"),  # PR #481: internvl2 builds its own split for device_map=auto
    "b7b4b1d9": (LMMS_EVAL, "2025-07-30"),  # chat/qwen2_5_vl, huggingface; minicpm_v, phi3v
    "b83e3ec4": (LMMS_EVAL, "2026-02-10"),  # registry_v2: the chat class before the simple one
    "75571cfe": (LMMS_EVAL, "2026-08-06"),
}
KNOWN_RELEASES: dict[tuple[str, str], str] = {
    (LMMS_EVAL, "0.3.0"): "2024-11-27",
    (LMMS_EVAL, "0.7.3"): "2026-08-06",
}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HEX = re.compile(r"[0-9a-fA-F]{7,40}")


class KitVersionError(ValueError):
    """An `--eval-kit-version` value diag cannot read."""


@dataclass(frozen=True)
class KitUse:
    """Which kit decided, in which version, and whether its own code ran ("installed") or diag's emulation.

    `date` (YYYY-MM-DD) keys the emulation; None means the newest behaviour diag knows (`LATEST`).
    `reason` says why the emulation answered where an installed kit was found but could not be run.
    """

    kit: str
    source: str  # "installed" or "emulation"
    version: str | None = None
    date: str | None = None
    where: str | None = None
    reason: str | None = None

    @property
    def name(self) -> str:
        return "lmms-eval" if self.kit == LMMS_EVAL else "VLMEvalKit"

    def describe(self) -> str:
        """`lmms-eval 0.7.3 (its installed code)`, `VLMEvalKit as of 2024-12-30 (diag's emulation)`."""
        version = self.version or (f"as of {self.date}" if self.date else f"as of {LATEST}")
        if self.version and self.date and self.date not in self.version:
            version += f" ({self.date})"
        how = "its installed code" if self.source == "installed" else "diag's emulation"
        return f"{self.name} {version} ({how})"

    def as_dict(self) -> dict[str, str | None]:
        return {"kit": self.kit, "source": self.source, "version": self.version, "date": self.date,
                "where": self.where, "reason": self.reason, "assumes": self.describe()}  # fmt: skip

    def before(self, date: str) -> bool:
        """Whether this kit's behaviour predates `date` (an unknown date is the newest behaviour)."""
        return self.date is not None and self.date < date


def date_of(kit: str, version: str) -> str | None:
    """The date a version string keys: YYYY-MM-DD, a known commit (prefix), a known release; None if unknown."""
    text = version.strip()
    if text.lower() in ("head", "latest", "main"):
        return None
    if _DATE.fullmatch(text):
        return text
    if _HEX.fullmatch(text):
        for commit, (owner, date) in KNOWN_COMMITS.items():
            if owner == kit and (commit.startswith(text.lower()[:8]) or text.lower().startswith(commit)):
                return date
        return None
    return KNOWN_RELEASES.get((kit, text.removeprefix("v")))


def parse_kit_version(value: str) -> str:
    """`--eval-kit-version`: a date (2025-04-29), a commit (3b6bca0f), a release (0.3.0), or head."""
    text = value.strip()
    if not text:
        raise KitVersionError("empty value: expected a date (2025-04-29), a commit, a release (0.3.0) or head")
    if _DATE.fullmatch(text):
        try:
            datetime.strptime(text, "%Y-%m-%d")
        except ValueError:
            raise KitVersionError(f"{value!r}: not a date (expected YYYY-MM-DD)") from None
        return text
    if text.lower() in ("head", "latest", "main") or _HEX.fullmatch(text):
        return text
    if re.fullmatch(r"v?[0-9]+(\.[0-9]+){1,3}", text):
        return text
    raise KitVersionError(f"{value!r}: expected a date (2025-04-29), a commit hash, a release (0.3.0) or head")


def emulated(kit: str, option: str | None, reason: str | None = None) -> KitUse:
    """The emulation's KitUse for `--eval-kit-version` (None: the newest behaviour)."""
    if option is None:
        return KitUse(kit, "emulation", reason=reason)
    date = date_of(kit, option)
    if date is None and option.lower() not in ("head", "latest", "main"):
        extra = f"{option} is not a version diag can date: the {LATEST} behaviour is assumed"
        reason = f"{reason}; {extra}" if reason else extra
    return KitUse(kit, "emulation", version=option if not _DATE.fullmatch(option) else None, date=date, reason=reason)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_folder(module: str) -> Path | None:
    """Where an importable top-level package lives, without importing it; None when it is not importable."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


# -- a checkout's commit, read from .git without running git ------------------------------------------------
def checkout_commit(folder: Path) -> tuple[str, str | None] | None:
    """(commit, date) of the git checkout holding `folder`, read from .git; None when it is not one.

    The date comes from the commit object when it is stored loose; a packed object leaves it None.
    """
    for root in (folder, *folder.parents):
        git = root / ".git"
        if git.is_file():  # a worktree or submodule: "gitdir: PATH"
            text = _read(git)
            if text is None or not text.startswith("gitdir:"):
                return None
            git = (root / text.partition(":")[2].strip()).resolve()
        if git.is_dir():
            commit = _head_commit(git)
            return None if commit is None else (commit, _commit_date(git, commit))
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _head_commit(git: Path) -> str | None:
    head = _read(git / "HEAD")
    if head is None:
        return None
    if not head.startswith("ref:"):
        return head if _HEX.fullmatch(head) else None
    ref = head.partition(":")[2].strip()
    common = git
    commondir = _read(git / "commondir")
    if commondir:
        common = (git / commondir).resolve()
    for base in (git, common):
        value = _read(base / ref)
        if value and _HEX.fullmatch(value):
            return value
    packed = _read(common / "packed-refs") or ""
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name == ref and _HEX.fullmatch(sha):
            return sha
    return None


def _commit_date(git: Path, commit: str) -> str | None:
    commondir = _read(git / "commondir")
    objects = ((git / commondir).resolve() if commondir else git) / "objects"
    try:
        raw = zlib.decompress((objects / commit[:2] / commit[2:]).read_bytes())
    except (OSError, zlib.error):
        return None
    match = re.search(rb"\ncommitter [^\n]*> ([0-9]+) [+-][0-9]{4}\n", raw)
    if match is None:
        return None
    return datetime.fromtimestamp(int(match[1]), tz=timezone.utc).strftime("%Y-%m-%d")

"""The reason table (domain/reasons.py) against the code: every reason the code can set is
classified, errors agree with their class, summaries always name Reconciling xor Stalled,
and every reason and Event reason is CamelCase and listed in docs/conditions.md.

Reasons are collected from the source with `ast`: `reason=` arguments, `reason = "..."`
class attributes, the reason argument of `Condition(...)`, and Event reasons of
`outcome.note/warn(...)`. A reason computed at run time must be listed in DYNAMIC below
with what it can expand to, so a new computed reason fails here until it is classified.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kvmfleet
from kvmfleet.domain import conditions as cond
from kvmfleet.domain import vmmaster
from kvmfleet.domain.placement import HostRejection, PlacementReason
from kvmfleet.domain.reasons import HOST_CONDITION_TYPES, REASONS, Progress
from kvmfleet.errors import KvmfleetError, PermanentError, TemporaryError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "kvmfleet"
CONDITIONS_MD = ROOT / "docs" / "conditions.md"
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _disk_reasons() -> dict[str, str]:
    """The reason constants of domain/diskstate.py (what vmdisks and vmremove report)."""
    from kvmfleet.domain import diskstate

    return {
        k: v
        for k, v in vars(diskstate).items()
        if k.isupper() and isinstance(v, str) and CAMEL.match(v)
    }


def _host_summaries() -> set[str]:
    from kvmfleet.reconcile.hosts import HOST_CONDITIONS

    assert set(HOST_CONDITIONS) == set(HOST_CONDITION_TYPES)
    return {f"{t}{s}" for t in HOST_CONDITIONS for s in ("False", "Unknown")}


def _pause_reasons() -> list[str]:
    from kvmfleet.virt.guest import PauseReason

    return [str(r) for r in PauseReason]


def _pause_reasons() -> list[str]:
    from kvmfleet.virt.guest import PauseReason

    return [str(r) for r in PauseReason]


def _authorization_reason() -> str:
    from kvmfleet.domain.authorization import REASON

    return REASON


def _host_condition_events() -> set[str]:
    from kvmfleet.reconcile.hosts import HOST_CONDITIONS

    return set(HOST_CONDITIONS) | {f"{t}{s}" for t in HOST_CONDITIONS for s in ("False", "Unknown")}


def _migration_refusals() -> set[str]:
    from kvmfleet.domain import migration

    return {
        *(f"Target{r}" for r in HostRejection),
        migration.STORAGE_NOT_SHARED,
        migration.CPU_INCOMPATIBLE,
        migration.VIRT_TYPE_MISMATCH,
        migration.MIGRATION_PORT_UNREACHABLE,
        "HostNotFound",
        "TargetNotReady",
    }


# Computed reason expressions (as ast.unparse spells them) -> what they can be. A value of
# None: the reason passes through from elsewhere (an error's reason, a condition already
# built), whose sources are collected on their own.
VMMASTER_REASONS = (
    "CAPTURED",
    "CAPTURING",
    "SOURCE_NOT_FOUND",
    "SOURCE_NOT_PLACED",
    "SOURCE_RUNNING",
    "CAPTURE_FAILED",
    "DEPENDANTS_EXIST",
    "WAITING_FOR_MASTER",
    "MASTER_UNREACHABLE",
    "MASTER_DISK_MISSING",
)
"""Reasons of kvmfleet.domain.vmmaster, named by their constants in the code."""

DYNAMIC: dict[str, Callable[[], set[str]] | None] = {
    "error.reason": None,
    "event.reason": None,
    "reason": None,
    "problems[0].reason": None,
    "str(data.get('reason', ''))": None,
    "phase": lambda: {"Running", "Starting", "Stopped"},
    "f'Paused{pause.reason}'": lambda: {f"Paused{r}" for r in _pause_reasons()},
    "NOT_ALLOWED": lambda: {_authorization_reason()},
    "f'{first.type}{state}'": _host_summaries,
    "str(decision.reason)": lambda: {str(r) for r in PlacementReason},
    "_STAGE[furthest.code]": lambda: {str(r) for r in PlacementReason},
    "PlacementReason.SCHEDULED": lambda: {str(PlacementReason.SCHEDULED)},
    "PlacementReason.NO_READY_HOST": lambda: {str(PlacementReason.NO_READY_HOST)},
    "f'Host{rejected.code}'": lambda: {f"Host{r}" for r in HostRejection},
    "DISK_IN_USE_ELSEWHERE": lambda: {_disk_reasons()["DISK_IN_USE_ELSEWHERE"]},
    "DELETION_BLOCKED": lambda: {"DeletionBlocked"},
    "START_FAILED": lambda: {"StartFailed"},
    "disks.problems[0].reason": lambda: {*_disk_reasons().values(), "DiskProblem"},
    "verdict.reason": lambda: set(_disk_reasons().values()),
    "refusals[0].reason": _migration_refusals,
    "f'{TARGET_PREFIX}{rejected.code}'": lambda: {f"Target{r}" for r in HostRejection},
    **{name: (lambda n=name: {getattr(vmmaster, n)}) for name in VMMASTER_REASONS},
}
DYNAMIC_EVENTS: dict[str, Callable[[], set[str]] | None] = {
    "DISK_IN_USE_ELSEWHERE": lambda: {_disk_reasons()["DISK_IN_USE_ELSEWHERE"]},
    "DELETION_BLOCKED": lambda: {"DeletionBlocked"},
    "START_FAILED": lambda: {"StartFailed"},
    "NOT_ALLOWED": lambda: {_authorization_reason()},
    "error.reason": None,  # a PermanentError's reason: in the table
    **{name: (lambda n=name: {getattr(vmmaster, n)}) for name in VMMASTER_REASONS},
    "new.type": _host_condition_events,
    "f'{new.type}{new.status}'": _host_condition_events,
    "refusals[0].reason": _migration_refusals,
    "reason": lambda: {"MigrationFailed", "MigrationTimedOut"},  # vmmigrate._failed
}


def _sources() -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _expand(
    expr: ast.expr, table: dict[str, Callable[[], set[str]] | None], where: str
) -> set[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return _expand(expr.body, table, where) | _expand(expr.orelse, table, where)
    text = ast.unparse(expr)
    assert text in table, (
        f"{where}: computed reason `{text}`: add it to DYNAMIC in this test with what it can "
        "expand to, and classify those in domain/reasons.py"
    )
    expand = table[text]
    return expand() if expand else set()


def condition_reasons() -> dict[str, str]:
    """reason -> where it is set, over the whole package."""
    found: dict[str, str] = {}
    for path, tree in _sources():
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            exprs: list[ast.expr] = []
            if isinstance(node, ast.Call):
                exprs += [kw.value for kw in node.keywords if kw.arg == "reason"]
                if _call_name(node) == "Condition" and len(node.args) >= 3:
                    exprs.append(node.args[2])
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
                    if isinstance(stmt, ast.AnnAssign):
                        target = stmt.target
                    value = getattr(stmt, "value", None)
                    if isinstance(target, ast.Name) and target.id == "reason" and value:
                        exprs.append(value)
            for expr in exprs:
                if isinstance(node, ast.Call) and _call_name(node) == "event":
                    continue  # kopf.event(reason=event.reason): the Event itself, below
                where = f"{rel}:{expr.lineno}"
                for reason in _expand(expr, DYNAMIC, where):
                    if reason:  # "" is a dataclass default meaning "no reason", never written
                        found.setdefault(reason, where)
    return found


def event_reasons() -> dict[str, str]:
    """Event reason -> where it is posted (outcome.note/warn and the power plan's)."""
    found: dict[str, str] = {}
    for path, tree in _sources():
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in ("note", "warn") and node.args:
                where = f"{rel}:{node.lineno}"
                for reason in _expand(node.args[0], DYNAMIC_EVENTS, where):
                    found.setdefault(reason, where)
    return found


def test_collection_finds_the_known_ones() -> None:
    """The collector must be able to fail: it sees literal, class and computed reasons."""
    found = condition_reasons()
    for reason in ("HostUnavailable", "DiskProblem", "HostKeyMismatch", "SourceRunning"):
        assert reason in found
    assert {"BridgesReadyFalse", "HostMissingBridge", "Starting", "NoReadyHost"} <= set(found)
    events = event_reasons()
    assert {"DiskCreated", "ForcedOff", "LeftBehind", "ReachableFalse"} <= set(events)


def test_every_reason_the_code_sets_is_in_the_table() -> None:
    missing = {r: where for r, where in condition_reasons().items() if r not in REASONS}
    assert not missing, f"classify these in domain/reasons.py: {missing}"


def test_table_has_no_stale_reasons() -> None:
    stale = set(REASONS) - set(condition_reasons())
    assert not stale, f"no code sets these any more: {sorted(stale)}"


def test_reasons_are_camel_case() -> None:
    bad = [r for r in [*REASONS, *event_reasons()] if not CAMEL.match(r)]
    assert not bad


def _error_classes() -> list[type[KvmfleetError]]:
    for info in pkgutil.walk_packages(kvmfleet.__path__, "kvmfleet."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    seen: list[type[KvmfleetError]] = []
    todo: list[type[KvmfleetError]] = [KvmfleetError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += cls.__subclasses__()
    return seen


def test_error_classes_agree_with_the_table() -> None:
    """A PermanentError makes an object Stalled and a TemporaryError Reconciling wherever it
    is caught: the table must say the same of their reasons."""
    classes = _error_classes()
    assert len(classes) > 20
    for cls in classes:
        progress = REASONS.get(cls.reason)
        assert progress is not None, f"{cls.__module__}.{cls.__name__}: {cls.reason}"
        if issubclass(cls, PermanentError):
            assert progress is Progress.STALLED, f"{cls.__name__} ({cls.reason}) is permanent"
        elif issubclass(cls, TemporaryError):
            assert progress is Progress.RECONCILING, f"{cls.__name__} ({cls.reason}) retries"


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_not_ready_is_reconciling_xor_stalled(reason: str) -> None:
    conditions = {c.type: c for c in cond.summary(ready=False, reason=reason, message="m")}
    reconciling = conditions["Reconciling"].status is cond.Status.TRUE
    stalled = conditions["Stalled"].status is cond.Status.TRUE
    assert reconciling != stalled
    assert stalled == (REASONS[reason] is Progress.STALLED)
    assert {c.reason for c in conditions.values()} == {reason}


def test_summary_explicit_classification_wins() -> None:
    """A caught PermanentError is Stalled whatever its reason (the adapter classified it)."""
    result = {c.type: str(c.status) for c in cond.summary(ready=False, reason="X", message="m")}
    assert result == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    result = {
        c.type: str(c.status)
        for c in cond.summary(ready=False, reason="X", message="m", stalled=True)
    }
    assert result == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}


def test_every_reason_is_documented() -> None:
    text = CONDITIONS_MD.read_text()
    documented = set(re.findall(r"`([A-Z][A-Za-z0-9]*)`", text))
    missing = sorted(set(REASONS) - documented)
    assert not missing, f"list these in docs/conditions.md: {missing}"
    missing_events = sorted(set(event_reasons()) - documented)
    assert not missing_events, f"list these Events in docs/conditions.md: {missing_events}"


def test_documented_classification_matches_the_table() -> None:
    """docs/conditions.md's reason table says Reconciling/Stalled exactly as the code does."""
    rows = re.findall(
        r"^\| `([A-Za-z0-9]+)` \| (Done|Reconciling|Stalled) \|", CONDITIONS_MD.read_text(), re.M
    )
    assert rows, "docs/conditions.md has no reason table"
    documented = dict(rows)
    assert documented == {reason: str(progress) for reason, progress in REASONS.items()}

"""The CustomResourceDefinitions in crds/ and the manifests in examples/: structure and rules.

The schemas are checked the way kube-apiserver 1.20 would use them, without a server:
structural shape (a type and a description everywhere), RE2-only patterns, printer
columns, names, defaults as the API contract lists them, and a small validator (type,
enum, pattern, minimum, maximum, minLength, maxLength, maxItems, required, format
date-time, list-type uniqueness, defaulting) that follows Go's semantics where Python's
differ ($ is the end of the text in Go, while Python's $ also matches before a final
newline). Applying the same files to a real API server is the job of tests/integration.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"
INVALID = EXAMPLES / "invalid"
GROUP = "kvmfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kind -> (plural, singular, listKind, short name, scope)
KINDS = {
    "KvmHost": ("kvmhosts", "kvmhost", "KvmHostList", "kh", "Cluster"),
    "VirtualNode": ("virtualnodes", "virtualnode", "VirtualNodeList", "vn", "Namespaced"),
    "VmMaster": ("vmmasters", "vmmaster", "VmMasterList", "vmm", "Namespaced"),
}

Schema = dict[str, Any]
Errors = list[tuple[str, str]]


def _load_crds() -> dict[str, dict[str, Any]]:
    crds = {}
    for kind, (plural, *_rest) in KINDS.items():
        docs = list(yaml.safe_load_all((CRD_DIR / f"{plural}.{GROUP}.yaml").read_text()))
        assert len(docs) == 1, f"{plural}: one CRD per file"
        crds[kind] = docs[0]
    return crds


CRDS = _load_crds()


def schema_of(kind: str) -> Schema:
    schema: Schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def node_at(kind: str, path: str) -> Schema:
    """The schema node of a dotted path; `[]` steps into array items (spec.nics[].mac)."""
    node = schema_of(kind)
    for step in path.split("."):
        node = node["properties"][step.removesuffix("[]")]
        if step.endswith("[]"):
            node = node["items"]
    return node


def walk(node: Schema, path: str = "") -> Any:
    """Yield (path, node, is_property) for every schema node below and including node."""
    yield path, node, True
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        for sub_path, sub, is_prop in walk(node["items"], f"{path}[]"):
            yield sub_path, sub, is_prop and sub is not node["items"]


# --------------------------------------------------------------------------------------
# A small validator with the semantics of kube-apiserver 1.20 for the keywords used here.


@functools.cache
def _go_regexp(pattern: str) -> re.Pattern[str]:
    # Every pattern is ^...$ (test_patterns_are_re2_safe); Go's $ is the end of the text: \Z.
    assert pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")
    return re.compile(pattern[:-1] + r"\Z")


RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def apply_defaults(value: Any, schema: Schema) -> None:
    """Structural defaulting: fill absent properties with their default, then recurse."""
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
        for name, child in value.items():
            if name in schema.get("properties", {}):
                apply_defaults(child, schema["properties"][name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(item, schema["items"])


def validate(value: Any, schema: Schema, path: str = "") -> Errors:
    """Errors (path, message) of value against schema; unknown fields are errors too."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (TYPES["integer"](value) or isinstance(value, str)):
            return [(path, "must be an integer or a string")]
    elif not TYPES[schema["type"]](value):
        return [(path, f"must be of type {schema['type']}")]
    errors: Errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, f"{value!r} is not one of {schema['enum']}"))
    if isinstance(value, str):
        errors += _validate_string(value, schema, path)
    elif TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append((path, f"{value} is below the minimum {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append((path, f"{value} is above the maximum {schema['maximum']}"))
    elif isinstance(value, dict):
        errors += _validate_object(value, schema, path)
    elif isinstance(value, list):
        errors += _validate_array(value, schema, path)
    return errors


def _validate_string(value: str, schema: Schema, path: str) -> Errors:
    errors: Errors = []
    if "pattern" in schema and not _go_regexp(schema["pattern"]).match(value):
        errors.append((path, f"{value!r} does not match the pattern"))
    if len(value) > schema.get("maxLength", len(value)):
        errors.append((path, f"longer than {schema['maxLength']}"))
    if len(value) < schema.get("minLength", 0):
        errors.append((path, f"shorter than {schema['minLength']}"))
    if schema.get("format") == "date-time" and not RFC3339.fullmatch(value):
        errors.append((path, f"{value!r} is not an RFC 3339 date-time"))
    return errors


def _validate_object(value: dict[str, Any], schema: Schema, path: str) -> Errors:
    errors: Errors = [
        (_join(path, name), "required") for name in schema.get("required", []) if name not in value
    ]
    properties = schema.get("properties", {})
    for name, child in value.items():
        if name in properties:
            errors += validate(child, properties[name], _join(path, name))
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            # The API server would prune it silently: a manifest relying on that is wrong.
            errors.append((_join(path, name), "unknown field"))
    return errors


def _validate_array(value: list[Any], schema: Schema, path: str) -> Errors:
    errors: Errors = []
    if len(value) > schema.get("maxItems", len(value)):
        errors.append((path, f"more than {schema['maxItems']} items"))
    seen: list[Any] = []
    for index, item in enumerate(value):
        errors += validate(item, schema["items"], f"{path}[{index}]")
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map" and isinstance(item, dict):
            key = [item.get(k) for k in schema["x-kubernetes-list-map-keys"]]
        elif list_type == "set":
            key = item
        else:
            continue
        if key in seen:
            errors.append((f"{path}[{index}]", f"duplicate entry {key!r}"))
        seen.append(key)
    return errors


def validate_manifest(manifest: dict[str, Any]) -> Errors:
    """Default, then validate a kvmfleet object as the API server does (ObjectMeta aside)."""
    assert manifest["apiVersion"] == API_VERSION
    schema = schema_of(manifest["kind"])
    body = {k: copy.deepcopy(v) for k, v in manifest.items() if k != "metadata"}
    apply_defaults(body, schema)
    name_schema = schema["properties"]["metadata"]["properties"]["name"]
    return validate(manifest["metadata"]["name"], name_schema, "metadata.name") + validate(
        body, schema
    )


# --------------------------------------------------------------------------------------
# The CRD objects: names, scope, version, subresources, printer columns.


@pytest.mark.parametrize("kind", KINDS)
def test_names_scope_version_and_status_subresource(kind: str) -> None:
    plural, singular, list_kind, short, scope = KINDS[kind]
    crd = CRDS[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == scope
    assert spec["names"] == {
        "kind": kind,
        "listKind": list_kind,
        "plural": plural,
        "singular": singular,
        "shortNames": [short],
        "categories": ["kvmfleet"],
    }
    assert spec.get("preserveUnknownFields", False) is False
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}


PRINTER_COLUMNS = {
    "KvmHost": [
        ("Address", "string", ".spec.address"),
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
        ("Virtualization", "string", ".status.capabilities.virtualization"),
        ("VMs", "integer", ".status.domainCount"),
        ("Guest CPU", "string", ".status.guestCpu.default"),
        ("CPU", "string", ".status.cpuSummary"),
        ("Memory", "string", ".status.memorySummary"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ],
    "VirtualNode": [
        ("Host", "string", ".status.host"),
        ("Phase", "string", ".status.phase"),
        ("Power", "string", ".status.powerState"),
        ("CPUs", "integer", ".spec.cpus"),
        ("Memory", "string", ".spec.memory"),
        ("MAC", "string", ".status.nics[0].mac"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ],
    "VmMaster": [
        ("Source", "string", ".spec.sourceNode"),
        ("Mode", "string", ".spec.mode"),
        ("Clones", "integer", ".status.clones"),
        ("Phase", "string", ".status.phase"),
        ("Vintage", "date", ".status.vintage"),
    ],
}


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_point_at_typed_fields(kind: str) -> None:
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c["jsonPath"]) for c in columns] == PRINTER_COLUMNS[kind]
    for name, column_type, json_path in PRINTER_COLUMNS[kind]:
        if json_path == ".metadata.creationTimestamp":
            continue
        # .status.nics[0].mac and [?(...)] filters step into the items of a list.
        path = re.sub(r"\[[^\]]*\]", "[]", json_path).lstrip(".")
        node = node_at(kind, path)
        expected = {"date": ("string", "date-time"), "integer": ("integer", None)}.get(
            column_type, ("string", None)
        )
        if node.get("x-kubernetes-int-or-string"):
            assert column_type == "string", name
            continue
        assert (node["type"], node.get("format") if expected[1] else None) == expected, name


# --------------------------------------------------------------------------------------
# Structural schemas.

KEYWORDS = {
    "type", "description", "properties", "items", "required", "enum", "pattern", "format",
    "minimum", "maximum", "minLength", "maxLength", "maxItems", "default",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_node_is_typed_and_every_property_described(kind: str) -> None:
    root = schema_of(kind)
    problems = []
    for path, node, is_property in walk(root):
        if path == "metadata":
            # Only name may be restricted; a description here is refused by the API server.
            assert node == {"type": "object", "properties": {"name": node["properties"]["name"]}}
            continue
        if unknown := set(node) - KEYWORDS:
            problems.append(f"{path}: unexpected keywords {sorted(unknown)}")
        if node.get("x-kubernetes-int-or-string"):
            if "type" in node:
                problems.append(f"{path}: int-or-string must not have a type")
        elif node.get("type") not in TYPES:
            problems.append(f"{path}: no valid type")
        if is_property and not node.get("description", "").strip():
            problems.append(f"{path}: no description")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
        if (
            node.get("type") == "object"
            and not node.get("properties")
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            problems.append(f"{path}: object without properties would be pruned empty")
        if node.get("x-kubernetes-preserve-unknown-fields") and (
            node.get("type") != "object" or "properties" in node
        ):
            problems.append(f"{path}: preserve-unknown-fields must be a bare object")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: required {name} is not a property")
    assert problems == []
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert node_at(kind, "status.kopf") == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": node_at(kind, "status.kopf")["description"],
    }


@pytest.mark.parametrize("kind", KINDS)
def test_lists_are_typed_and_keyed(kind: str) -> None:
    for path, node, _ in walk(schema_of(kind)):
        if node.get("type") != "array":
            continue
        list_type = node.get("x-kubernetes-list-type")
        assert list_type in {"atomic", "set", "map"}, path
        if list_type == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in items.get("required", []), f"{path}: map key {key} not required"
                assert items["properties"][key]["type"] == "string", path
        else:
            assert "x-kubernetes-list-map-keys" not in node, path
        if path.startswith("spec."):
            assert "maxItems" in node, f"{path}: spec lists are bounded"


@pytest.mark.parametrize("kind", KINDS)
def test_spec_inputs_are_bounded(kind: str) -> None:
    """Every free-form spec string has a pattern and maxLength; every number has bounds."""
    for path, node, _ in walk(schema_of(kind)):
        if not path.startswith(("spec.", "metadata.")) or "enum" in node:
            continue
        if node.get("type") == "string" or node.get("x-kubernetes-int-or-string"):
            assert "pattern" in node and "maxLength" in node, path
        if node.get("type") in {"integer", "number"} or node.get("x-kubernetes-int-or-string"):
            assert "minimum" in node, path
        if node.get("type") in {"integer", "number"}:
            assert "maximum" in node, path


@pytest.mark.parametrize("kind", KINDS)
def test_enums_and_defaults_are_valid_for_their_node(kind: str) -> None:
    """The API server refuses a CRD whose defaults do not validate (after pruning)."""
    for path, node, _ in walk(schema_of(kind)):
        for value in node.get("enum", []):
            assert validate(value, {k: v for k, v in node.items() if k != "enum"}) == [], path
        if "default" in node:
            assert validate(node["default"], node, path) == [], path


def test_condition_schema_is_the_same_in_all_kinds() -> None:
    def without_descriptions(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
        return node

    shapes = [without_descriptions(node_at(kind, "status.conditions")) for kind in KINDS]
    assert shapes[0] == shapes[1] == shapes[2]
    items = node_at("KvmHost", "status.conditions[]")
    assert items["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
    assert items["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert items["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert items["properties"]["observedGeneration"]["type"] == "integer"
    assert shapes[0]["x-kubernetes-list-map-keys"] == ["type"]


def test_shared_rules_use_one_pattern() -> None:
    """The same concept is checked by the same pattern wherever it appears."""
    same = [
        [("KvmHost", "spec.bridges[].name"), ("KvmHost", "spec.bridges[].interface"),
         ("VirtualNode", "spec.nics[].bridge")],
        [("KvmHost", "spec.storagePools[].url"), ("VirtualNode", "spec.disks[].storage")],
        [("VirtualNode", "spec.memory"), ("VirtualNode", "spec.disks[].size")],
        [("KvmHost", "metadata.name"), ("VirtualNode", "metadata.name"),
         ("VmMaster", "metadata.name"), ("VirtualNode", "spec.hostRef"),
         ("VirtualNode", "spec.source.vmMaster"), ("VmMaster", "spec.sourceNode"),
         ("KvmHost", "spec.storagePools[].name"), ("KvmHost", "spec.allowedNamespaces[]"),
         ("VirtualNode", "spec.disks[].name"),
         ("KvmHost", "spec.sshKeySecretRef.namespace")],
    ]  # fmt: skip
    for group in same:
        patterns = {node_at(kind, path)["pattern"] for kind, path in group}
        assert len(patterns) == 1, group
    # A master image is a file: its storage is the disk storage without the phy: branch.
    disk = node_at("VirtualNode", "spec.disks[].storage")["pattern"]
    master = node_at("VmMaster", "spec.storage")["pattern"]
    assert re.sub(r"\|phy:.*\)\$$", ")$", disk) == master


# --------------------------------------------------------------------------------------
# Patterns: RE2 (Go regexp) accepts them and they mean the same in Go and in these tests.


def all_patterns() -> list[tuple[str, str]]:
    return [
        (f"{kind}:{path}", node["pattern"])
        for kind in KINDS
        for path, node, _ in walk(schema_of(kind))
        if "pattern" in node
    ]


NOT_RE2 = ["(?=", "(?!", "(?<=", "(?<!", "\\1", "(?>", "(?P=", "(?#"]
# Back-references, and classes whose meaning differs (\d is Unicode-wide in Python).
NOT_PORTABLE = re.compile(r"\\[1-9]|\\[dDwWsSbBAZ]|(?<!\\)[*+?}]\+")


def _top_level_alternation(pattern: str) -> bool:
    depth, in_class, escaped = 0, False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif char == "|" and depth == 0:
            return True
    return False


def test_patterns_are_re2_safe() -> None:
    patterns = all_patterns()
    assert len(patterns) > 30
    for where, pattern in patterns:
        re.compile(pattern)
        assert not [token for token in NOT_RE2 if token in pattern], where
        assert not NOT_PORTABLE.search(pattern), where
        # Go matches a pattern anywhere in the value: each one is anchored as a whole.
        assert pattern.startswith("^") and pattern.endswith("$"), where
        assert not _top_level_alternation(pattern[1:-1]), where


GO_PROGRAM = """
package main

import (
	"encoding/json"
	"os"
	"regexp"
)

func main() {
	var cases [][2]string
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := make([]bool, len(cases))
	for i, c := range cases {
		out[i] = regexp.MustCompile(c[0]).MatchString(c[1])
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


# --------------------------------------------------------------------------------------
# Field rules, table-driven: (kind, path, value, accepted).

MAC = "spec.nics[0].mac"
BRIDGE = "spec.bridges[0].name"
DISK_STORAGE = "spec.disks[0].storage"
ADDRESS = "spec.address"
URI = "spec.libvirtURI"
HOST_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIGqHnXcQk0Jb5e1hZ3m4y0c7t8QmDq2f1FZkq1oQbq3T"

CASES = [
    # MAC addresses: lower case, unicast (even first octet).
    ("VirtualNode", MAC, "52:54:00:12:34:56", True),
    ("VirtualNode", MAC, "aa:bb:cc:dd:ee:fe", True),
    ("VirtualNode", MAC, "AA:BB:CC:DD:EE:FF", False),
    ("VirtualNode", MAC, "52:54:00:AB:CD:EF", False),
    ("VirtualNode", MAC, "01:00:5e:00:00:01", False),
    ("VirtualNode", MAC, "ff:ff:ff:ff:ff:ff", False),
    ("VirtualNode", MAC, "52-54-00-12-34-56", False),
    ("VirtualNode", MAC, "52:54:00:12:34", False),
    ("VirtualNode", MAC, "52:54:00:12:34:56\n", False),
    # Bridge and interface names: Linux interface names, never "..".
    ("KvmHost", BRIDGE, "br0", True),
    ("KvmHost", BRIDGE, "virbr0", True),
    ("KvmHost", BRIDGE, "bond0.100", True),
    ("KvmHost", BRIDGE, "br-mgmt_1", True),
    ("KvmHost", BRIDGE, "abcdefghijklmno", True),
    ("KvmHost", BRIDGE, "abcdefghijklmnop", False),
    ("KvmHost", BRIDGE, "br0;reboot", False),
    ("KvmHost", BRIDGE, "br0..1", False),
    ("KvmHost", BRIDGE, "..", False),
    ("KvmHost", BRIDGE, ".br0", False),
    ("KvmHost", BRIDGE, "br 0", False),
    ("KvmHost", BRIDGE, "br$(id)", False),
    ("KvmHost", BRIDGE, "br/0", False),
    ("KvmHost", BRIDGE, "", False),
    ("KvmHost", BRIDGE, "br0\n", False),
    ("KvmHost", "spec.bridges[0].interface", "eth0;reboot", False),
    ("VirtualNode", "spec.nics[0].bridge", "br0;reboot", False),
    # Storage URLs: nfs://, dir://, phy:/dev; no "..", metacharacters or whitespace.
    ("VirtualNode", DISK_STORAGE, "nfs://192.168.5.73/install/vms", True),
    ("VirtualNode", DISK_STORAGE, "nfs://nfs.cluster.example/install/vms/", True),
    ("VirtualNode", DISK_STORAGE, "nfs://[fd00::1]/srv/vms", True),
    ("VirtualNode", DISK_STORAGE, "dir:///var/lib/kvmfleet/images", True),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/.vms/pool-1.2", True),
    ("VirtualNode", DISK_STORAGE, "phy:/dev/sdb1", True),
    ("VirtualNode", DISK_STORAGE, "phy:/dev/disk/by-path/pci-0000:00:1f.2-ata-1", True),
    ("VirtualNode", DISK_STORAGE, "../etc", False),
    ("VirtualNode", DISK_STORAGE, "dir:///install/vms/../../etc", False),
    ("VirtualNode", DISK_STORAGE, "nfs://server/install/../etc", False),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/./vms", False),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/vms..old", False),
    ("VirtualNode", DISK_STORAGE, "phy:/dev/../etc/shadow", False),
    ("VirtualNode", DISK_STORAGE, "phy:/etc/shadow", False),
    ("VirtualNode", DISK_STORAGE, "dir://relative/path", False),
    ("VirtualNode", DISK_STORAGE, "dir:///", False),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/vms;reboot", False),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/$(reboot)", False),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/my vms", False),
    ("VirtualNode", DISK_STORAGE, "dir:///srv/vms\n", False),
    ("VirtualNode", DISK_STORAGE, "nfs://server/vms?x=1", False),
    ("VirtualNode", DISK_STORAGE, "nfs://300.1.1.1/vms", False),
    ("VirtualNode", DISK_STORAGE, "file:///srv/vms", False),
    ("KvmHost", "spec.storagePools[0].url", "dir:///srv/../etc", False),
    ("VmMaster", "spec.storage", "dir:///srv/masters", True),
    ("VmMaster", "spec.storage", "nfs://192.168.5.73/vms/kvm", True),
    ("VmMaster", "spec.storage", "phy:/dev/sdb1", False),
    ("VmMaster", "spec.storage", "../etc", False),
    # Addresses: hostname, IPv4 or IPv6; no whitespace, metacharacters or option syntax.
    ("KvmHost", ADDRESS, "kvmhost1", True),
    ("KvmHost", ADDRESS, "kvmhost1.cluster.example", True),
    ("KvmHost", ADDRESS, "KVMHOST1", True),
    ("KvmHost", ADDRESS, "10.77.0.11", True),
    ("KvmHost", ADDRESS, "fd00::11", True),
    ("KvmHost", ADDRESS, "::1", True),
    ("KvmHost", ADDRESS, "2001:db8:0:0:0:0:0:1", True),
    ("KvmHost", ADDRESS, "kvmhost1\n", False),
    ("KvmHost", ADDRESS, "kvmhost1\nreboot", False),
    ("KvmHost", ADDRESS, "kvm host1", False),
    ("KvmHost", ADDRESS, "kvmhost1;reboot", False),
    ("KvmHost", ADDRESS, "-oProxyCommand=reboot", False),
    ("KvmHost", ADDRESS, "root@kvmhost1", False),
    ("KvmHost", ADDRESS, "10.0.0.256", False),
    ("KvmHost", ADDRESS, "[fd00::11]", False),
    ("KvmHost", ADDRESS, "fd00::11%eth0", False),
    ("KvmHost", ADDRESS, "1:2:3:4:5:6:7:8:9", False),
    ("KvmHost", ADDRESS, "host_1", False),
    ("KvmHost", ADDRESS, "", False),
    # SSH user, port and key.
    ("KvmHost", "spec.user", "root", True),
    ("KvmHost", "spec.user", "kvm-admin", True),
    ("KvmHost", "spec.user", "-oProxyCommand=reboot", False),
    ("KvmHost", "spec.user", "root;reboot", False),
    ("KvmHost", "spec.user", "kvm.admin", False),
    ("KvmHost", "spec.user", "1root", False),
    ("KvmHost", "spec.port", 22, True),
    ("KvmHost", "spec.port", 0, False),
    ("KvmHost", "spec.port", 65536, False),
    ("KvmHost", "spec.hostKey", f"ssh-ed25519 {HOST_KEY}", True),
    ("KvmHost", "spec.hostKey", f"ssh-ed25519 {HOST_KEY} root@kvmhost1", True),
    ("KvmHost", "spec.hostKey", f"kvmhost1 ssh-ed25519 {HOST_KEY}", False),
    ("KvmHost", "spec.hostKey", f"ssh-ed25519 {HOST_KEY}\nssh-rsa AAAAB3", False),
    ("KvmHost", "spec.hostKey", "ssh-ed25519", False),
    ("KvmHost", "spec.hostKeyPolicy", "TrustOnFirstUse", True),
    ("KvmHost", "spec.hostKeyPolicy", "AcceptAny", False),
    ("KvmHost", "spec.sshKeySecretRef.name", "kvmhost1-ssh", True),
    ("KvmHost", "spec.sshKeySecretRef.name", "../kvmhost1-ssh", False),
    # libvirt URI override: SSH transports only, and no parameter that bypasses the checks.
    ("KvmHost", URI, "qemu+ssh://root@kvmhost1:2222/system", True),
    ("KvmHost", URI, "qemu+libssh2://root@10.77.0.11/system", True),
    ("KvmHost", URI, "qemu+ssh://root@[fd00::11]/system", True),
    ("KvmHost", URI, "qemu+ssh://kvmhost1/system?mode=direct&proxy=native", True),
    ("KvmHost", URI, "qemu+libssh://kvmhost1/system?sshauth=privkey,agent&no_tty=1", True),
    ("KvmHost", URI, "qemu+ssh://kvmhost1/system?netcat=/tmp/evil", False),
    ("KvmHost", URI, "qemu+ssh://kvmhost1/system?socket=/tmp/evil.sock", False),
    ("KvmHost", URI, "qemu+ssh://kvmhost1/system?mode=direct;reboot", False),
    ("KvmHost", URI, "qemu+ext:///system?command=/bin/sh", False),
    ("KvmHost", URI, "qemu+tcp://kvmhost1/system", False),
    ("KvmHost", URI, "qemu:///system", False),
    ("KvmHost", URI, "qemu+ssh://root@kvmhost1/system?no_verify=1", False),
    ("KvmHost", URI, "qemu+ssh://root@kvmhost1/system?keyfile=/etc/shadow", False),
    ("KvmHost", URI, "qemu+ssh://root@kvmhost1/session", False),
    ("KvmHost", URI, "qemu+ssh://root@kvmhost1:65536/system", False),
    ("KvmHost", URI, "qemu+ssh://kvm.admin@kvmhost1/system", False),
    ("KvmHost", URI, "qemu+ssh://-oProxyCommand=x@kvmhost1/system", False),
    # Host-wide settings.
    ("KvmHost", "spec.overcommit.cpu", 0.1, True),
    ("KvmHost", "spec.overcommit.cpu", 1.5, True),
    ("KvmHost", "spec.overcommit.cpu", 64, True),
    ("KvmHost", "spec.overcommit.cpu", 0, False),
    ("KvmHost", "spec.overcommit.cpu", 0.05, False),
    ("KvmHost", "spec.overcommit.memory", 65, False),
    ("KvmHost", "spec.nfsAccess", "Direct", True),
    ("KvmHost", "spec.nfsAccess", "Kernel", False),
    ("KvmHost", "spec.allowedNamespaces", ["team-a", "team-b"], True),
    ("KvmHost", "spec.allowedNamespaces", ["team-a", "team-a"], False),
    ("KvmHost", "spec.allowedNamespaces", ["Team_A"], False),
    ("KvmHost", "spec.bridges", [{"name": "br0"}, {"name": "br0"}], False),
    # VirtualNode sizes.
    ("VirtualNode", "spec.cpus", 1, True),
    ("VirtualNode", "spec.cpus", 512, True),
    ("VirtualNode", "spec.cpus", 0, False),
    ("VirtualNode", "spec.cpus", -1, False),
    ("VirtualNode", "spec.cpus", 513, False),
    ("VirtualNode", "spec.cpus", "2", False),
    ("VirtualNode", "spec.memory", "1Gi", True),
    ("VirtualNode", "spec.memory", "1536Mi", True),
    ("VirtualNode", "spec.memory", "1.5Gi", True),
    ("VirtualNode", "spec.memory", "2G", True),
    ("VirtualNode", "spec.memory", 1073741824, True),
    ("VirtualNode", "spec.memory", 1024, False),
    ("VirtualNode", "spec.memory", "1024", False),
    ("VirtualNode", "spec.memory", "0Gi", False),
    ("VirtualNode", "spec.memory", "1K", False),
    ("VirtualNode", "spec.memory", "1GB", False),
    ("VirtualNode", "spec.memory", "-1Gi", False),
    ("VirtualNode", "spec.memory", "1 Gi", False),
    ("VirtualNode", "spec.memory", "1Gi\n", False),
    ("VirtualNode", "spec.memory", True, False),
    ("VirtualNode", "spec.disks[0].size", "20G", True),
    ("VirtualNode", "spec.disks[0].size", "20", False),
    # Disks, NICs and the rest of spec.
    ("VirtualNode", "spec.disks[0].name", "vdb", True),
    ("VirtualNode", "spec.disks[0].name", "root", True),
    ("VirtualNode", "spec.disks[0].name", "data-1", True),
    ("VirtualNode", "spec.disks[0].name", "HDA", False),
    ("VirtualNode", "spec.disks[0].name", "hda;", False),
    ("VirtualNode", "spec.disks[0].name", "hda.qcow2", False),
    ("VirtualNode", "spec.disks[0].name", "../hda", False),
    ("VirtualNode", "spec.disks[0].name", "-hda", False),
    ("VirtualNode", "spec.disks[0].name", "d" * 64, False),
    ("VirtualNode", "spec.disks[0].bus", "scsi", True),
    ("VirtualNode", "spec.disks[0].bus", "usb", False),
    ("VirtualNode", "spec.disks", [{"name": "hda"}, {"name": "hda"}], False),
    ("VirtualNode", "spec.nics[0].model", "e1000", True),
    ("VirtualNode", "spec.nics[0].model", "ne2k_pci", False),
    ("VirtualNode", "spec.nics", [{"bridge": "br0"}] * 33, False),
    ("VirtualNode", "spec.nics", [{"model": "virtio"}], False),
    ("VirtualNode", "spec.bootOrder", ["hd"], True),
    ("VirtualNode", "spec.bootOrder", ["hd", "hd"], False),
    ("VirtualNode", "spec.bootOrder", ["floppy"], False),
    ("VirtualNode", "spec.serial.speed", 9600, True),
    ("VirtualNode", "spec.serial.speed", 12345, False),
    ("VirtualNode", "spec.serial.port", 4, False),
    ("VirtualNode", "spec.runStrategy", "Manual", True),
    ("VirtualNode", "spec.runStrategy", "Sometimes", False),
    ("VirtualNode", "spec.reclaimPolicy", "Delete", True),
    ("VirtualNode", "spec.reclaimPolicy", "Recycle", False),
    ("VirtualNode", "spec.shutdownGracePeriodSeconds", 0, True),
    ("VirtualNode", "spec.shutdownGracePeriodSeconds", -1, False),
    ("VirtualNode", "spec.source", {"vmMaster": "kvmm", "mode": "Detached"}, True),
    ("VirtualNode", "spec.source", {"mode": "Detached"}, False),
    ("VirtualNode", "spec.source", {"vmMaster": "kvmm", "mode": "Linked"}, False),
    ("VirtualNode", "spec.hostRef", "kvmhost1", True),
    ("VirtualNode", "spec.hostRef", "KvmHost1", False),
    ("VirtualNode", "spec.os", "rhels6.2", True),
    ("VirtualNode", "spec.os", "rhels6 ;reboot", False),
    ("VirtualNode", "metadata.name", "kvm1.example", False),
    ("VmMaster", "spec.mode", "Detached", True),
    ("VmMaster", "spec.mode", "detached", False),
    # Status, as the operator writes it through the status subresource.
    ("VirtualNode", "status.conditions[0].status", "Maybe", False),
    ("VirtualNode", "status.conditions[0].reason", "", False),
    ("VirtualNode", "status.conditions[0].lastTransitionTime", "yesterday", False),
    ("VirtualNode", "status.powerState", "Paused", True),
    ("VirtualNode", "status.powerState", "Running", False),
    ("VirtualNode", "status.phase", "Migrating", True),
    ("VirtualNode", "status.phase", "Rebooting", False),
    ("VirtualNode", "status.lastActions.reboot", "2024-05-01T10:00:00Z", True),
    ("VirtualNode", "status.lastActions.reboot", "2024-05-01", False),
    ("VirtualNode", "status.kopf", {"progress": {"anything": {"goes": 1}}}, True),
    ("KvmHost", "status.capabilities.virtualization", "emulated", True),
    ("KvmHost", "status.capabilities.virtualization", "tcg", False),
    ("VmMaster", "status.phase", "Capturing", True),
    ("VmMaster", "status.clones", -1, False),
]

CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "Running",
    "message": "",
    "lastTransitionTime": "2024-05-01T10:00:00Z",
    "observedGeneration": 1,
}
BASES = {
    "KvmHost": {
        "spec": {
            "address": "kvmhost1",
            "sshKeySecretRef": {"name": "kvmhost1-ssh", "namespace": "kvmfleet-system"},
            "bridges": [{"name": "br0", "interface": "eth0"}],
            "storagePools": [{"name": "vms", "url": "nfs://192.168.5.73/install/vms"}],
        },
        "status": {"conditions": [CONDITION], "capabilities": {"virtualization": "kvm"}},
    },
    "VirtualNode": {
        "spec": {
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda", "size": "20Gi"}],
        },
        "status": {"conditions": [CONDITION], "lastActions": {}},
    },
    "VmMaster": {"spec": {"sourceNode": "kvm1"}, "status": {"conditions": [CONDITION]}},
}


def with_value(kind: str, path: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASES[kind])
    manifest |= {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "x"}}
    steps = [int(s) if s.isdigit() else s for s in re.findall(r"[^.\[\]]+", path)]
    parent = manifest
    for step in steps[:-1]:
        parent = parent[step] if isinstance(step, int) else parent.setdefault(step, {})
    parent[steps[-1]] = value
    return manifest


def _errors_only_at(errors: Errors, path: str) -> bool:
    return bool(errors) and all(
        where == path or where.startswith((f"{path}.", f"{path}[")) for where, _ in errors
    )


def test_bases_are_valid() -> None:
    for kind in KINDS:
        assert validate_manifest(with_value(kind, "metadata.name", "x")) == []


@pytest.mark.parametrize(
    ("kind", "path", "value", "accepted"),
    CASES,
    ids=[f"{k}:{p}={v!r}"[:80] for k, p, v, _ in CASES],
)
def test_field_rule(kind: str, path: str, value: Any, accepted: bool) -> None:
    errors = validate_manifest(with_value(kind, path, value))
    if accepted:
        assert errors == []
    else:
        assert _errors_only_at(errors, path), errors


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (RE2 regexp)")
def test_go_regexp_agrees_with_these_tests(tmp_path: Path) -> None:
    """Compile every pattern with Go's regexp (what the API server runs) and match the cases."""
    checks: list[tuple[str, str]] = [(pattern, "") for _, pattern in all_patterns()]
    for kind, path, value, _ in CASES:
        node = node_at(kind, re.sub(r"\[\d+\]", "[]", path))
        if "pattern" in node and isinstance(value, str):
            checks.append((node["pattern"], value))
    program = tmp_path / "match.go"
    program.write_text(GO_PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in {"GOFLAGS", "GOPATH"}}
    env["GO111MODULE"] = "off"
    result = subprocess.run(
        ["go", "run", str(program)],
        input=json.dumps(checks),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    go_says = json.loads(result.stdout)
    python_says = [bool(_go_regexp(pattern).match(value)) for pattern, value in checks]
    disagreements = [c for c, g, p in zip(checks, go_says, python_says, strict=True) if g != p]
    assert disagreements == []


# --------------------------------------------------------------------------------------
# Defaults: exactly those of the API contract, applied by the schema.


def test_defaults_of_an_empty_virtualnode() -> None:
    manifest: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "VirtualNode"}
    apply_defaults(manifest, schema_of("VirtualNode"))
    assert manifest["spec"] == {
        "cpus": 1,
        "cpu": {"mode": "auto"},
        "memory": "1Gi",
        "nics": [],
        "disks": [],
        "bootOrder": ["network", "hd"],
        "serial": {"port": 0, "speed": 115200},
        "vnc": {"enabled": True},
        "runStrategy": "Always",
        "reclaimPolicy": "Retain",
        "shutdownGracePeriodSeconds": 60,
    }


def test_defaults_inside_virtualnode_items() -> None:
    spec = {
        "nics": [{"bridge": "br0"}],
        "disks": [{"name": "hda", "size": "20Gi"}],
        "source": {"vmMaster": "kvmm"},
        "serial": {"speed": 9600},
    }
    apply_defaults(spec, node_at("VirtualNode", "spec"))
    assert spec["nics"] == [{"bridge": "br0", "model": "virtio"}]
    assert spec["disks"] == [{"name": "hda", "size": "20Gi", "bus": "virtio"}]
    assert spec["source"] == {"vmMaster": "kvmm", "mode": "Attached"}
    assert spec["serial"] == {"speed": 9600, "port": 0}
    assert "hostRef" not in spec


def test_defaults_of_a_minimal_kvmhost() -> None:
    spec: dict[str, Any] = {
        "address": "kvmhost1",
        "sshKeySecretRef": {"name": "kvmhost1-ssh", "namespace": "kvmfleet-system"},
        "overcommit": {"cpu": 2},
    }
    apply_defaults(spec, node_at("KvmHost", "spec"))
    assert spec == {
        "address": "kvmhost1",
        "port": 22,
        "user": "root",
        "sshKeySecretRef": {
            "name": "kvmhost1-ssh",
            "namespace": "kvmfleet-system",
            "key": "ssh-privatekey",
        },
        "hostKeyPolicy": "Strict",
        "bridges": [],
        "storagePools": [],
        "nfsAccess": "Mount",
        "maintenance": False,
        "allowedNamespaces": [],
        "overcommit": {"cpu": 2, "memory": 1},
    }
    assert node_at("KvmHost", "spec.overcommit")["default"] == {"cpu": 4, "memory": 1}


def test_defaults_of_a_minimal_vmmaster() -> None:
    spec = {"sourceNode": "kvm1"}
    apply_defaults(spec, node_at("VmMaster", "spec"))
    assert spec == {"sourceNode": "kvm1", "mode": "Attached"}


# --------------------------------------------------------------------------------------
# Every field of the API contract is in the schema, under its exact name.

CONTRACT = {
    "KvmHost": {
        "spec": {
            "address", "port", "user", "sshKeySecretRef", "hostKey", "hostKeyPolicy",
            "libvirtURI", "bridges", "storagePools", "nfsAccess", "maintenance",
            "allowedNamespaces", "overcommit", "migrationGroup",
        },
        "status": {
            "observedGeneration", "conditions", "hostKey", "hostKeyFingerprint", "capabilities",
            "allocated", "allocatable", "bridges", "storagePools", "domains", "lastProbeTime",
            "kopf",
            # Added for the printer columns (a list length or a ratio is not a JSONPath).
            "domainCount", "cpuSummary", "memorySummary",
            # Which guest CPU configurations start a trial guest there.
            "guestCpu",
        },
        "spec.sshKeySecretRef": {"name", "namespace", "key"},
        "spec.bridges[]": {"name", "interface"},
        "spec.storagePools[]": {"name", "url"},
        "spec.overcommit": {"cpu", "memory"},
        "status.capabilities": {
            "arch", "cpuModel", "cpus", "memoryMiB", "virtualization", "libvirtVersion",
            "qemuVersion",
        },
        "status.allocated": {"cpus", "memoryMiB"},
        "status.allocatable": {"cpus", "memoryMiB"},
        "status.bridges[]": {"name", "interface", "ready"},
        "status.storagePools[]": {"name", "url", "path", "capacityBytes", "availableBytes"},
        "status.domains[]": {"name", "state", "disks"},
        "status.guestCpu": {"probedFor", "default", "working", "trials", "hostCpu", "group"},
        "status.guestCpu.trials[]": {"mode", "model", "works", "message"},
        "status.guestCpu.hostCpu": {"arch", "model", "vendor", "features"},
        "status.guestCpu.group": {
            "name", "members", "choice", "model", "features", "works", "message",
        },
    },
    "VirtualNode": {
        "spec": {
            "hostRef", "cpus", "cpu", "memory", "nics", "disks", "source", "bootOrder", "serial",
            "vnc", "runStrategy", "reclaimPolicy", "shutdownGracePeriodSeconds", "os",
            "arch", "profile",
        },
        "status": {
            "observedGeneration", "conditions", "phase", "host", "domainUUID", "powerState",
            "nics", "disks", "console", "migration", "restartRequired", "kopf", "powerTransition", "deletion", "pauseReason",
            "lastActions",
        },
        "spec.nics[]": {"bridge", "model", "mac"},
        "spec.disks[]": {"name", "size", "storage", "bus", "adopt"},
        "spec.source": {"vmMaster", "mode"},
        "spec.serial": {"port", "speed"},
        "spec.vnc": {"enabled"},
        "spec.cpu": {"mode", "model"},
        "status.nics[]": {"bridge", "model", "mac"},
        "status.disks[]": {"name", "url", "path", "format", "virtualSizeBytes", "backingFile"},
        "status.console": {"serial", "vnc"},
        "status.console.serial": {"host", "device"},
        "status.console.vnc": {"host", "port", "passwordSecretRef", "expiresAt"},
        "status.console.vnc.passwordSecretRef": {"name", "key"},
        "status.migration": {
            "phase", "kind", "source", "target", "startTime", "endTime", "dataTotal",
            "dataRemaining", "attempts", "message",
        },
        "status.lastActions": {"start", "stop", "reboot", "reset", "consoleCredentials"},
    },
    "VmMaster": {
        "spec": {"sourceNode", "mode", "storage"},
        "status": {
            "observedGeneration", "conditions", "phase", "os", "arch", "profile", "nics",
            "storage", "vintage", "originator", "disks", "clones", "kopf",
            "host", "sourceNode", "mode", "dependants",
        },
        "status.nics[]": {"bridge", "model", "mac"},
        "status.disks[]": {
            "name", "url", "path", "format", "virtualSizeBytes", "actualSizeBytes",
        },
    },
}  # fmt: skip

ENUMS = {
    ("KvmHost", "spec.hostKeyPolicy"): ["Strict", "TrustOnFirstUse"],
    ("KvmHost", "spec.nfsAccess"): ["Mount", "Direct"],
    ("KvmHost", "status.capabilities.virtualization"): ["kvm", "emulated"],
    ("VirtualNode", "spec.nics[].model"): ["virtio", "e1000", "rtl8139"],
    ("VirtualNode", "spec.disks[].bus"): ["virtio", "scsi", "ide"],
    ("VirtualNode", "spec.source.mode"): ["Attached", "Detached"],
    ("VirtualNode", "spec.bootOrder[]"): ["network", "hd", "cdrom"],
    ("VirtualNode", "spec.runStrategy"): ["Always", "Halted", "Manual"],
    ("VirtualNode", "spec.cpu.mode"): [
        "auto", "host-model", "host-passthrough", "maximum", "custom", "hypervisor-default",
    ],
    ("VirtualNode", "spec.reclaimPolicy"): ["Retain", "Delete"],
    ("VirtualNode", "status.phase"): [
        "Pending", "Scheduling", "Provisioning", "Stopped", "Starting", "Running", "Paused",
        "Migrating", "Failed", "Terminating", "Unknown",
    ],
    ("VirtualNode", "status.powerState"): ["On", "Off", "Paused", "Crashed", "Unknown"],
    ("VmMaster", "spec.mode"): ["Attached", "Detached"],
    ("VmMaster", "status.phase"): ["Pending", "Capturing", "Ready", "Failed", "Terminating"],
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_contract_fields_exist_under_their_names(kind: str) -> None:
    for path, fields in CONTRACT[kind].items():
        assert set(node_at(kind, path)["properties"]) == fields, path
    assert node_at(kind, "status.observedGeneration")["type"] == "integer"


def test_contract_enums() -> None:
    for (kind, path), values in ENUMS.items():
        assert node_at(kind, path)["enum"] == values, (kind, path)


def test_required_fields() -> None:
    assert node_at("KvmHost", "spec")["required"] == ["address", "sshKeySecretRef"]
    assert node_at("KvmHost", "spec.sshKeySecretRef")["required"] == ["name", "namespace"]
    assert node_at("VmMaster", "spec")["required"] == ["sourceNode"]
    assert "required" not in node_at("VirtualNode", "spec")
    assert node_at("VirtualNode", "spec")["default"] == {}


# --------------------------------------------------------------------------------------
# Example manifests.


def load_examples() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(EXAMPLES.glob("*.yaml"))
    }


def test_examples_validate() -> None:
    examples = load_examples()
    assert set(examples) == {"kvmhost1.yaml", "kvm1.yaml", "kvmm.yaml"}
    checked = 0
    for name, docs in examples.items():
        for doc in docs:
            if doc["apiVersion"] == API_VERSION:
                assert validate_manifest(doc) == [], name
                checked += 1
    assert checked == 3


def _one(examples: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    [found] = [doc for docs in examples.values() for doc in docs if doc["kind"] == kind]
    return found


def test_examples_tell_the_xcat_story() -> None:
    examples = load_examples()
    host, vm, master = (_one(examples, k) for k in ("KvmHost", "VirtualNode", "VmMaster"))
    secret = _one(examples, "Secret")

    assert host["metadata"]["name"] == "kvmhost1"
    assert "namespace" not in host["metadata"]
    assert host["spec"]["bridges"] == [{"name": "br0", "interface": "eth0"}]
    assert host["spec"]["storagePools"]
    ref = host["spec"]["sshKeySecretRef"]
    assert secret["type"] == "kubernetes.io/ssh-auth"
    assert (ref["name"], ref["namespace"]) == (
        secret["metadata"]["name"],
        secret["metadata"]["namespace"],
    )
    assert ref.get("key", "ssh-privatekey") in secret["stringData"]

    assert (vm["metadata"]["name"], vm["metadata"]["namespace"]) == ("kvm1", "default")
    spec = vm["spec"]
    assert (spec["cpus"], spec["memory"]) == (2, "1Gi")
    assert spec["nics"] == [{"bridge": "br0", "model": "virtio"}]
    assert [(d["name"], d["size"]) for d in spec["disks"]] == [("hda", "20Gi")]
    assert spec["serial"] == {"port": 0, "speed": 115200}
    assert spec["hostRef"] == host["metadata"]["name"]
    assert {n["bridge"] for n in spec["nics"]} <= {b["name"] for b in host["spec"]["bridges"]}

    assert (master["metadata"]["name"], master["metadata"]["namespace"]) == ("kvmm", "default")
    assert master["spec"]["sourceNode"] == "kvm1"


INVALID_HEADER = re.compile(r"# INVALID (?P<path>[A-Za-z0-9_.\[\]]+): \S.*")


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_examples_are_refused_for_the_stated_reason(path: Path) -> None:
    text = path.read_text()
    header = INVALID_HEADER.fullmatch(text.splitlines()[0])
    assert header, f"{path.name}: the first line must be '# INVALID <field path>: <why>'"
    [manifest] = [doc for doc in yaml.safe_load_all(text) if doc]
    errors = validate_manifest(manifest)
    assert _errors_only_at(errors, header["path"]), errors


def test_invalid_examples_cover_the_brief() -> None:
    names = {p.name for p in INVALID.glob("*.yaml")}
    assert {"cpus-zero.yaml", "mac-uppercase.yaml", "nic-model-enum.yaml"} <= names
    assert len(names) >= 5


def test_jsonschema_agrees_on_the_examples() -> None:
    """A second opinion from the jsonschema package, where it is installed."""
    jsonschema = pytest.importorskip("jsonschema")
    for docs in load_examples().values():
        for doc in docs:
            if doc["apiVersion"] == API_VERSION:
                body = {k: v for k, v in doc.items() if k != "metadata"}
                jsonschema.Draft4Validator(schema_of(doc["kind"])).validate(body)
    for path in sorted(INVALID.glob("*.yaml")):
        [doc] = [d for d in yaml.safe_load_all(path.read_text()) if d]
        body = {k: v for k, v in doc.items() if k != "metadata"}
        assert not jsonschema.Draft4Validator(schema_of(doc["kind"])).is_valid(body), path.name

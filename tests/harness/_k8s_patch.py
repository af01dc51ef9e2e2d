"""Patch semantics and label selectors for the Kubernetes API stand-in (tests/harness/k8s_api.py).

JSON merge patch (RFC 7386), a strategic merge patch reduced to the shapes the bot sends (lists of
containers, env, ports, volumes merge by their key; other lists are replaced), JSON patch (RFC 6902:
add, remove, replace, test), and equality-based label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

Json = dict[str, Any]

#: strategic-merge list keys, by field name (what the apimachinery struct tags say for these fields)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
}

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class PatchError(ValueError):
    """The patch document cannot be applied (answered 422 by the stand-in)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str | None = None) -> Any:
    """Like a merge patch, except that keyed lists (`MERGE_KEYS`) merge element by element."""
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        return _merge_keyed_list(target, patch, MERGE_KEYS[field])
    if field == "ports" and isinstance(patch, list) and isinstance(target, list):
        key = "containerPort" if all("containerPort" in p for p in patch) else "port"
        return _merge_keyed_list(target, patch, key)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives ($patch, $setElementOrder) are not used by the bot
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    return result


def _merge_keyed_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    result = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}")
        same = [i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item[key]]
        index = same[0] if same else None
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 with the operations the bot may send: add, remove, replace, test."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation {op!r}")
        doc = _apply_op(doc, op)
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _apply_op(doc: Any, op: Json) -> Any:
    parts = _pointer(op["path"])
    kind = op["op"]
    if not parts:
        if kind in ("add", "replace"):
            return copy.deepcopy(op.get("value"))
        raise PatchError(f"cannot {kind} the whole document")
    parent = doc
    for part in parts[:-1]:
        parent = _child(parent, part, op["path"])
    last = parts[-1]
    if kind == "test":
        if _child(parent, last, op["path"]) != op.get("value"):
            raise PatchError(f"testing value {op['path']} failed")
    elif kind == "remove":
        _child(parent, last, op["path"])
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    elif kind in ("add", "replace"):
        if "value" not in op:
            raise PatchError(f"{kind} needs a value")
        value = copy.deepcopy(op["value"])
        if kind == "replace":
            _child(parent, last, op["path"])
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            elif kind == "add":
                parent.insert(_index(parent, last, op["path"], allow_end=True), value)
            else:
                parent[_index(parent, last, op["path"])] = value
        elif isinstance(parent, dict):
            parent[last] = value
        else:
            raise PatchError(f"{op['path']}: parent is not a container")
    else:
        raise PatchError(f"unsupported operation {kind!r}")
    return doc


def _index(items: list[Any], part: str, path: str, *, allow_end: bool = False) -> int:
    if not part.isdigit() or int(part) > len(items) - (0 if allow_end else 1):
        raise PatchError(f"{path}: index {part!r} out of range")
    return int(part)


def _child(parent: Any, part: str, path: str) -> Any:
    if isinstance(parent, dict):
        if part not in parent:
            raise PatchError(f"{path}: missing value")
        return parent[part]
    if isinstance(parent, list):
        return parent[_index(parent, part, path)]
    raise PatchError(f"{path}: missing value")


def apply_patch(content_type: str, target: Json, body: Any) -> Json:
    """Apply `body` to `target` as the Content-Type says; `PatchError` for an unusable patch."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == JSON_PATCH:
        result = json_patch(target, body)
    elif mime == MERGE_PATCH:
        result = merge_patch(target, body)
    elif mime == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(target, body)
    else:
        raise ValueError(f"unsupported patch type {content_type!r}")
    if not isinstance(result, dict):
        raise PatchError("the patched object is not an object")
    return result


def parse_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """An equality-based label selector as a predicate over a label map; ValueError if malformed."""
    requirements: list[tuple[str, str, str | None]] = []  # (operator, key, value)
    for raw in filter(None, (part.strip() for part in text.split(","))):
        if " in " in raw or " notin " in raw or "(" in raw:
            raise ValueError(f"set-based requirement {raw!r} is not supported by the stand-in")
        if "!=" in raw:
            key, value = (s.strip() for s in raw.split("!=", 1))
            requirements.append(("!=", key, value))
        elif "=" in raw:
            key, value = (s.strip() for s in raw.replace("==", "=").split("=", 1))
            requirements.append(("=", key, value))
        elif raw.startswith("!"):
            requirements.append(("!", raw[1:].strip(), None))
        else:
            requirements.append(("exists", raw, None))
    if any(not key for _, key, _ in requirements):
        raise ValueError(f"invalid label selector {text!r}")

    def matches(labels: Mapping[str, str]) -> bool:
        for op, key, value in requirements:
            if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value):
                return False
            if (op == "!" and key in labels) or (op == "exists" and key not in labels):
                return False
        return True

    return matches

"""Read and write `cosyvoice.yaml` (HyperPyYAML style) without hyperpyyaml.

The release describes its models as HyperPyYAML objects. We do not want that library to
import and build upstream classes, so tagged nodes become plain dicts:

- `!new:pkg.mod.Class {k: v}`    → `{"__class__": "pkg.mod.Class", "k": v}`
- `!name:pkg.mod.func {k: v}`    → `{"__partial__": "pkg.mod.func", "k": v}`
- `!apply:pkg.mod.func [a, b]`   → `{"__apply__": "pkg.mod.func", "args": [a, b]}` (never run)
- `!ref <key>` / `!ref <a[b]>`   → the referenced value (the same object), resolved after the
  whole document is read; `!ref <x> * 2` style arithmetic on numbers is evaluated.

The writer emits the same forms; `Ref("<key>")` writes a `!ref`.
"""
from __future__ import annotations

import ast
import dataclasses
import operator
import re
from pathlib import Path
from typing import Any

import yaml

CLASS_KEY = "__class__"
PARTIAL_KEY = "__partial__"
APPLY_KEY = "__apply__"
_TAG_KEYS = {"!new:": CLASS_KEY, "!name:": PARTIAL_KEY}
_REF_RE = re.compile(r"<([^<>]+)>")


@dataclasses.dataclass(frozen=True)
class Ref:
    """A `!ref` expression, e.g. `Ref("<sample_rate>")`."""

    expr: str


class CosyVoiceYamlError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    pass


def _construct_tagged(key: str):
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> dict:
        if isinstance(node, yaml.MappingNode):
            kwargs = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.ScalarNode) and loader.construct_scalar(node) in ("", None):
            kwargs = {}
        else:
            raise CosyVoiceYamlError(f"line {node.start_mark.line + 1}: {key} node "
                                     f"{suffix!r} must hold a mapping of keyword arguments")
        return {key: suffix, **kwargs}
    return construct


def _construct_apply(loader: _Loader, suffix: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        return {APPLY_KEY: suffix, **loader.construct_mapping(node, deep=True)}
    else:
        args = [loader.construct_object(node)]
    return {APPLY_KEY: suffix, "args": args}


def _construct_ref(loader: _Loader, node: yaml.Node) -> Ref:
    return Ref(str(loader.construct_scalar(node)))


for _prefix, _key in _TAG_KEYS.items():
    _Loader.add_multi_constructor(_prefix, _construct_tagged(_key))
_Loader.add_multi_constructor("!apply:", _construct_apply)
_Loader.add_constructor("!ref", _construct_ref)


def _lookup(root: dict, path: str) -> Any:
    """`a.b`, `a[b]` and `a[0]` address nested keys from the document root."""
    value: Any = root
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise CosyVoiceYamlError(f"!ref <{path}>: no key {part!r}")
    return value


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
        ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arith(node: ast.AST, expr: str) -> Any:
    if isinstance(node, ast.Expression):
        return _arith(node.body, expr)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.left, expr), _arith(node.right, expr))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.operand, expr))
    raise CosyVoiceYamlError(f"!ref {expr}: only numbers and + - * / // % ** are supported")


class _Resolver:
    def __init__(self, root: dict):
        self.root = root
        self.active: set[str] = set()

    def ref(self, ref: Ref) -> Any:
        names = _REF_RE.findall(ref.expr)
        if not names:
            raise CosyVoiceYamlError(f"!ref {ref.expr!r} names no <key>")
        if _REF_RE.fullmatch(ref.expr.strip()):
            return self.target(names[0])
        text = _REF_RE.sub(lambda m: repr(self.target(m.group(1))), ref.expr)
        try:
            return _arith(ast.parse(text, mode="eval"), ref.expr)
        except SyntaxError:
            raise CosyVoiceYamlError(f"!ref {ref.expr!r} is not an arithmetic expression") from None

    def target(self, path: str) -> Any:
        if path in self.active:
            raise CosyVoiceYamlError(f"!ref <{path}> refers to itself")
        self.active.add(path)
        try:
            return self.value(_lookup(self.root, path))
        finally:
            self.active.discard(path)

    def value(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return self.ref(value)
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = self.value(item)
        elif isinstance(value, list):
            value[:] = [self.value(item) for item in value]
        return value


def loads_cosyvoice_yaml(text: str) -> dict:
    doc = yaml.load(text, Loader=_Loader)
    if not isinstance(doc, dict):
        raise CosyVoiceYamlError("cosyvoice.yaml must be a mapping at the top level")
    return _Resolver(doc).value(doc)


def load_cosyvoice_yaml(path: Path | str) -> dict:
    path = Path(path)
    try:
        return loads_cosyvoice_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, CosyVoiceYamlError) as e:
        raise CosyVoiceYamlError(f"{path}: {e}") from None


class _Dumper(yaml.SafeDumper):
    pass


def _represent_dict(dumper: _Dumper, data: dict) -> yaml.Node:
    for key, prefix in ((CLASS_KEY, "!new:"), (PARTIAL_KEY, "!name:")):
        if key in data:
            rest = {k: v for k, v in data.items() if k != key}
            return dumper.represent_mapping(f"{prefix}{data[key]}", rest)
    if APPLY_KEY in data:
        return dumper.represent_sequence(f"!apply:{data[APPLY_KEY]}", data.get("args", []),
                                         flow_style=True)
    return dumper.represent_dict(data)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(Ref, lambda d, r: d.represent_scalar("!ref", r.expr))


def dumps_cosyvoice_yaml(sections: dict) -> str:
    return yaml.dump(sections, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def write_cosyvoice_yaml(path: Path | str, sections: dict) -> Path:
    """Write the top-level `sections` (e.g. sample_rate, mel_conf, flow, hift) in order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_cosyvoice_yaml(sections), encoding="utf-8")
    return path


def class_name(node: Any) -> str:
    """The last component of a `!new:` node's class path ('' for anything else)."""
    if isinstance(node, dict) and isinstance(node.get(CLASS_KEY), str):
        return node[CLASS_KEY].rsplit(".", 1)[-1]
    return ""

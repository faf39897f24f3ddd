"""A renderer for the subset of Helm's template language that manifests/helm/ uses -- NOT Helm.

No `helm` binary can be built or installed where these tests run (no Go toolchain or module proxy), so the
chart is rendered by this small interpreter instead, which is honest about its limits:

* It implements Go-template text/action splitting with `{{-`/`-}}` whitespace trimming, comments, `define`,
  `if`/`else if`/`else`/`end`, pipelines (`a | f b`), values (`.Values.x.y`, `.Release.*`, `.Chart.*`, `.`,
  string and number literals, parenthesised sub-pipelines) and the functions in FUNCTIONS (Helm's/sprig's
  behaviour for the cases the chart uses). Anything else -- `range`, `with`, variables, other functions -- raises
  `Unsupported`, so the chart cannot quietly use a construct these tests do not render.
* It is stricter than Helm in one way: printing a value path that does not exist raises (Helm prints
  `<no value>`), so a misspelt value fails the test.
* It does not implement Helm's YAML post-processing beyond splitting documents on `---`, chart dependencies,
  hooks, `.Capabilities`, `lookup` or schema validation of values.

What the tests then check on the rendered objects (strict Kubernetes schemas, the project's invariants, the
evictor's real settings loader) is the same as for the kustomize trees. Where a `helm` binary exists, `helm lint`
and `helm template` are the authority: docs/deploy.md gives the commands.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class Unsupported(ValueError):
    """A template construct outside the subset this renderer implements."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _tokens(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)], with trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            out.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = text[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(
    tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()
) -> tuple[list[Any], int, str]:
    """Nodes until one of `stop` (returned as the third item, '' at the end)."""
    nodes: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            if value:
                nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in stop or (word == "else" and "else" in stop):
            return nodes, i - 1, value
        if word == "if":
            branches = [(value[2:].strip(), None)]
            bodies = []
            body, i, closer = _parse(tokens, i, ("else", "end"))
            bodies.append(body)
            while closer.startswith("else"):
                rest = closer[4:].strip()
                i += 1
                if rest.startswith("if "):
                    branches.append((rest[3:].strip(), None))
                else:
                    branches.append(("", "else"))
                body, i, closer = _parse(tokens, i, ("else", "end"))
                bodies.append(body)
            if closer != "end":
                raise Unsupported("if without end")
            i += 1
            nodes.append(("if", branches, bodies))
        elif word == "define":
            name = shlex.split(value)[1]
            body, i, closer = _parse(tokens, i, ("end",))
            if closer != "end":
                raise Unsupported(f"define {name} without end")
            i += 1
            nodes.append(("define", name, body))
        elif word in ("range", "with", "block", "template") or value.startswith("$"):
            raise Unsupported(f"{{{{ {value} }}}}")
        else:
            nodes.append(("out", value))
    return nodes, i, ""


def _truthy(v: Any) -> bool:
    return v not in (None, False, 0, "", [], {})


class _GoYamlDumper(yaml.SafeDumper):
    """Quotes like Helm's toYaml (go-yaml): double quotes where a plain scalar would not read back as itself."""

    def choose_scalar_style(self) -> Any:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def _to_yaml(v: Any) -> str:
    if v is None:
        return "null"
    return yaml.dump(v, Dumper=_GoYamlDumper, default_flow_style=False, sort_keys=True).rstrip("\n")


def _go_quote(x: Any) -> str:
    """sprig's quote: Go's strconv.Quote of the value's string form (newlines and quotes escaped)."""
    return json.dumps(_go_string(x), ensure_ascii=False)


def _indent(n: int, s: str) -> str:
    return "\n".join(" " * n + line for line in str(s).split("\n"))


def _required(msg: str, v: Any) -> Any:
    if not _truthy(v) and v != 0:
        raise ValueError(f"required value missing: {msg}")
    return v


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quote": lambda *a: " ".join(_go_quote(x) for x in a),
    "toYaml": _to_yaml,
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "default": lambda d, v=None: v if _truthy(v) else d,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "and": lambda *a: all(_truthy(x) for x in a),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
    "not": lambda a: not _truthy(a),
    "required": _required,
}

_MISSING = object()


class Renderer:
    def __init__(
        self, chart_dir: Path, values: dict[str, Any], release: str = "kvfs", namespace: str = "kvfs"
    ):
        chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
        self.root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {
                "Name": chart["name"],
                "Version": chart["version"],
                "AppVersion": chart.get("appVersion"),
            },
        }
        self.defines: dict[str, list[Any]] = {}
        self.chart_dir = chart_dir

    # -- values --
    def _lookup(self, path: str, dot: Any) -> Any:
        if path == ".":
            return dot
        node: Any = dot
        for part in path[1:].split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def _arg(self, word: str, dot: Any) -> Any:
        if word.startswith('"'):
            return shlex.split(word)[0]
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if word in ("true", "false"):
            return word == "true"
        if word.startswith("."):
            return self._lookup(word, dot)
        if word.startswith("(") and word.endswith(")"):
            return self._pipeline(word[1:-1], dot)
        if word in FUNCTIONS or word == "include":
            return self._call(word, [], dot)
        raise Unsupported(f"argument {word!r}")

    @staticmethod
    def _split_words(cmd: str) -> list[str]:
        words, depth, cur, quote = [], 0, "", False
        for ch in cmd:
            if ch == '"' and (not cur.endswith("\\")):
                quote = not quote
            if not quote and ch == "(":
                depth += 1
            if not quote and ch == ")":
                depth -= 1
            if ch.isspace() and not quote and depth == 0:
                if cur:
                    words.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
        return words

    @staticmethod
    def _split_pipes(text: str) -> list[str]:
        parts, depth, cur, quote = [], 0, "", False
        for ch in text:
            if ch == '"':
                quote = not quote
            depth += (ch == "(") - (ch == ")") if not quote else 0
            if ch == "|" and not quote and depth == 0:
                parts.append(cur.strip())
                cur = ""
            else:
                cur += ch
        parts.append(cur.strip())
        return parts

    def _call(self, name: str, args: list[Any], dot: Any) -> Any:
        if name == "include":
            body = self.defines.get(args[0])
            if body is None:
                raise Unsupported(f"include of undefined template {args[0]!r}")
            return self._render(body, args[1])
        if name not in FUNCTIONS:
            raise Unsupported(f"function {name!r}")
        return FUNCTIONS[name](*[None if a is _MISSING else a for a in args])

    def _pipeline(self, text: str, dot: Any) -> Any:
        value: Any = _MISSING
        for n, cmd in enumerate(self._split_pipes(text)):
            words = self._split_words(cmd)
            head, rest = words[0], [self._arg(w, dot) for w in words[1:]]
            if n > 0:
                rest.append(value)
            if head in FUNCTIONS or head == "include":
                value = self._call(head, rest, dot)
            elif n == 0 and not rest:
                value = self._arg(head, dot)
            else:
                raise Unsupported(f"command {cmd!r}")
        return value

    # -- rendering --
    def _render(self, nodes: list[Any], dot: Any) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "define":
                self.defines[node[1]] = node[2]
            elif node[0] == "out":
                value = self._pipeline(node[1], dot)
                if value is _MISSING:
                    raise KeyError(f"no value for {{{{ {node[1]} }}}}")
                out.append(_go_string(value))
            elif node[0] == "if":
                for (cond, is_else), body in zip(node[1], node[2], strict=True):
                    if is_else == "else" or _truthy(_nomiss(self._pipeline(cond, dot))):
                        out.append(self._render(body, dot))
                        break
        return "".join(out)

    def render(self) -> list[dict[str, Any]]:
        templates = sorted((self.chart_dir / "templates").iterdir())
        for path in templates:  # helpers first: every `define` is known before any `include`
            if path.name.startswith("_"):
                self._render(_parse(_tokens(path.read_text()))[0], self.root)
        docs: list[dict[str, Any]] = []
        for path in templates:
            if path.name.startswith("_") or path.suffix not in (".yaml", ".yml"):
                continue
            text = self._render(_parse(_tokens(path.read_text()))[0], self.root)
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append(doc)
        return docs


def _nomiss(v: Any) -> Any:
    return None if v is _MISSING else v


def _go_string(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "<nil>"
    return str(v)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps deep-merged, everything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
        )
    return out


def render_chart(chart_dir: Path, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    values = merge(yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}, overrides or {})
    return Renderer(chart_dir, values).render()

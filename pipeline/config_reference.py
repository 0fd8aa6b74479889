"""`python -m pipeline config`: every setting with its default and its comment, read from the dataclasses.

The text of a key is written once, next to its field in the dataclass source, and read from there with
`ast` and `tokenize`:

- the field's trailing `# ...` comment, continued by the comment-only lines right below it;
- or a string literal right below the field (an attribute docstring, as Sphinx reads them);
- or, for a field with neither, the comment-only lines right above it.

A comment block after a blank line (or at the top of the class) above a field that has its own
comment is a heading for the group of fields it opens. The tree is walked from `pipeline.config.Config`
generically: a field whose type is a dataclass is a `[section]`, `dict[str, <dataclass>]` is a family
of `[section.NAME]` tables, anything else a key, so a new field or section appears here by itself.

    python -m pipeline config [--config FILE] [--set KEY=VALUE ...]    # the resolved TOML, commented
    python -m pipeline config --markdown > docs/config.md              # the reference in docs/
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p3dbase.errors import shown
from pipeline.config import Config, _toml_value
from pipeline.errors import ConfigError

REGENERATE = "python -m pipeline config --markdown > docs/config.md"


@dataclass
class Key:
    """One setting: `name` inside its table, with the dataclass default and the value in force."""

    name: str
    type: str  # as written in the source, e.g. "list[int]"
    default: Any
    value: Any
    comment: str  # "" when the source has none (tests/pipeline/test_config_reference.py fails then)
    heading: str = ""  # the heading comment of the group this key opens, if any


@dataclass
class Table:
    """A TOML table (`name` "" for the top level) and the dataclass it is read into."""

    name: str
    cls: type
    comment: str  # the parent's comment on the field that holds this table
    keys: list[Key]
    template: bool = False  # `[name.NAME]` of a dict section: the defaults of one entry, not an entry


@dataclass(frozen=True)
class _FieldText:
    comments: dict[str, str]
    headings: dict[str, str]


def tables(cfg: Any) -> list[Table]:
    """The tables of the dataclass instance `cfg` in file order, the top level first."""
    return _tables(cfg, "", "")


def _tables(obj: Any, name: str, comment: str, template: bool = False) -> list[Table]:
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    text = field_text(cls)
    keys: list[Key] = []
    children: list[Table] = []
    for f in dataclasses.fields(cls):
        hint, value = hints[f.name], getattr(obj, f.name)
        path = f"{name}.{f.name}" if name else f.name
        note = text.comments.get(f.name, "")
        entry = _dict_entry_class(hint)
        if dataclasses.is_dataclass(hint):
            children += _tables(value, path, note, template)
        elif entry is not None:
            if value:
                for key, item in value.items():
                    children += _tables(item, f"{path}.{key}", note, template)
            else:  # nothing set: show what one entry holds
                children += _tables(entry(), f"{path}.NAME", note, template=True)
        else:
            keys.append(Key(f.name, _type_name(f.type), _default(f), value, note, text.headings.get(f.name, "")))
    return [Table(name, cls, comment, keys, template), *children]


def _dict_entry_class(hint: Any) -> type | None:
    """The dataclass of `dict[str, <dataclass>]`, else None."""
    if typing.get_origin(hint) is dict:
        args = typing.get_args(hint)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]
    return None


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):  # `from __future__ import annotations`: the text as written
        return annotation
    return getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@functools.cache
def field_text(cls: type) -> _FieldText:
    """The comment of every field of dataclass `cls` and the headings above groups of fields."""
    comments: dict[str, str] = {}
    headings: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's text wins for a field it redeclares
        if dataclasses.is_dataclass(klass) and "__dataclass_fields__" in vars(klass):
            found = _class_text(klass)
            comments.update(found.comments)
            headings.update(found.headings)
    return _FieldText(comments, headings)


def _class_text(cls: type) -> _FieldText:
    path = inspect.getsourcefile(cls)
    if path is None:
        return _FieldText({}, {})
    source = Path(path).read_text(encoding="utf-8")
    node = _find_class(ast.parse(source), cls.__qualname__.split("."))
    if node is None:
        return _FieldText({}, {})
    comment_at, comment_only = _comments(source)
    own = set(vars(cls).get("__annotations__", {}))

    spans: list[tuple[str, int, int]] = []  # (field, first line, last line)
    docstrings: dict[str, str] = {}
    for i, stmt in enumerate(node.body):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id in own:
            spans.append((stmt.target.id, stmt.lineno, stmt.end_lineno or stmt.lineno))
            after = node.body[i + 1] if i + 1 < len(node.body) else None
            if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docstrings[stmt.target.id] = inspect.cleandoc(after.value.value)

    comments: dict[str, list[str]] = {}
    for name, first, last in spans:
        parts = [comment_at[n] for n in range(first, last + 1) if n in comment_at]
        comments[name] = parts
    starts = {first: name for name, first, _ in spans}
    ends = {last: name for name, _, last in spans}
    headings: dict[str, str] = {}
    line = node.lineno + 1
    last_line = node.end_lineno or line
    while line <= last_line:
        if line not in comment_only:
            line += 1
            continue
        block_start = line
        while line in comment_only:
            line += 1
        block = [comment_at[n] for n in range(block_start, line)]
        before, after = ends.get(block_start - 1), starts.get(line)
        if any(first < block_start <= last for _, first, last in spans):
            continue  # inside a field written over several lines: already taken as that field's
        if after is not None and not comments[after] and after not in docstrings:
            comments[after] = block  # the comment above a field without one of its own
        elif before is not None:
            comments[before] += block  # the trailing comment goes on below its field
        elif after is not None:
            headings[after] = " ".join(block)
    text = {name: " ".join(parts) for name, parts in comments.items() if parts}
    for name, doc in docstrings.items():
        text[name] = f"{text[name]} {doc}" if name in text else " ".join(doc.split())
    module = sys.modules.get(cls.__module__)
    return _FieldText({name: _values_named(t, module) for name, t in text.items()}, headings)


_NAMED_VALUES = re.compile(r"\b(one|any) of ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")  # not a full stop after it


def _values_named(comment: str, module: Any) -> str:
    """`one of FORMATS` in a comment with the values spelled out: "one of 'synth', 'ucf101', ...". The
    comment names the constant the code checks (one list, no second copy to drift), the reader wants
    its values. A name that is not such a constant of the field's module stays as written."""
    def spell(match: re.Match) -> str:
        value: Any = module
        for part in match[2].split("."):
            value = getattr(value, part, None)
        if isinstance(value, dict):
            value = list(value)
        if not isinstance(value, (tuple, list, frozenset, set)) or not value \
                or not all(isinstance(v, str) for v in value):
            return match[0]
        names = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return f"{match[1]} of {', '.join(repr(v) for v in names)}"
    return _NAMED_VALUES.sub(spell, comment)


def _find_class(tree: ast.Module, qualname: list[str]) -> ast.ClassDef | None:
    body: list[ast.stmt] = tree.body
    found = None
    for part in qualname:
        found = next((s for s in body if isinstance(s, ast.ClassDef) and s.name == part), None)
        if found is None:
            return None
        body = found.body
    return found


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """{line: comment text without '#'} and the lines that hold nothing but a comment."""
    text: dict[int, str] = {}
    alone: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            text[line] = tok.string.lstrip("#").strip()
            if tok.line.strip().startswith("#"):
                alone.add(line)
    return text, alone


def missing_comments(cfg: Any) -> list[str]:
    """'section.key (file, Class)' for every field without a comment, including the section fields."""
    missing = []
    for table in tables(cfg):
        where = f"{_source_name(table.cls)}, {table.cls.__name__}"
        missing += [f"{_dotted(table.name, k.name)} ({where})" for k in table.keys if not k.comment]
        if table.name and not table.comment:
            missing.append(f"[{table.name}] (the field that holds it has no comment)")
    return sorted(set(missing))


def _dotted(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key


def _source_name(cls: type) -> str:
    """The dataclass's file relative to the repository, e.g. flow/config.py."""
    module = cls.__module__.split(".")
    path = Path(inspect.getsourcefile(cls) or "")
    return "/".join([*module[:-1], path.name]) if path.name else cls.__module__


def render_toml(cfg: Any, header: str = "") -> str:
    """`cfg` as TOML that load_config reads back to an equal config: every key under its comment,
    `# default: X` after a value that differs from the dataclass default."""
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    for table in tables(cfg):
        prefix = "# " if table.template else ""
        if out:
            out.append("")
        if table.name:
            out += _wrap(table.comment)
            out.append(f"{prefix}[{table.name}]")
            if table.template:
                out.append("# (no entry is set; each [" + table.name + "] holds these keys)")
        for key in table.keys:
            if key.heading:
                out.append(f"# --- {key.heading}")
            out += _wrap(key.comment)
            if key.value is None:
                out.append(f"# {key.name} = (unset)")
                continue
            line = f"{prefix}{key.name} = {_toml_value(key.value)}"
            if key.value != key.default:
                line += f"  # default: {_toml_value(key.default) if key.default is not None else '(unset)'}"
            out.append(line)
    return "\n".join(out) + "\n"


def _wrap(comment: str, width: int = 100) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(comment, width - 2)] if comment else []


def render_markdown(cfg: Any) -> str:
    """The reference of every key with its type, default and comment: docs/config.md."""
    out = [
        "# Configuration reference",
        "",
        f"Generated from the config dataclasses by `{REGENERATE}`; do not edit by hand.",
        "Each key's text is the comment next to its field in the file named under each table: change it",
        "there and regenerate (`tests/pipeline/test_config_reference.py` fails while this file is stale).",
        "`python -m pipeline config --config FILE [--set KEY=VALUE ...]` prints a file's resolved",
        "settings in the same order, each value with its comment and, where it differs, the default.",
        "",
    ]
    for table in tables(cfg):
        title = f"`[{table.name}]`" if table.name else "Top level"
        out += [f"## {title}", ""]
        if table.comment:
            out += [_prose(table.comment), ""]
        out += [f"`{_source_name(table.cls)}`, `{table.cls.__name__}`.", ""]
        if table.template:
            out += [f"Any number of `[{table.name}]` tables, NAME chosen freely; each holds these keys.", ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key in table.keys:
            if key.heading:
                out.append(f"| | | | **{_prose(key.heading)}** |")
            default = "(unset)" if key.default is None else f"`{_toml_value(key.default)}`"
            out.append(f"| `{key.name}` | `{_cell(key.type)}` | {_cell(default)} | {_prose(key.comment)} |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """A comment as Markdown table text: `<N>` would be read as an HTML tag."""
    return _cell(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def run(args: argparse.Namespace, cfg: Config) -> None:
    """The `config` verb: the resolved TOML of `cfg`, or (`--markdown`) the reference of the defaults."""
    if args.markdown:
        if args.config is not None or args.overrides:
            raise ConfigError("config --markdown: the reference shows the defaults; drop --config and --set")
        sys.stdout.write(render_markdown(Config()))
        return
    # A comment holds no control character (DEL, ESC: TOML refuses them there): shown escapes them.
    source = shown(args.config) if args.config is not None else "the defaults"
    sets = "".join(f" --set {shown(item)}" for item in args.overrides)
    header = (f"The settings resolved from {source}{sets}: every key under its comment, and\n"
              "`# default: X` after each value that differs from the default. Reference: docs/config.md")
    sys.stdout.write(render_toml(cfg, header))

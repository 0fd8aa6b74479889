"""`python -m pipeline config`: comments read from the dataclass source, the resolved TOML, docs/config.md."""
import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from pipeline import config_reference as ref
from pipeline.cli import main
from pipeline.config import Config, load_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

# Every form of comment the reference reads, and the two it must not take for a field's text.
TOY = '''
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Inner:
    """Not a field's text."""

    # Heading one.
    a: int = 1  # trailing of a
    b: str = "x|y"  # trailing of b,
    # continued below it
    c: float = 2.0
    """Docstring of c."""

    # Heading two.
    d: list[int] = field(default_factory=lambda: [1, 2])  # d's
    # The comment above e,
    # two lines.
    e: bool = True
    f: int = 0

    # Standing alone above g.
    g: int = 3
    h: str | None = None  # may be unset <N>


@dataclass
class Root:
    top: int = 5  # a top-level key
    inner: Inner = field(default_factory=Inner)  # the inner table
    named: dict[str, Inner] = field(default_factory=dict)  # any number of named tables
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    path = tmp_path / "toy_config_module.py"
    path.write_text(TOY, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("toy_config_module", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_config_module", module)
    spec.loader.exec_module(module)
    return module


def test_each_comment_form_is_read_from_the_source(toy):
    text = ref.field_text(toy.Inner)
    assert text.comments == {
        "a": "trailing of a",
        "b": "trailing of b, continued below it",
        "c": "Docstring of c.",
        "d": "d's",
        "e": "The comment above e, two lines.",
        "g": "Standing alone above g.",
        "h": "may be unset <N>",
    }
    assert text.headings == {"a": "Heading one.", "d": "Heading two."}


def test_tables_walk_sections_and_dicts_of_sections(toy):
    cfg = toy.Root(named={"one": toy.Inner(a=7), "two": toy.Inner()})
    tables = ref.tables(cfg)
    assert [(t.name, t.comment, t.template) for t in tables] == [
        ("", "", False), ("inner", "the inner table", False),
        ("named.one", "any number of named tables", False), ("named.two", "any number of named tables", False),
    ]
    one = {k.name: k for k in tables[2].keys}
    assert (one["a"].value, one["a"].default, one["a"].type) == (7, 1, "int")
    assert one["d"].type == "list[int]" and one["h"].type == "str | None"
    # Nothing set: the table of one entry is shown as a template.
    assert [(t.name, t.template) for t in ref.tables(toy.Root())][2] == ("named.NAME", True)


def test_missing_comments_name_key_file_and_class(toy):
    assert ref.missing_comments(toy.Root()) == [
        "inner.f (toy_config_module.py, Inner)", "named.NAME.f (toy_config_module.py, Inner)",
    ]


def test_toml_reads_back_to_the_values_and_marks_changed_defaults(toy):
    cfg = toy.Root(top=6, named={"one": toy.Inner(a=7, b='say "hi"', d=[3])})
    text = ref.render_toml(cfg, header="first\nsecond")
    expected = dataclasses.asdict(cfg)
    for table in (expected["inner"], expected["named"]["one"]):
        del table["h"]  # None: TOML has no null, the key is left out (and shown commented)
    assert tomllib.loads(text) == expected
    lines = text.splitlines()
    assert lines[:2] == ["# first", "# second"]
    assert "top = 6  # default: 5" in lines
    assert "a = 7  # default: 1" in lines and "a = 1" in lines  # [named.one], then [inner]
    assert 'b = "say \\"hi\\""  # default: "x|y"' in lines
    assert "d = [3]  # default: [1, 2]" in lines
    assert "# h = (unset)" in lines
    at = lines.index("[inner]")
    assert lines[at - 1:at + 4] == ["# the inner table", "[inner]", "# --- Heading one.", "# trailing of a",
                                    "a = 1"]
    # An empty dict of sections: its template is all comments, so it loads as nothing.
    assert "named" not in tomllib.loads(ref.render_toml(toy.Root()))
    assert "# [named.NAME]" in ref.render_toml(toy.Root()).splitlines()


def test_markdown_rows_escape_pipes_and_tags(toy):
    md = ref.render_markdown(toy.Root())
    assert '| `b` | `str` | `"x\\|y"` | trailing of b, continued below it |' in md
    assert "| `h` | `str \\| None` | (unset) | may be unset &lt;N&gt; |" in md
    assert "| | | | **Heading two.** |" in md
    assert "Any number of `[named.NAME]` tables" in md


def test_every_setting_has_a_comment():
    missing = ref.missing_comments(Config())
    assert not missing, "settings without a comment (add a trailing `# ...` at the field): " + ", ".join(missing)


def test_docs_config_md_is_the_generated_reference():
    path = REPO / "docs" / "config.md"
    generated = ref.render_markdown(Config())
    committed = path.read_text(encoding="utf-8") if path.is_file() else ""
    if committed != generated:
        stale = [line for line in generated.splitlines() if line not in set(committed.splitlines())]
        pytest.fail(f"docs/config.md is stale: regenerate it with `{ref.REGENERATE}`. "
                    f"Lines it lacks: {stale[:10]}")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_resolved_toml_of_every_shipped_config_loads_back_equal(tmp_path, path):
    cfg = load_config(path, ["eval.clips=3"])
    out = tmp_path / "resolved.toml"
    out.write_text(ref.render_toml(cfg), encoding="utf-8")
    assert load_config(out) == cfg
    assert "clips = 3  # default: 10" in out.read_text(encoding="utf-8").splitlines()


def test_config_verb(capsys):
    assert main(["config", "--config", str(REPO / "configs" / "synth.toml"), "--set", "flow.jobs=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "bound = 5.0  # default: 20.0" in out
    assert "jobs = 2  # default: 0" in out
    assert out[0].startswith(f"# The settings resolved from {REPO / 'configs' / 'synth.toml'} --set flow.jobs=2")
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == ref.render_markdown(Config())
    assert main(["config", "--markdown", "--set", "flow.jobs=2"]) == 2
    assert "error: config --markdown: the reference shows the defaults" in capsys.readouterr().err


def test_a_comment_naming_a_constant_lists_its_values():
    """`one of FORMATS` was printed as written by `config` and in docs/config.md: the reader saw a name
    from the source, not the values it allows."""
    from types import SimpleNamespace

    from pipeline.config_reference import _values_named, field_text
    from pipeline.datasets.config import FORMATS, DatasetConfig

    assert field_text(DatasetConfig).comments["format"].startswith(
        "one of " + ", ".join(repr(f) for f in FORMATS) + "; see docs/datasets.md")
    module = SimpleNamespace(KINDS=("a", "b"), MAP={"x": 1}, NUMBERS=(1, 2), design=SimpleNamespace(ALL={"z", "y"}))
    assert _values_named("one of KINDS", module) == "one of 'a', 'b'"
    assert _values_named("any of MAP; or none", module) == "any of 'x'; or none"
    assert _values_named("any of design.ALL", module) == "any of 'y', 'z'"
    assert _values_named("must be one of KINDS.", module) == "must be one of 'a', 'b'."
    for kept in ("one of NUMBERS", "one of UNKNOWN", "one of the values"):  # not a constant of names: as written
        assert _values_named(kept, module) == kept


def test_config_output_with_control_characters_in_the_command_loads_back(tmp_path, capsys):
    """The header comment copied a --set item and the --config path as typed: a DEL or ESC in them is
    a character TOML refuses in a comment, so the printed file did not load."""
    import tomllib

    config = tmp_path / "a\x7fb.toml"
    config.write_text("[flow]\nbound = 10.0\n")
    assert main(["config", "--config", str(config), "--set", "dataset.root=a\x7fb\x1bc"]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads(out)["dataset"]["root"] == "a\x7fb\x1bc"
    assert out.startswith(f"# The settings resolved from {tmp_path}/a\\x7fb.toml --set dataset.root=a\\x7fb\\x1bc")

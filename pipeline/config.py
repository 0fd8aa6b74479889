"""The whole configuration: one TOML file, one small dataclass per stage, `--set` overrides.

Each stage owns its dataclass (flow.config.FlowConfig, streams.config.TrainConfig, ...); this module
only composes them and checks values generically from the type hints, so a stage adds a setting by
adding a field and nothing here changes.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flow.config import FlowConfig
from fusion.config import EvalConfig
from fusion.transfer_config import TransferConfig
from p3dbase.atomic import write_text
from p3dbase.errors import NOT_REGULAR, brief, excerpt, shown, text_problem, utf8_text
from p3dbase.overrides import ALLOW_NONFINITE, check_value, parse_override, set_text
from p3dbase.overwrite import folder_name_problem
from pipeline.datasets.config import DatasetConfig
from pipeline.errors import ConfigError
from pipeline.synth.config import SynthConfig
from pipeline.transfer.config import BenchmarkConfig
from streams.config import ModelConfig, TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass
class Config:
    work_dir: str = "work"  # every stage writes under it: synth/, flow/, train/<stream>/split<N>/, eval/
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # which videos, their classes and splits
    synth: SynthConfig = field(default_factory=SynthConfig)  # SynthActions, the built-in benchmark
    flow: FlowConfig = field(default_factory=FlowConfig)  # decoding, TV-L1 and the frame + flow store
    model: ModelConfig = field(default_factory=ModelConfig)  # the P3D network of both streams
    train: TrainConfig = field(default_factory=TrainConfig)  # training one stream
    eval: EvalConfig = field(default_factory=EvalConfig)  # video-level testing, late fusion, features + SVM
    transfer: TransferConfig = field(default_factory=TransferConfig)  # the transfer stage (docs/transfer.md)
    benchmark: dict[str, BenchmarkConfig] = field(default_factory=dict)  # its [benchmark.NAME] tables

    @property
    def work(self) -> Path:
        return Path(self.work_dir)


# Tables of named sections, [benchmark.NAME]: the dataclass of each named section.
NAMED_SECTIONS = {"benchmark": BenchmarkConfig}
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("work_dir", *NAMED_SECTIONS)}


# Keys that were renamed so that one setting has one name in every section: the old key's error names the new.
RENAMED = {"transfer.cs": "transfer.svm_cs", "transfer.folds": "transfer.svm_folds",
           "transfer.clips": "transfer.svm_clips"}


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = (), *, run: str | None = None) -> Config:
    """Read `path` (or the defaults when None), apply `key=value` overrides and `run` (`--run`, which
    sets train.run), check everything. An error names where the bad value came from: the file, the
    `--set` item or `--run`."""
    source = shown(path) if path else "<defaults>"  # one line whatever the path holds
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {shown(path)}: is a folder; give a TOML file, e.g. configs/tiny.toml")
        if not path.is_file():
            raise ConfigError(f"config file not found: {shown(path)}" if not path.exists() else
                              f"--config {shown(path)}: {NOT_REGULAR}; give a TOML file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is no error
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{shown(path)}: not valid TOML: {err}") from None
        except RecursionError:  # tomllib recurses per nesting level: [[[[... 100,000 deep
            raise ConfigError(f"{shown(path)}: not a config: arrays or tables nested too deeply") from None
    origin: dict[str, str] = {}  # key -> where its value came from, when not the file
    items = [(*_parse_override(item), _set_item(item)) for item in overrides]
    if run is not None:
        # one line whatever the name holds: excerpt quotes it, a newline as \\n
        name = utf8_text(run)
        items.append(("train.run", run, f"--run {excerpt(name, 60) if text_problem(name) else name[:60]}"))
    for key, value, where in items:
        *sections, name = key.split(".")  # benchmark.aslan.root: a key of a named section
        target = raw
        for depth, section in enumerate(sections):
            within = ".".join(sections[:depth + 1])
            if section not in target:  # made by this item: an unknown section is blamed on it, not the file
                origin.setdefault(within, where)
            target = target.setdefault(section, {})
            if not isinstance(target, dict):  # this item's mistake; what made it a value is named too
                raise ConfigError(f"{where}: {within!r} is not a section ({_where(origin, within, source)} "
                                  "gives it a value)")
        # `--set train={lr=0.1}` replaced the file's whole [train] with the defaults and one key, silently.
        # A section is set key by key; only a new [benchmark.NAME] may come whole, as one table.
        whole = isinstance(target.get(name), dict) or (not sections and name in (*SECTIONS, *NAMED_SECTIONS))
        if whole:
            raise ConfigError(f"{where}: [{key}] is a section: set its keys one at a time, e.g. --set "
                              f"{key}.{_first_key(target.get(name), key)}=...")
        target[name] = value
        origin[key] = where
    return _build(raw, source, origin)


def _first_key(section: Any, key: str) -> str:
    """A key of the section `key` for a message: the file's first, else the dataclass's first field
    (`NAME.KEY` for a section of named tables)."""
    if key in NAMED_SECTIONS:
        return "NAME.KEY"
    if isinstance(section, dict) and section:
        return str(next(iter(section)))
    default = getattr(Config(), key, None) if key in SECTIONS else None
    return dataclasses.fields(default)[0].name if dataclasses.is_dataclass(default) else "KEY"


def _set_item(item: str) -> str:
    """`--set ITEM` as a message names it: on one line (a newline in a value shows as \\n), cut when long."""
    return f"--set {excerpt(item, 200) if text_problem(item) else brief(item)}"


def _parse_override(item: str) -> tuple[str, Any]:
    if utf8_text(item) != item:  # bytes that are not UTF-8 reach argv as lone surrogates
        raise ConfigError(f"--set {shown(item)}: not valid UTF-8 text; settings (work_dir, dataset.root, ...) "
                          "are written to config.toml and reports as UTF-8: rename the folder, or link it "
                          "under a UTF-8 name")
    try:
        return parse_override(item)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_work_dir(value: Any, where: str) -> str:
    """work_dir names a folder: a quoted path (or text typed in --set), not empty, not an existing file."""
    value = set_text(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: work_dir must be a folder path in quotes (work_dir = \"work\"), got {value!r}")
    try:
        check_value(value, str, "work_dir")  # the rule of every text setting (a NUL character)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    if not value.strip():
        raise ConfigError(f"{where}: work_dir is empty: name the folder every stage writes under, e.g. \"work\"")
    if Path(value).exists() and not Path(value).is_dir():
        raise ConfigError(f"{where}: work_dir {brief(value)} is a file, not a folder")
    return value


def _where(origin: dict[str, str], key: str, source: str) -> str:
    """Where the value of `key` came from: its own --set, else the --set that gave its table whole
    (`--set 'benchmark.a={format="x"}'` for benchmark.a.format), else the file."""
    while key:
        if key in origin:
            return origin[key]
        key = key.rpartition(".")[0]
    return source


def _build(raw: dict[str, Any], source: str, origin: dict[str, str]) -> Config:
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "work_dir":
            kwargs[key] = _check_work_dir(value, origin.get(key, source))
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin.get(key, source)}: [{key}] must be a table of settings, got {value!r}")
            kwargs[key] = _build_section(typing.get_type_hints(Config)[key], key, value, source, origin)
        elif key in NAMED_SECTIONS:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"{origin.get(key, source)}: [{key}] must hold named tables such as [{key}.NAME], "
                                  f"got {value!r}")
            for name in value:  # its folder: work_dir/transfer/features/<name>, .../flow/<name>
                problem = folder_name_problem(name)
                if problem:
                    where = origin.get(f"{key}.{name}", origin.get(key, source))
                    raise ConfigError(f"{where}: [{key}.{_toml_key(brief(name, 60))}]: the name {problem}")
            kwargs[key] = {name: _build_section(NAMED_SECTIONS[key], f"{key}.{name}", table, source, origin)
                           for name, table in value.items()}
        else:
            raise ConfigError(f"{origin.get(key, source)}: unknown key {key!r}"
                              f"{_suggest(key, ['work_dir', *SECTIONS, *NAMED_SECTIONS])}")
    return Config(**kwargs)


def _build_section(cls: type, section: str, values: dict[str, Any], source: str, origin: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    checked = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        where = _where(origin, key, source)
        if key in RENAMED:
            raise ConfigError(f"{where}: {key} is now called {RENAMED[key]} (the name [eval] gives the same setting)")
        if name not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(name, names, section)}")
        checked[name] = _check_value(value, hints[name], key, where,
                                     finite=not fields[name].metadata.get(ALLOW_NONFINITE))
    obj = cls(**checked)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as err:
            # The message starts with the field it is about: blame the --set or --run that gave it.
            where = _where(origin, f"{section}.{str(err).partition(':')[0]}", source)
            raise ConfigError(f"{where}: [{section}] {err}") from None
    return obj


def _check_value(value: Any, hint: Any, key: str, source: str, finite: bool = True) -> Any:
    """Return `value` as type `hint` (a finite number where a float is asked, unless `finite` is
    False) or raise ConfigError naming the key and the file."""
    try:
        return check_value(value, hint, key, finite)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None


def _suggest(name: str, known: typing.Iterable[str], section: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if not close:
        return ""
    return f" (did you mean {(section + '.' if section else '') + close[0]!r}?)"


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML that load_config reads back to an equal Config."""
    data = to_dict(cfg)
    lines = [f"work_dir = {_toml_value(data.pop('work_dir'))}"]
    named = {key: data.pop(key) for key in NAMED_SECTIONS}
    for section, values in data.items():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    for key, tables in named.items():
        for name, values in tables.items():
            lines += ["", f"[{key}.{_toml_key(name)}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_key(name: str) -> str:
    """A table name as TOML writes it: bare when it can be (ASCII letters, digits, _ and -), else quoted."""
    return name if name and name.isascii() and all(c.isalnum() or c in "_-" for c in name) else _toml_value(name)


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # a TOML basic string: backslash, quote and control characters escaped
        return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c)
                             for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_resolved(cfg: Config, out_dir: Path) -> Path:
    """Write config.toml next to a stage's output (p3dbase.atomic). Stages call it once their checks have
    passed: a refused command leaves the config of the run that made the output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.toml"
    write_text(path, dump_toml(cfg))
    return path

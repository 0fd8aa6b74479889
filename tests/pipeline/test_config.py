"""The TOML loader: types from the dataclasses, overrides, and errors that name key and file."""
import re
from pathlib import Path

import pytest

from pipeline.config import Config, dump_toml, load_config, write_resolved
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.flow.bound == 20.0 and cfg.flow.store == "packed"


def test_sections_and_coercions(tmp_path):
    cfg = load_config(write(tmp_path, 'work_dir = "w"\n[flow]\nbound = 10\njobs = 3\nstore = "mmaction"\n'))
    assert cfg.work_dir == "w"
    assert cfg.flow.bound == 10.0 and isinstance(cfg.flow.bound, float)  # int accepted for a float
    assert cfg.flow.jobs == 3 and cfg.flow.store == "mmaction"


def test_overrides_parse_to_the_field_type(tmp_path):
    cfg = load_config(write(tmp_path, "[flow]\nbound = 10\n"), [
        "flow.bound=15", "flow.store=mmaction", "flow.use_initial_flow=true", "dataset.split=2",
        "work_dir=elsewhere", "flow.size=128x96",
    ])
    assert cfg.flow.bound == 15.0
    assert cfg.flow.store == "mmaction"
    assert cfg.flow.use_initial_flow is True
    assert cfg.dataset.split == "2"  # an int on the command line, a str field
    assert cfg.work_dir == "elsewhere"
    assert cfg.flow.size == "128x96"


def test_list_override():
    cfg = load_config(None, ["eval.fusion_weights=[1, 2]"])
    assert cfg.eval.fusion_weights == [1.0, 2.0]


@pytest.mark.parametrize("text, needle", [
    ("[flow]\nbund = 20\n", "unknown key 'flow.bund' (did you mean 'flow.bound'?)"),
    ("[flw]\nbound = 20\n", "unknown key 'flw' (did you mean 'flow'?)"),
    ("[flow]\nbound = \"far\"\n", "flow.bound must be float, got 'far'"),
    ("[flow]\njobs = 1.5\n", "flow.jobs must be int, got 1.5"),
    ("[flow]\njobs = true\n", "flow.jobs must be int, got True"),
    ("[flow]\nstore = \"zip\"\n", "[flow] store: must be 'packed' or 'mmaction'"),
    ("flow = 3\n", "[flow] must be a table"),
    ("[flow\n", "not valid TOML"),
])
def test_errors_name_the_key_and_the_file(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["flow.bound"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["flow.bound=12.5", "work_dir=a b\"c", "eval.fusion_weights=[1.0, 1.5]"])
    again = load_config(write(tmp_path, dump_toml(cfg)))
    assert again == cfg
    out = write_resolved(cfg, tmp_path / "stage")
    assert load_config(out) == cfg
    assert not list((tmp_path / "stage").glob("*.tmp"))


def test_control_characters_in_a_setting_round_trip_through_config_toml(tmp_path):
    """A newline in a path (legal on Linux) was written raw into a TOML basic string: config.toml no
    longer read back, and the run could not be resumed from it."""
    cfg = load_config(None, ["dataset.root=a\nb\tc\x01d\x7fe\\f\"g"])
    assert cfg.dataset.root == "a\nb\tc\x01d\x7fe\\f\"g"
    text = dump_toml(cfg)
    assert 'root = "a\\nb\\tc\\u0001d\\u007fe\\\\f\\"g"' in text.splitlines()
    assert load_config(write(tmp_path, text)) == cfg


def test_a_section_that_only_a_set_names_is_blamed_on_the_set(tmp_path):
    path = write(tmp_path, "[flow]\nbound = 10\n")
    with pytest.raises(ConfigError, match=r"^--set tran.lr=1: unknown key 'tran' \(did you mean 'train'\?\)$"):
        load_config(path, ["tran.lr=1"])
    with pytest.raises(ConfigError, match=r"^--set benchmark.x=1: \[benchmark\] must hold named tables"):
        load_config(path, ["benchmark.x=1"])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown key 'tran'"):
        load_config(write(tmp_path, "[tran]\nlr = 1\n"), ["tran.momentum=1"])  # the file made it first


def test_a_set_of_a_whole_section_is_refused_not_a_silent_replacement(tmp_path):
    """`--set 'train = {lr = 0.1}'` replaced the file's [train] with the defaults and one key: a tiny
    config trained P3D-199 sized clips for 30 epochs without a word. `--set train=5` beside `--run b1`
    blamed --run. A new named section may still be given as a table."""
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.05\nepochs = 2\n[benchmark.scenes]\nformat = \"folder\"\nroot = \"s\"\n")
    with pytest.raises(ConfigError, match=r"^--set train=\{lr=0.1\}: \[train\] is a section: set its keys one at "
                                          r"a time, e.g. --set train.lr=\.\.\.$"):
        load_config(path, ["train={lr=0.1}"])
    with pytest.raises(ConfigError, match=r"^--set train=5: \[train\] is a section"):
        load_config(path, ["train=5"], run="b1")
    with pytest.raises(ConfigError, match=r"^--set model=1: \[model\] is a section: .* --set model\.arch="):
        load_config(path, ["model=1"])  # not in the file: the section's first field named
    with pytest.raises(ConfigError, match=r"^--set benchmark.scenes=\{root=\"x\"\}: \[benchmark.scenes\] is a "):
        load_config(path, ['benchmark.scenes={root="x"}'])
    cfg = load_config(path, ['benchmark.more={format="folder", root="m"}'])
    assert cfg.benchmark["more"].root == "m" and cfg.train.epochs == 2
    # without the section in a file too: a command's meaning must not depend on what the file holds
    with pytest.raises(ConfigError, match=r"^--set train=\{lr=0.1\}: \[train\] is a section: .* --set "
                                          r"train\.clip_len="):
        load_config(None, ["train={lr=0.1}"])
    with pytest.raises(ConfigError, match=r"^--set benchmark=5: \[benchmark\] is a section: .* --set "
                                          r"benchmark\.NAME\.KEY=\.\.\.$"):
        load_config(path, ["benchmark=5"])


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/elsewhere", "a/b", "..", "", ".hidden"])
def test_a_benchmark_name_is_a_plain_folder_name(tmp_path, name):
    """[benchmark.NAME] becomes work_dir/transfer/features/NAME: `..` or an absolute name wrote features
    (and a flow store) outside work_dir."""
    path = write(tmp_path, f'[benchmark."{name}"]\nformat = "folder"\nroot = "/data"\n')
    with pytest.raises(ConfigError, match=r"^" + re.escape(str(path)) + r": \[benchmark\..*\]: the name must be a "
                                          r"plain folder name"):
        load_config(path)
    assert list(load_config(write(tmp_path, '[benchmark.ucf-101_s1]\nformat = "folder"\n')).benchmark) == ["ucf-101_s1"]


def test_a_config_nested_too_deeply_is_one_line(tmp_path):
    path = write(tmp_path, "a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r": not a config: arrays or tables nested too deeply$"):
        load_config(path)


def _same(a, b) -> bool:
    return float(a) == float(b) if isinstance(b, (int, float)) and not isinstance(b, bool) else a == b


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """Every setting a shipped file gives reaches the Config with the file's value (read independently
    with tomllib), and the resolved config reads back equal."""
    import tomllib

    from pipeline.config import to_dict

    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    cfg = load_config(path)
    data = to_dict(cfg)
    given = 0
    for key, value in raw.items():
        tables = value.items() if key == "benchmark" else [(None, value)] if isinstance(value, dict) else []
        if not tables:
            assert _same(data[key], value), key
            given += 1
        for name, table in tables:
            section = data[key][name] if name else data[key]
            for field, v in table.items():
                got = section[field]
                assert (all(map(_same, got, v)) and len(got) == len(v)) if isinstance(v, list) else _same(got, v), \
                    f"{key}.{name + '.' if name else ''}{field}"
                given += 1
    assert given >= 5  # a shipped config says something
    assert load_config(path) == cfg
    for name in cfg.transfer.benchmarks:  # a transfer config names tables it has
        assert name in cfg.benchmark, name


@pytest.mark.parametrize("text, needle", [
    ("work_dir = 5\n", "work_dir must be a folder path in quotes (work_dir = \"work\"), got 5"),
    ("work_dir = \"\"\n", "work_dir is empty"),
    ("work_dir = \"  \"\n", "work_dir is empty"),
])
def test_work_dir_must_name_a_folder(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {needle}" or str(err.value).startswith(f"{path}: {needle}")


def test_work_dir_that_is_a_file_and_a_folder_as_config_are_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"^--set work_dir=.*f: work_dir .*f is a file, not a folder$"):
        load_config(None, [f"work_dir={tmp_path / 'f'}"])
    with pytest.raises(ConfigError, match=r"^--config .*: is a folder; give a TOML file, e.g. configs/tiny.toml$"):
        load_config(tmp_path)


def test_a_bad_set_or_run_value_is_blamed_on_the_set_or_run_not_the_file(tmp_path):
    path = write(tmp_path, "[flow]\nbound = 10\n")
    with pytest.raises(ConfigError, match=r"^--set flow.jobs=x: flow.jobs must be int, got 'x'$"):
        load_config(path, ["flow.jobs=x"])
    with pytest.raises(ConfigError, match=r"^--set flow.store=zip: \[flow\] store: must be"):
        load_config(path, ["flow.store=zip"])
    with pytest.raises(ConfigError, match=r"^--run a b: \[train\] run: must be a plain folder name .*got 'a b'$"):
        load_config(path, run="a b")
    with pytest.raises(ConfigError) as err:  # a newline in it was printed as it is: a three-line error
        load_config(path, run="a\nb")
    assert "\n" not in str(err.value) and str(err.value).startswith("--run 'a\\nb': [train] run: must be")
    with pytest.raises(ConfigError, match=r"\(not first\), got '\.hidden'$"):  # a hidden folder
        load_config(path, run=".hidden")
    with pytest.raises(ConfigError) as err:
        load_config(path, run="a\\b")
    assert str(err.value).endswith("got 'a\\b'")  # the name as typed, escaped nowhere
    with pytest.raises(ConfigError) as err:
        load_config(path, run="ab\udcff")  # the byte 0xff of a non-UTF-8 argument, as Python carries it
    assert str(err.value).endswith("got 'ab\\xff'")  # shown once as \xNN, not as a surrogate's repr
    with pytest.raises(ConfigError, match=r"^--run x{60}: \[train\] run: .* at most 100 .*got 'x{40}'\.\.\.$"):
        load_config(path, run="x" * 300)
    assert load_config(path, run="fine-run_1").train.run == "fine-run_1"
    with pytest.raises(ConfigError, match=r"^" + str(path) + r": flow.jobs must be int"):
        load_config(write(tmp_path, "[flow]\njobs = \"x\"\n"))


@pytest.mark.parametrize("override, needle", [
    ("eval.clips=100000000", "[eval] clips: must be 1 to 1000, got 100000000"),
    ("eval.svm_clips=0", "[eval] svm_clips: must be 1 to 1000, got 0"),
])
def test_clip_counts_beyond_any_protocol_are_refused(override, needle):
    """eval.clips=10**8 (a few zeros too many) planned 10**8 views per video before the first progress
    line: minutes of silence and gigabytes, no error."""
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"--set {override}: {needle}"
    assert load_config(None, ["eval.clips=1000", "eval.svm_clips=1"]).eval.clips == 1000


@pytest.mark.parametrize("override, needle", [
    ("flow.bound=inf", "flow.bound must be a finite number, got inf"),  # stored every flow image as zeros
    ("train.lr=nan", "train.lr must be a finite number, got nan"),
    ("train.lr=-inf", "train.lr must be a finite number, got -inf"),
    ("eval.fusion_weights=[nan, 1]", "eval.fusion_weights[0] must be a finite number, got nan"),  # fused 0.00
    ("eval.svm_cs=[1, nan]", "eval.svm_cs[1] must be a finite number, got nan"),  # an sklearn traceback
])
def test_non_finite_floats_are_refused(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_non_finite_floats_are_refused_in_files(tmp_path):
    path = write(tmp_path, "[flow]\nbound = nan\n")
    with pytest.raises(ConfigError, match=r"c\.toml: flow\.bound must be a finite number, got nan"):
        load_config(path)


def test_a_utf8_bom_is_accepted(tmp_path):
    """Windows editors save with a byte order mark; it was refused as 'not valid TOML' at line 1."""
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[flow]\nbound = 12.5\n".encode())
    assert load_config(path).flow.bound == 12.5


def test_hex_octal_binary_numbers_stay_text_in_overrides():
    """`flow.size=0x0` was TOML's hex 0: now the text '0x0', which the size check refuses by name."""
    with pytest.raises(ConfigError, match=r"\[flow\] size: must be 'WxH'.*got '0x0'"):
        load_config(None, ["flow.size=0x0"])
    with pytest.raises(ConfigError, match="flow.jobs must be int, got '0x2'"):
        load_config(None, ["flow.jobs=0x2"])
    assert load_config(None, ["flow.size=340x256"]).flow.size == "340x256"


def test_bare_words_in_list_overrides():
    cfg = load_config(None, ["synth.appearances=[red, blue]", "synth.motions=[up,\"down\"]"])
    assert cfg.synth.appearances == ["red", "blue"] and cfg.synth.motions == ["up", "down"]
    assert load_config(None, ["eval.fusion_weights=[1, 2.5]"]).eval.fusion_weights == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"eval.fusion_weights\[1\] must be float, got 'x'"):
        load_config(None, ["eval.fusion_weights=[1, x]"])


def test_a_mistake_inside_a_table_given_by_set_is_blamed_on_the_set(tmp_path):
    """`--set 'benchmark.a={format="bogus"}'` was blamed on the config file (or `<defaults>`), which has
    no [benchmark]; `--set work_dir.x=1` blamed the file for the --set's dotted key."""
    path = write(tmp_path, "[flow]\nbound = 10\n")
    item = 'benchmark.a={format="bogus"}'
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(item)}: \[benchmark\.a\] format: must be one of"):
        load_config(path, [item])
    with pytest.raises(ConfigError, match=r"^--set benchmark\.a=\{nope=1\}: unknown key 'benchmark\.a\.nope'"):
        load_config(None, ["benchmark.a={nope=1}"])
    with pytest.raises(ConfigError, match=rf"^--set flow\.bound\.x=1: 'flow\.bound' is not a section "
                                          rf"\({re.escape(str(path))} gives it a value\)$"):
        load_config(path, ["flow.bound.x=1"])


def test_a_config_path_holding_a_newline_is_shown_on_one_line(tmp_path):
    path = tmp_path / "x\nwork_dir=1.toml"
    path.write_text("[train]\nepochs = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(tmp_path / "x\\nwork_dir=1.toml"))


@pytest.mark.parametrize("name", ["über", "名前", "a.b"])
def test_a_benchmark_name_beyond_ascii_round_trips_through_config_toml(tmp_path, name):
    """TOML's bare keys are ASCII letters, digits, _ and -: `[benchmark.über]` did not load back."""
    cfg = load_config(write(tmp_path, f'[benchmark."{name}"]\nformat = "synth"\n'))
    out = tmp_path / "out.toml"
    out.write_text(dump_toml(cfg), encoding="utf-8")
    assert load_config(out) == cfg and list(load_config(out).benchmark) == [name]

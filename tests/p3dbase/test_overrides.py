"""p3dbase.overrides: the one `--set key=value` grammar of `python -m pipeline` and `python -m flow.evaluate`."""
import pytest

from flow.evaluate import config_with
from p3dbase.overrides import check_value, parse_override


@pytest.mark.parametrize("item, expected", [
    ("flow.bound=20", ("flow.bound", 20)),
    (" flow.bound = 2.5", ("flow.bound", 2.5)),
    ("flow.store=mmaction", ("flow.store", "mmaction")),  # not a TOML literal: the bare string
    ('flow.size="128x96"', ("flow.size", "128x96")),
    ("flow.use_initial_flow=true", ("flow.use_initial_flow", True)),
    ("eval.fusion_weights=[1, 1.5]", ("eval.fusion_weights", [1, 1.5])),
    ("dataset.annotations=a=b", ("dataset.annotations", "a=b")),  # the first '=' splits
    ("work_dir=", ("work_dir", "")),
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["flow.bound", "=3", " =3"])
def test_parse_override_needs_a_key_and_a_value(item):
    with pytest.raises(ValueError, match=r"expected key=value, e.g. flow.bound=20"):
        parse_override(item)


@pytest.mark.parametrize("value, hint, expected", [
    (3, float, 3.0), (2, str, "2"), (1.5, str, "1.5"), ("on", bool, True), ("No", bool, False),
    ([1, 2], list[float], [1.0, 2.0]), (None, "int | None", None), (4, int | None, 4), ([], list[str], []),
])
def test_check_value_converts_what_is_unambiguous(value, hint, expected):
    hint = int | None if hint == "int | None" else hint
    got = check_value(value, hint, "k")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, hint, message", [
    (1.5, int, "flow.jobs must be int, got 1.5"),
    (True, int, "flow.jobs must be int, got True"),
    (1, bool, "flow.jobs must be bool, got 1"),
    ("far", float, "flow.jobs must be float, got 'far'"),
    (3, list[int], "flow.jobs must be a list, got 3"),
    ([1, "x"], list[int], "flow.jobs[1] must be int, got 'x'"),
])
def test_check_value_refuses_with_the_key(value, hint, message):
    with pytest.raises(ValueError) as err:
        check_value(value, hint, "flow.jobs")
    assert str(err.value) == message


@pytest.mark.parametrize("item", ["bound=12", "store=mmaction", "use_initial_flow=on", 'size="128x96"', "jobs=3",
                                  "size=256"])
def test_flow_evaluate_reads_set_as_the_pipeline_does(item):
    from pipeline.config import load_config  # the CLI's reading of the same item, `flow.` prefixed

    assert config_with([item]) == config_with([f"flow.{item}"]) == load_config(None, [f"flow.{item}"]).flow


@pytest.mark.parametrize("typed", ["0.10", "1e5", "+5", "1_000", "2024-01-01", "07:30:00", "1979-05-27T07:32:00"])
def test_a_text_setting_keeps_a_number_or_date_as_typed(typed):
    """`--set train.run=0.10` is the run "0.10", as `--run 0.10` is (was "0.1": `1e5` became "100000.0",
    a date was refused as a datetime.date); a number setting still gets the number."""
    from pipeline.config import load_config

    key, value = parse_override(f"train.run={typed}")
    assert check_value(value, str, key) == typed
    if typed[0].isdigit() and ":" not in typed:  # a run's name: a plain folder name
        assert load_config(None, [f"train.run={typed}"]).train.run == load_config(None, run=typed).train.run == typed
    assert check_value(parse_override("x=[01, 1e1, 2]")[1], list[str], "x") == ["01", "1e1", "2"]
    number = check_value(parse_override("x=+5")[1], int, "x")
    assert number == 5 and type(number) is int
    assert type(check_value(parse_override("x=5")[1], float, "x")) is float

"""A checkpoint whose values were edited (its checksum recomputed or dropped) or written by another
tool: one line naming the value, where eval, predict, features and export died with a traceback in
scoring (crop 'big', clip_len 0, classes 5, step 'abc', model_config a list)."""
import pytest
import torch

from streams.checkpoint import CHECKSUM, load_stream, payload_sha256, safe_load
from streams.errors import StreamsError
from tests.builders import save_tiny_checkpoint


def _edited(tmp_path, edit, checksum=True):
    path = save_tiny_checkpoint(tmp_path / "ok.pt", "rgb")
    state = torch.load(path, weights_only=True)
    edit(state)
    if checksum:
        state[CHECKSUM] = {"sha256": payload_sha256(state)}
    else:
        state.pop(CHECKSUM)
    torch.save(state, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


def _set(section, key, value):
    def edit(state):
        if section:
            state[section][key] = value
        else:
            state[key] = value
    return edit


@pytest.mark.parametrize("edit, says", [
    (_set("", "classes", 5), "classes must be a non-empty list of names, got 5"),
    (_set("", "classes", []), "classes must be a non-empty list of names, got []"),
    (_set("", "classes", ["red", "gr\neen", "blue"]), "class 1 'gr\\neen' holds a control character"),
    (_set("", "classes", ["red", "\ud800", "blue"]), "class 1 '\\ud800' is not valid UTF-8 text"),
    (_set("", "classes", ["red", "red", "blue"]), "class 'red' is named twice: scores of two outputs would be "
                                                  "reported as one class"),
    (_set("", "classes", ["red", " ", "blue"]), "class 1 ' ' is empty"),
    (_set("", "step", "abc"), "step must be a whole number >= 0, got abc"),
    (_set("", "epoch", -1), "epoch must be a whole number >= 0, got -1"),
    (_set("", "metrics", [1, 2]), "metrics must be a table, got list"),
    (_set("", "model_config", [1]), "model_config must be a table, got list"),
    (_set("", "model_config", None), "model_config must be a table, got NoneType"),
    (_set("", "train_config", None), "train_config must be a table, got NoneType"),
    (_set("train_config", "crop", "big"), "train_config.crop must be int, got 'big'"),
    (_set("train_config", "crop", -8), "train_config.crop must be 1 to 4096, got -8"),
    (_set("train_config", "clip_len", 0), "train_config.clip_len must be 1 to 1024, got 0"),
    (_set("train_config", "resize", [20, "x"]), "train_config.resize[1] must be int, got 'x'"),
    (_set("train_config", "crop", 999), "train_config.crop 999 is larger than its resize"),
    (lambda state: state["train_config"].pop("clip_len"), "train_config has no clip_len"),
    (_set("model_config", "dropout_rgb", "x"), "model_config.dropout_rgb must be float, got 'x'"),
    (_set("model_config", "dropout_rgb", 1.5), "model_config.dropout_rgb must be 0.0 to 1.0, got 1.5"),
    # copied into every export's .json unchecked
    (_set("", "input_convention", {"bad": 1}), "input_convention must be a line of text, got \"{'bad': 1}\""),
])
@pytest.mark.parametrize("checksum", [True, False])
def test_edited_values_are_one_line_naming_the_value(tmp_path, edit, says, checksum):
    path = _edited(tmp_path, edit, checksum)
    with pytest.raises(StreamsError) as err:
        load_stream(path, "rgb")
    assert str(err.value) == f"checkpoint {path}: {says} (edited, or written by another tool): use another " \
                             "checkpoint or train again"


def test_the_untouched_checkpoint_loads(tmp_path):
    model, ckpt = load_stream(save_tiny_checkpoint(tmp_path / "ok.pt", "rgb"), "rgb")
    assert ckpt.train_config["crop"] >= 1 and model.fc.out_features == len(ckpt.classes)


def test_weights_that_do_not_fit_say_which_tensor(tmp_path):
    """The message ended in torch's header line "Error(s) in loading state_dict for P3D:"."""
    path = _edited(tmp_path, _set("", "classes", ["a", "b"]))
    with pytest.raises(StreamsError, match=r"weights do not fit a rgb p3d_tiny of 2 classes: size mismatch for "
                                           r"fc\.weight: .*torch\.Size\(\[2, \d+\]\)\. \(and 1 more\)$"):
        load_stream(path, "rgb")


def test_a_text_file_is_not_a_pytorch_file_without_the_unpicklers_number(tmp_path):
    """It ended in ": 101", the unpickler's KeyError for the byte 'e'."""
    path = tmp_path / "notes.pt"
    path.write_text("hello world\n")
    with pytest.raises(StreamsError) as err:
        safe_load(path)
    assert str(err.value) == f"checkpoint {path} cannot be read (truncated or not a PyTorch file?)"


def test_a_fifo_or_a_link_loop_where_the_finished_model_belongs_is_named(tmp_path):
    """`export` of such a run folder said "last.pt does not exist: training ... has not finished"."""
    import os

    from streams.checkpoint import final_checkpoint

    run = tmp_path / "split1"
    run.mkdir()
    os.mkfifo(run / "last.pt")
    with pytest.raises(StreamsError, match=r"last\.pt is not a regular file \(a FIFO, socket or device\), where the "
                                           r"finished model belongs"):
        final_checkpoint(run)
    (run / "last.pt").unlink()
    (run / "last.pt").symlink_to(run / "last.pt")
    with pytest.raises(StreamsError, match=r"last\.pt is a symbolic link that leads to no checkpoint file"):
        final_checkpoint(run)

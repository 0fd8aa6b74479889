"""import-weights on hostile or odd input: each is refused with one line naming the file and what is
wrong (no traceback, nothing written), or read as its author meant it.

The pseudo-3d-pytorch checkpoints here are our randomised net's tensors under the port's names
(`port_mapping`): what is tested is the refusal of a damaged tensor, not the mapping itself
(tests/streams/test_importers.py checks that against a re-implementation of the port).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from p3dbase.atomic import temp_prefix
from streams.checkpoint import load_checkpoint
from streams.errors import StreamsError
from streams.importers import import_weights, read_classes
from streams.importers.caffe_proto import NetParameter
from streams.importers.pseudo3d_pytorch import port_mapping
from streams.p3d import build_model
from tests.builders import official_layers, randomise, write_caffemodel

CLASSES = 4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise(build_model("p3d_tiny", CLASSES, 3))


def port_state(model) -> dict[str, torch.Tensor]:
    return {theirs: model.state_dict()[ours].clone() for ours, theirs in port_mapping(model).items()}


def save_port(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 10, "arch": "P3D199", "state_dict": state}, path)
    return path


def refused(src: Path, out: Path, match: str, **kwargs) -> str:
    """The one-line StreamsError of importing `src`, after checking that nothing was written."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StreamsError, match=match) as err:
            import_weights(src, out, **kwargs)
    message = str(err.value)
    assert "\n" not in message and not out.exists()
    assert not [w for w in caught if "zero-element" in str(w.message) or "complex" in str(w.message).lower()]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary was left"
    return message


def test_an_unknown_arch_is_refused_for_a_port_checkpoint_as_for_a_caffe_file(tmp_path, tiny):
    """A pseudo-3d-pytorch import with `--arch bogus` ended in build_model's ValueError traceback."""
    port = save_port(tmp_path / "port.pth.tar", port_state(tiny))
    caffe = write_caffemodel(tmp_path / "good.caffemodel", official_layers(tiny))
    for src in (port, caffe):
        message = refused(src, tmp_path / "a.pt", r"^unknown arch 'bogus'; known: .*p3d199", arch="bogus")
        assert "p3d_tiny" in message


def test_a_caffe_blob_of_negative_dimensions_is_refused_naming_the_layer(tmp_path, tiny):
    """A blob shaped [-2, -2] with 4 values passed the size check (the product is 4) and numpy's
    reshape raised "can only specify one unknown dimension" as a traceback."""
    path = write_caffemodel(tmp_path / "neg.caffemodel", official_layers(tiny))
    net = NetParameter.FromString(path.read_bytes())
    fc = next(layer for layer in net.layer if layer.name == "fc_kinetics")
    del fc.blobs[1].shape.dim[:]
    fc.blobs[1].shape.dim.extend([-2, -2])
    path.write_bytes(net.SerializeToString())
    refused(path, tmp_path / "a.pt", r"neg\.caffemodel: layer 'fc_kinetics' blob 1 declares shape \[-2, -2\]: "
                                     "a dimension is negative")


@pytest.mark.parametrize("key, value", [("conv1_custom.weight", torch.ones(16)), ("fc.weight", torch.tensor(1.0))],
                         ids=["conv1-1d", "fc-0d"])
def test_a_port_tensor_of_too_few_dimensions_is_refused_with_its_shape(tmp_path, tiny, key, value):
    """conv1_custom.weight's shape[1] and fc.weight's shape[0] were read unchecked: IndexError traceback."""
    state = port_state(tiny)
    state[key] = value
    src = save_port(tmp_path / "port.pth.tar", state)
    refused(src, tmp_path / "a.pt", rf"port\.pth\.tar: {key} has shape \[{'16' if value.ndim else ''}\], "
                                    rf"expected {5 if key.startswith('conv1') else 2}-D")


def test_a_classifier_of_no_classes_is_refused_before_anything_is_written(tmp_path, tiny):
    """A [0, 256] classifier was imported (exit 0, with torch's zero-element warning) into a checkpoint
    every reader then refused ("classes must be a non-empty list")."""
    state = port_state(tiny)
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:0], state["fc.bias"][:0]
    port = save_port(tmp_path / "port.pth.tar", state)
    refused(port, tmp_path / "a.pt", r"port\.pth\.tar: fc\.weight has shape \[0, 256\]: a classifier of no classes")
    layers = [(name, [b[:0] for b in blobs] if name == "fc_kinetics" else blobs)
              for name, blobs in official_layers(tiny)]
    caffe = write_caffemodel(tmp_path / "zero.caffemodel", layers)
    refused(caffe, tmp_path / "a.pt", r"zero\.caffemodel: classifier layer 'fc_kinetics' has weight shape \[0, 256\]: "
                                      "a classifier of no classes")


def test_a_negative_batchnorm_variance_is_refused_naming_the_tensor(tmp_path, tiny):
    """A negative running variance was imported: every output of the model was NaN."""
    state = port_state(tiny)
    state["layer2.0.bn3.running_var"][3] = -0.5
    port = save_port(tmp_path / "port.pth.tar", state)
    refused(port, tmp_path / "a.pt", r"a\.pt not written: a BatchNorm running variance is negative "
                                     r"\(1 tensor\(s\), e\.g\. layer2\.0\.bn_t\.running_var\)")
    layers = official_layers(tiny)
    layers = [(name, [b.copy() for b in blobs]) for name, blobs in layers]
    dict(layers)["bn_conv1"][3][0, 0] = -1.0
    caffe = write_caffemodel(tmp_path / "neg.caffemodel", layers)
    refused(caffe, tmp_path / "a.pt", r"not written: a BatchNorm running variance is negative .*bn1\.running_var")


def test_an_import_removes_what_a_killed_import_to_the_same_out_left(tmp_path, tiny):
    """A SIGKILLed import left its 260 MB temporary beside --out, and no later import removed it."""
    caffe = write_caffemodel(tmp_path / "good.caffemodel", official_layers(tiny))
    out_dir = tmp_path / "weights"
    out_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = socket.gethostname()
    out = out_dir / "k.pt"
    killed = out_dir / f"{temp_prefix(out)}{host}-{dead}-0"
    live = out_dir / f"{temp_prefix(out)}{host}-{os.getpid()}-7"  # a writer still at work: not ours to remove
    other = out_dir / f"{temp_prefix(out_dir / 'another.pt')}{host}-{dead}-0"  # another file's: not this import's
    for path in (killed, live, other):
        path.write_bytes(b"half a checkpoint")
    import_weights(caffe, out)
    assert not killed.exists() and live.exists() and other.exists()
    assert load_checkpoint(out)[1].num_classes == CLASSES


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_byte_order_mark_is_no_part_of_the_first_class_name(tmp_path):
    """A BOM made the first class '\\ufeffa', which no dataset's 'a' matches."""
    path = write(tmp_path / "classes.txt", "\ufeffa\r\nb\r\nc\r\n")
    assert read_classes(path, 3) == ["a", "b", "c"]


@pytest.mark.parametrize("char", ["\x0c", "\x0b", "\x1c", "\x1e", "\x85"])
def test_a_control_character_inside_a_class_name_is_refused_not_taken_as_a_line_break(tmp_path, char):
    """str.splitlines broke 'b\\x0cx' into two classes, where 'b\\x07x' is refused."""
    path = write(tmp_path / "classes.txt", f"a\nb{char}x\nc\n")
    with pytest.raises(StreamsError, match=r"classes\.txt, line 2: class name 'b\\x..x' holds a control character"):
        read_classes(path, 3)


def test_a_class_list_whose_indices_do_not_run_in_file_order_is_refused(tmp_path):
    """'3 c / 1 a / 2 b / 4 d' gave the classes c, a, b, d: the indices were dropped unread."""
    with pytest.raises(StreamsError, match=r"classInd\.txt, line 1: index 3, expected 1: the indices .* must run "
                                           r"1\.\.N \(or 0\.\.N-1\) in file order"):
        read_classes(write(tmp_path / "classInd.txt", "3 c\n1 a\n2 b\n4 d\n"), 4)
    with pytest.raises(StreamsError, match=r"line 4: index 4, expected 3"):
        read_classes(write(tmp_path / "classInd.txt", "1 a\n\n2 b\n4 d\n"), 3)
    with pytest.raises(StreamsError, match=r"line 2: no index, expected 2"):
        read_classes(write(tmp_path / "classInd.txt", "1 a\nb\n"), 2)
    assert read_classes(write(tmp_path / "classInd.txt", "0 a\n1 b\n2 c\n"), 3) == ["a", "b", "c"]
    assert read_classes(write(tmp_path / "classInd.txt", "1 Apply Eye\n2\tb\n"), 2) == ["Apply Eye", "b"]
    # A plain list keeps a name that starts with a number whole.
    assert read_classes(write(tmp_path / "names.txt", "dunk\n3 point shot\n"), 2) == ["dunk", "3 point shot"]


def test_a_repeated_class_name_is_named_with_its_lines(tmp_path):
    """"class names are not unique" did not say which name, nor where."""
    with pytest.raises(StreamsError, match=r"classes\.txt, line 3: class name 'a' is already on line 1"):
        read_classes(write(tmp_path / "classes.txt", "a\nb\na\n"), 3)


def test_a_file_name_holding_a_newline_stays_on_one_line_of_error(tmp_path, tiny):
    """Raw paths in the messages split the one error line in two."""
    classes = write(tmp_path / "cls\nx.txt", "a\nb\n")
    with pytest.raises(StreamsError, match=r"cls\\nx\.txt: 2 class names") as err:
        read_classes(classes, 3)
    assert "\n" not in str(err.value)
    caffe = tmp_path / "bad\nname.caffemodel"
    caffe.write_bytes(write_caffemodel(tmp_path / "good.caffemodel", official_layers(tiny)).read_bytes()[:1000])
    message = refused(caffe, tmp_path / "a.pt", r"bad\\nname\.caffemodel: ")
    assert "\n" not in message
    with pytest.raises(StreamsError, match=r"missing\\n\.caffemodel: no such file"):
        import_weights(tmp_path / "missing\n.caffemodel", tmp_path / "a.pt")


def test_the_wiring_caveat_is_one_plain_warning_line(tmp_path, tiny, capsys):
    """The warnings module printed `.../streams/importers/__init__.py:86: UserWarning: ...` and the
    source line under it on every pseudo-3d-pytorch import."""
    port = save_port(tmp_path / "port.pth.tar", port_state(tiny))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import_weights(port, tmp_path / "a.pt")
    assert caught == []
    err = capsys.readouterr().err
    assert err.startswith("import-weights: warning: pseudo-3d-pytorch wires its B and C blocks differently")
    assert err.count("\n") == 1


def test_a_complex_tensor_is_refused_not_cast_to_real(tmp_path, tiny):
    """A complex tensor lost its imaginary part with torch's warning, and was imported."""
    state = port_state(tiny)
    state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"].to(torch.complex64)
    port = save_port(tmp_path / "port.pth.tar", state)
    refused(port, tmp_path / "a.pt", r"port\.pth\.tar: layer1\.0\.conv2\.weight holds torch\.complex64 values, "
                                     "not floating-point weights")

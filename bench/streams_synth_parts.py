"""Which half of a SynthActions class a trained stream gets right: the colour, the motion, or both.

    .venv/bin/python bench/streams_synth_parts.py work/train/rgb/split1/last.pt --store work/flow \
        --annotations work/synth/annotations --split 1

SynthActions classes are colour x motion ("RedUp", "BlueOscillate"): flow holds no colour, so a flow
stream tops out at 1/3 of the classes when it gets every motion right. One centre clip per test video.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from bench_cli import run  # bench/, the script's own folder, is on sys.path

from streams import transforms
from streams.checkpoint import load_checkpoint
from streams.clips import ClipDataset


def split_name(name: str) -> tuple[str, str]:
    words = re.findall("[A-Z][a-z]*", name)
    return words[0], "".join(words[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--store", type=Path, default=Path("work/flow"))
    parser.add_argument("--annotations", type=Path, default=Path("work/synth/annotations"))
    parser.add_argument("--split", default="1")
    args = parser.parse_args()
    model, ckpt = load_checkpoint(args.checkpoint)
    classes = ckpt.classes
    lines = (args.annotations / f"testlist0{args.split}.txt").read_text().split()
    test = [(path.rsplit(".", 1)[0], classes.index(path.split("/")[0])) for path in lines]
    cfg = ckpt.train_config
    jitter = cfg.get("scale_jitter") or ()
    ds = ClipDataset(args.store, test, ckpt.modality, cfg["clip_len"], train=False, resize=cfg["resize"],
                     crop=cfg["crop"], scale_jitter=jitter)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    predicted, truth = [], []
    with torch.no_grad():
        for clips, labels in loader:
            predicted += model(transforms.normalize(clips, ckpt.modality)).argmax(1).tolist()
            truth += labels.tolist()
    pairs = [(split_name(classes[p]), split_name(classes[t])) for p, t in zip(predicted, truth, strict=True)]
    n = len(pairs)
    print(f"{ckpt.modality} stream, {n} test videos: class {100 * sum(p == t for p, t in pairs) / n:.1f}%, "
          f"colour {100 * sum(p[0] == t[0] for p, t in pairs) / n:.1f}%, "
          f"motion {100 * sum(p[1] == t[1] for p, t in pairs) / n:.1f}%")


if __name__ == "__main__":
    run(main)

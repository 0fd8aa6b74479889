"""Settings of the stream networks and their training: the `[model]` and `[train]` sections.

The defaults are the paper's recipe for P3D-199 (ImageNet start, 16x160x160 clips, SGD with lr 0.001,
x10 for the classifier, partial BN); `configs/synth.toml` sets small CPU values.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from p3dbase.device import check_device_setting
from p3dbase.errors import excerpt, shown, text_problem
from p3dbase.overrides import check_range
from p3dbase.overwrite import folder_name_problem

ARCH_NAMES = ("p3d63", "p3d131", "p3d199", "p3d_small", "p3d_tiny")  # streams.p3d.ARCHS

# Bounds that no real recipe comes near, so that a typo is one line naming the key before any work,
# not a traceback (or petabytes asked of the allocator) minutes later.
# Seeds are below 2**32: sklearn's random_state (eval's and transfer's SVM folds) takes no more, and
# train's torch.manual_seed(seed * 1000 + ...) then stays well inside its 64 bits.
SEED_LIMIT = 2 ** 32
# Clips per video, at most (train.val_clips, eval.clips, svm_clips): the protocols use 10-30 (the
# paper 20); a mistyped 10**8 planned 10**8 views per video before the first progress line, silently,
# for minutes and gigabytes.
MAX_CLIPS = 1000
MAX_SIDE = 4096  # px: resize and scale_jitter, so crop too (a 4K frame is 3840x2160)
MAX_CLIP_LEN = 1024  # frames or flow fields per clip (the paper: 16)
# The optimiser's numbers are float32 in torch: lr = 1e300 is finite here and overflows there.
MAX_LR = 10.0  # recipes use 1e-4 to 0.1; SGD diverges far below 10
# and a practical floor: no recipe trains below 1e-8, and 1e-300 (0 in float32) "trained" in silence
MIN_LR = 1e-8
MAX_WEIGHT_DECAY = 1.0  # recipes use 1e-5 to 1e-3
MAX_LR_MULT = 1000.0  # fc_lr_mult, flow_conv1_lr_mult: Caffe recipes use 1 to 20
MAX_WARMUP_EPOCHS = 1000.0
# The run's length: recipes train 30-100 epochs, or 150K iterations (the paper's Sports-1M); 10**20 of
# either was accepted and trained without end.
MAX_EPOCHS = 100_000
MAX_ITERATIONS = 10**9


def check_seed(seed: int, name: str = "seed") -> None:
    """ValueError naming `name` unless 0 <= seed < SEED_LIMIT, what every user of a seed accepts."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name}: must be 0 to {SEED_LIMIT - 1} (2**32 - 1, what numpy and sklearn seed with), "
                         f"got {seed}")


@dataclass
class ModelConfig:
    arch: str = "p3d199"  # one of ARCH_NAMES
    pretrained: str = ""  # a 2-D ImageNet ResNet state dict (torchvision/timm names); "" = random init
    init_from: str = ""  # a P3D checkpoint of the same modality (ours, or made by `import-weights`), or a
    # training run folder (its last.pt), to fine-tune: every weight but a new classifier when the classes
    # differ; "" = pretrained or random
    pretrained_input: str = "torchvision"  # what the 2-D conv1 expects: "torchvision" (RGB 0-1 with
    # ImageNet mean/std, converted to our BGR 0-255 input) or "caffe" (already BGR 0-255 minus mean)
    dropout_rgb: float = 0.5  # official Kinetics deploy nets: 0.5 RGB, 0.7 flow
    dropout_flow: float = 0.7  # the flow stream's, as dropout_rgb
    partial_bn: bool = True  # freeze every BN but bn1 (running stats and affine), as the official nets

    def validate(self) -> None:
        if self.arch not in ARCH_NAMES:
            raise ValueError(f"arch: must be one of {', '.join(ARCH_NAMES)}, got {self.arch!r}")
        if self.pretrained and self.init_from:
            raise ValueError("init_from: give a 2-D ImageNet net (pretrained) or a P3D checkpoint (init_from), "
                             "not both")
        if self.pretrained_input not in ("torchvision", "caffe"):
            raise ValueError(f"pretrained_input: must be 'torchvision' or 'caffe', got {self.pretrained_input!r}")
        for name in ("dropout_rgb", "dropout_flow"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {value}")

    def dropout(self, modality: str) -> float:
        return self.dropout_flow if modality == "flow" else self.dropout_rgb


@dataclass
class TrainConfig:
    # Clips.
    clip_len: int = 16  # frames (RGB) or flow fields (flow) per clip
    resize: list[int] = field(default_factory=lambda: [182, 242])  # [height, width] before cropping
    scale_jitter: list[int] = field(default_factory=list)  # [min, max] short side; [] = fixed `resize`
    crop: int = 160  # square crop side (random for training, centre for validation)
    flip: bool = True  # random horizontal flip for training (flow: x inverted)

    # Optimisation. batch_size is the global batch: each of N DDP processes takes batch_size / N.
    batch_size: int = 32  # clips per optimiser step, over all processes
    epochs: int = 30  # passes over the training videos, one random clip per video each; 1-100,000
    # > 0: the schedule counted in optimiser steps, as Caffe solvers state it (the paper's Sports-1M:
    # 150K): train this many steps, lr_steps are steps; `epochs` is then unused. 0 = epochs; at most 10**9.
    iterations: int = 0
    max_steps: int = 0  # stop after this many steps (the schedule stays the full one); 0 = no limit
    lr: float = 0.001  # SGD learning rate (fc: x fc_lr_mult; flow conv1: x flow_conv1_lr_mult)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # on conv and fc weights; none on biases and BN scale/shift
    schedule: str = "step"  # "step" (x lr_gamma at each of lr_steps) or "cosine" (to 0 at the end)
    # epochs (steps with `iterations`), increasing, each > 0; one past the run never acts
    lr_steps: list[float] = field(default_factory=lambda: [12.0, 24.0])
    lr_gamma: float = 0.1  # schedule = "step": the factor at each of lr_steps
    warmup_epochs: float = 0.0  # linear warm-up from 0
    fc_lr_mult: float = 10.0  # fc weights (bias: twice this, as Caffe's lr_mult 10/20)
    flow_conv1_lr_mult: float = 5.0  # conv1 of the flow stream (official flow nets)

    # Speed. amp, channels_last and compile act on CUDA only: on a CPU they are off whatever they say.
    amp: str = "bf16"  # "bf16", "fp16" (with a GradScaler) or "off"
    channels_last: bool = True  # channels_last_3d memory format
    compile: bool = False  # torch.compile the model; off until bench/gpu.py shows it faster on a GPU (docs/gpu.md)
    sync_bn: bool = True  # with several processes, BN in training mode uses the global batch
    workers: int = 8  # DataLoader processes per training process; 0 = load in the main process. A GPU
    # needs enough of them for `data_wait` in metrics.jsonl to stay near 0; at most 4 per core
    fast_decode: bool = False  # training clips' JPEGs by libjpeg-turbo's fast IDCT and upsampling: ~8%
    # less decoding CPU, pixels ~1.6 levels off the accurate decode (flow: EPE +0.014 px); eval stays
    # accurate (BENCHMARKS.md, "Training loader")
    decode: str = "cpu"  # "cpu"; "cuda": workers only read a training clip's JPEGs (a jpeg store), the
    # trainer decodes them with nvJPEG (torchvision: the nvjpeg extra), resizes, crops and flips on its
    # device; "hybrid": workers do the JPEGs' entropy decoding alone (~70% of the CPU), the trainer's
    # device the rest (streams.gpu_decode)
    threads: int = 0  # torch CPU threads per process; 0 = torch's default (one per core), at most 4 per
    # core (checked where training starts: a config from a larger machine still loads). On a shared
    # machine 1 can be several times faster: busy-waiting threads stall when the cores are taken

    # Bookkeeping.
    seed: int = 0  # initial weights, sampling order, augmentation: a run is a function of it; < 2**32
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available, else cpu), "cpu", "cuda", "cuda:N"
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 2  # newest step checkpoints kept (last.pt apart; no best.pt: none is chosen by accuracy)
    val_clips: int = 1  # evenly spaced centre-crop clips per validation video, 1-1000
    log_every: int = 10  # steps between metrics.jsonl lines (and the NaN check)
    # Honest selection: whole groups of the training split held out as validation (never trained
    # on; eval chooses the fusion rule and SVM C on them). Group names ("g08"), or a fraction of the
    # split's groups picked by `seed`; a dataset without groups counts each video as its own group.
    val_groups: list[str] = field(default_factory=list)
    val_fraction: float = 0.0  # share of the groups held out when val_groups is empty; 0 = none
    run: str = ""  # a named run: training and eval under work_dir/runs/<run>/ ("" = work_dir/train, eval)
    progress: bool = True  # tqdm bars (training, validation)
    tensorboard: bool = False  # also write metrics.jsonl's scalars to out_dir/tb (needs the `tb` extra)

    def validate(self) -> None:
        positive = ("clip_len", "crop", "batch_size", "epochs", "val_clips", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "iterations", "checkpoint_every", "workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"epochs: must be 1 to {MAX_EPOCHS:,} (recipes train 30 to 100; more never ends), "
                             f"got {self.epochs}")
        if self.iterations > MAX_ITERATIONS:
            raise ValueError(f"iterations: must be 0 to {MAX_ITERATIONS:,} (0 = count epochs; the paper's Sports-1M "
                             f"trains 150,000; more never ends), got {self.iterations}")
        if self.val_clips > MAX_CLIPS:
            raise ValueError(f"val_clips: must be 1 to {MAX_CLIPS}, got {self.val_clips}")
        if self.clip_len > MAX_CLIP_LEN:
            raise ValueError(f"clip_len: must be 1 to {MAX_CLIP_LEN} (the paper: 16), got {self.clip_len}")
        check_range("lr", self.lr, MIN_LR, MAX_LR, f"recipes use 1e-4 to 0.1; SGD diverges far below {MAX_LR:g}, "
                    "and torch holds lr in float32; none trains below the floor")
        check_range("weight_decay", self.weight_decay, 0, MAX_WEIGHT_DECAY, "recipes use 1e-5 to 1e-3; torch holds it "
                    "in float32")
        for name in ("fc_lr_mult", "flow_conv1_lr_mult"):
            check_range(name, getattr(self, name), 0, MAX_LR_MULT, "a multiple of lr: Caffe recipes use 1 to 20; 0 "
                        "freezes the layer")
        check_range("lr_gamma", self.lr_gamma, 0, 1, "the factor that lowers lr at each of lr_steps; recipes use 0.1",
                    above=True)
        check_range("warmup_epochs", self.warmup_epochs, 0, MAX_WARMUP_EPOCHS, "recipes warm up for 0 to 5")
        if not self.iterations and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs: {self.warmup_epochs} is more than epochs = {self.epochs} (the run "
                             "would end before its warm-up, never at the full learning rate)")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {self.momentum}")
        if len(self.resize) != 2 or not 1 <= min(self.resize) <= max(self.resize) <= MAX_SIDE:
            raise ValueError(f"resize: must be [height, width], each 1 to {MAX_SIDE} px, got {self.resize}")
        if self.scale_jitter:
            if len(self.scale_jitter) != 2 or not 1 <= self.scale_jitter[0] <= self.scale_jitter[1] <= MAX_SIDE:
                raise ValueError(f"scale_jitter: must be [] or [min, max] short sides with min <= max <= {MAX_SIDE} "
                                 f"px, got {self.scale_jitter}")
            if self.scale_jitter[0] < self.crop:
                raise ValueError(f"scale_jitter: the smallest short side {self.scale_jitter[0]} is below "
                                 f"crop = {self.crop}")
        elif min(self.resize) < self.crop:
            raise ValueError(f"crop: {self.crop} is larger than resize = {self.resize}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction and self.val_groups:
            raise ValueError("val_groups: give held-out groups by name or by val_fraction, not both")
        if len(set(self.val_groups)) != len(self.val_groups):
            twice = sorted({g for g in self.val_groups if self.val_groups.count(g) > 1})
            raise ValueError(f"val_groups: {', '.join(twice)} given twice (a typo for another group?)")
        if self.run and (problem := folder_name_problem(self.run)):
            name = shown(self.run)  # undecodable bytes as \\xNN; then a control character as its escape
            got = excerpt(name, 40) if text_problem(name) else f"'{name[:40]}'{'...' if len(name) > 40 else ''}"
            raise ValueError(f"run: {problem}, got {got}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule: must be 'step' or 'cosine', got {self.schedule!r}")
        self._validate_lr_steps()
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp: must be 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if self.decode not in ("cpu", "cuda", "hybrid"):
            raise ValueError(f"decode: must be 'cpu', 'cuda' or 'hybrid', got {self.decode!r}")
        check_seed(self.seed)
        check_device_setting(self.device)

    def _validate_lr_steps(self) -> None:
        """Increasing, each > 0: a step at 0 or below lowers lr from the first step on. One past the end of
        the run is allowed: it never acts, as when a smoke run sets epochs = 1 and keeps the recipe's steps."""
        unit = "steps" if self.iterations else "epochs"
        # [12, 12] lowered lr twice at once
        if any(b <= a for a, b in itertools.pairwise(self.lr_steps)):
            raise ValueError(f"lr_steps: must be strictly increasing {unit}, got {self.lr_steps}")
        if self.lr_steps and not self.lr_steps[0] > 0:
            raise ValueError(f"lr_steps: must be {unit} > 0 (a step at {self.lr_steps[0]:g} lowers lr from the start), "
                             f"got {self.lr_steps}")

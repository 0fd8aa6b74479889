"""Settings that passed validation and then crashed a stage, ran forever or stored degenerate output
(a probe of extreme values): each is now one line naming the key and why, before any work, and the
values at each bound still validate and work where they are used."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from flow.config import LAMBDA_RANGE, MAX_EPSILON, MAX_GAMMA, MAX_TAU, SCALE_STEP_RANGE, THETA_RANGE, FlowConfig
from flow.tvl1 import MIN_SIDE, OpenCVTVL1
from flow.tvl1_fast import FastTVL1
from fusion.fuse import fuse, weight_curve
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from streams.config import MAX_LR, MAX_LR_MULT, MAX_WEIGHT_DECAY, SEED_LIMIT
from tests.builders import REPO


@pytest.mark.parametrize("override, needle", [
    # 1. Seeds: numpy, torch and sklearn raised "expected non-negative integer" or an overflow.
    ("train.seed=-1", "[train] seed: must be 0 to 4294967295 (2**32 - 1"),
    ("train.seed=99999999999999999999999", "[train] seed: must be 0 to 4294967295"),
    ("synth.seed=-1", "[synth] seed: must be 0 to 4294967295"),
    ("eval.seed=-1", "[eval] seed: must be 0 to 4294967295"),
    ("transfer.seed=4294967296", "[transfer] seed: must be 0 to 4294967295"),
    # 2. Finite in float64, overflowing float32 in torch's optimiser.
    ("train.lr=1e300", "[train] lr: must be 1e-08 to 10 (recipes use 1e-4 to 0.1"),
    ("train.lr=1e-300", "[train] lr: must be 1e-08 to 10 (recipes use 1e-4 to 0.1"),  # 0 in float32: no training
    ("train.weight_decay=1e300", "[train] weight_decay: must be 0 to 1 (recipes use"),
    ("train.fc_lr_mult=1e300", "[train] fc_lr_mult: must be 0 to 1000 (a multiple of lr"),
    ("train.flow_conv1_lr_mult=-1", "[train] flow_conv1_lr_mult: must be 0 to 1000"),
    ("train.lr_gamma=0", "[train] lr_gamma: must be > 0 and at most 1"),
    ("train.lr_gamma=1e300", "[train] lr_gamma: must be > 0 and at most 1"),
    ("train.warmup_epochs=1e300", "[train] warmup_epochs: must be 0 to 1000"),
    # 3. Fusion: [1e308, 1e308] scored every video 0 in silence; a grid of [1e308] broke the report.
    ("eval.fusion_weights=[1e308,1e308]", "[eval] fusion_weights: must be [rgb, flow], each 0 to 1000"),
    ("eval.fusion_weights=[1e-300,1]", "[eval] fusion_weights: flow is 1e+300 times rgb, at most 1000"),
    ("eval.fusion_cv_grid=[1e308]", "[eval] fusion_cv_grid: must be a non-empty list of flow weights, each 0 to 1000"),
    # 4. Sizes and counts that allocated petabytes or ran forever.
    ("train.val_clips=99999999999999999999", "[train] val_clips: must be 1 to 1000"),
    ("train.scale_jitter=[160,99999999]", "[train] scale_jitter: must be [] or [min, max] short sides with "
                                          "min <= max <= 4096 px"),
    ("train.scale_jitter=[200,180]", "[train] scale_jitter: must be [] or [min, max]"),
    ("train.resize=[182,99999999]", "[train] resize: must be [height, width], each 1 to 4096 px"),
    ("train.clip_len=99999999", "[train] clip_len: must be 1 to 1024"),
    ("eval.batch_views=99999999999", "[eval] batch_views: must be 1 to 4096"),  # read a whole video ahead
    ("synth.frames=99999999999999999999", "[synth] frames: must be 2 to 10000"),
    ("synth.size=99999999999999999999", "[synth] size: must be 16 to 4096"),
    ("synth.groups=99999999999999999999", "[synth] groups: must be 3 to 10000"),
    ("synth.clips_per_group=99999999999999999999", "[synth] clips_per_group: must be 1 to 1000"),
    ("synth.size=4096", "[synth] size: 32 frames of 4096x4096 px is more than a clip may hold"),
    ("synth.fps=1e300", "[synth] fps: must be 1 to 1000"),  # was blamed on synth.codec
    ("synth.fps=0.001", "[synth] fps: must be 1 to 1000"),  # so was this
    ("synth.camera_pan=1e300", "[synth] camera_pan: must be 0 to 5"),  # rendered NaN frames
    ("flow.warps=99999999999999999999", "[flow] warps: must be 1 to 1000"),
    # A scheduler address distributed cannot parse: its ValueError was a traceback.
    ("flow.scheduler=tcp://localhost", "[flow] scheduler: 'tcp://localhost': expected [protocol://]host:port"),
    ("flow.scheduler=node1", "[flow] scheduler: 'node1': expected [protocol://]host:port"),
    ("flow.scheduler=inproc://x", "[flow] scheduler: 'inproc://x': inproc:// is no protocol a scheduler on "
                                  "another machine listens on"),
    ("flow.nscales=100000", "[flow] nscales: must be 1 to 1000"),
    ("flow.inner_iterations=0", "[flow] inner_iterations: must be 1 to 1000"),
    ("flow.outer_iterations=100000", "[flow] outer_iterations: must be 1 to 1000"),
    ("flow.bound=1e300", "[flow] bound: must be 0.5 to 255 px (one uint8 level is 2 * bound / 255 px"),
    ("flow.bound=1e-300", "[flow] bound: must be 0.5 to 255 px"),
    ("flow.rawframes_bound=1000", "[flow] rawframes_bound: must be 0.5 to 255 px"),
    ("transfer.svm_clips=99999999", "[transfer] svm_clips: must be 1 to 1000"),
    # 5. TV-L1 outside the range where it finds motion: NaN flow stored as all-zero images and "0 failed"
    # (tau, theta, gamma at 1e308), no motion at all (epsilon 1e308), or an OpenCV assertion for every
    # video (scale_step 1e-308).
    ("flow.tau=1e308", "[flow] tau: must be > 0 and at most 0.25 (the scheme's time step: it converges for "
                       "tau < 0.25 in theory, OpenCV uses 0.25; 1e308 stored NaN flow), got 1e+308"),
    ("flow.tau=10", "[flow] tau: must be > 0 and at most 0.25"),
    ("flow.tau=0", "[flow] tau: must be > 0 and at most 0.25"),
    ("flow.theta=1e308", "[flow] theta: must be 0.01 to 1 (OpenCV 0.3: below, the solver's steps are too small "
                         "to move; 1e308 stored NaN flow), got 1e+308"),
    ("flow.theta=1e-6", "[flow] theta: must be 0.01 to 1"),
    ("flow.lambda_=1e308", "[flow] lambda_: must be 0.01 to 100 (the data term's weight, OpenCV 0.15"),
    ("flow.lambda_=0.001", "[flow] lambda_: must be 0.01 to 100"),
    ("flow.epsilon=1e308", "[flow] epsilon: must be > 0 and at most 0.1 px (the stopping threshold, OpenCV 0.01: "
                           "larger stops the solver before the flow has moved), got 1e+308"),
    ("flow.epsilon=0", "[flow] epsilon: must be > 0 and at most 0.1 px"),
    ("flow.gamma=-1", "[flow] gamma: must be 0 to 10 (the illumination term's weight, OpenCV 0 = none: larger "
                      "explains motion away as brightness change), got -1.0"),
    ("flow.gamma=1e308", "[flow] gamma: must be 0 to 10"),
    ("flow.scale_step=1e-308", "[flow] scale_step: must be 0.3 to 0.99 (the pyramid's size ratio, OpenCV 0.8: "
                               "below, small frames shrink to 0 px; at 1 the levels never shrink), got 1e-308"),
    ("flow.scale_step=1", "[flow] scale_step: must be 0.3 to 0.99"),
    # 6. An SVM's C: 1e308 gave all-zero weights (the SVM rows 0.00, below chance); 1e100 ran for minutes.
    ("eval.svm_cs=[1e308]", "[eval] svm_cs: must be a non-empty list of C values, each 1e-06 to 1e+06 (on "
                            "L2-normalised features C beyond 1e4 is the hard margin; 1e308 gave all-zero weights), "
                            "got [1e+308]"),
    ("eval.svm_cs=[0.1,1e-300]", "[eval] svm_cs: must be a non-empty list of C values, each 1e-06 to 1e+06"),
    ("eval.svm_cs=[]", "[eval] svm_cs: must be a non-empty list of C values"),
    ("transfer.svm_cs=[1e308]", "[transfer] svm_cs: must be a non-empty list of C values, each 1e-06 to 1e+06"),
    # 7. The run's length: 10**20 epochs or iterations trained without end.
    ("train.epochs=99999999999999999999", "[train] epochs: must be 1 to 100,000 (recipes train 30 to 100; more "
                                          "never ends), got 99999999999999999999"),
    ("train.iterations=99999999999999999999", "[train] iterations: must be 0 to 1,000,000,000 (0 = count epochs; "
                                              "the paper's Sports-1M trains 150,000; more never ends)"),
    # 8. lr_steps: a step at or below 0 lowered lr from the first step, in silence.
    ("train.lr_steps=[-1.0]", "[train] lr_steps: must be epochs > 0 (a step at -1 lowers lr from the start), "
                              "got [-1.0]"),
    ("train.lr_steps=[0,10]", "[train] lr_steps: must be epochs > 0"),
    ("train.lr_steps=[20,10]", "[train] lr_steps: must be strictly increasing epochs, got [20.0, 10.0]"),
    ("train.lr_steps=[12,12]", "[train] lr_steps: must be strictly increasing epochs, got [12.0, 12.0]"),  # lr x 0.01
    ('train.val_groups=["g02","g03","g02"]', "[train] val_groups: g02 given twice (a typo for another group?)"),
])
def test_an_extreme_setting_is_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert message.startswith(f"--set {override}: {needle}")
    assert "\n" not in message


@pytest.mark.parametrize("overrides, key", [
    (["synth.frames=10000", "synth.size=1024"], "frames"),
    (["synth.frames=32", "synth.size=2048"], "size"),
    (["synth.clips_per_group=1000", "synth.groups=100"], "clips_per_group"),
    (["synth.clips_per_group=100", "synth.groups=10000"], "groups"),
])
def test_a_product_too_large_names_the_factor_raised_most(overrides, key):
    """A clip is rendered whole in memory, and every video is planned up front: each factor within its
    bound, the product still too large; the loader blames the --set of the key named."""
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    given = next(o for o in overrides if o.startswith(f"synth.{key}="))
    assert str(err.value).startswith(f"--set {given}: [synth] {key}: "), str(err.value)


def test_the_values_at_each_bound_still_validate():
    cfg = load_config(None, [
        "train.seed=4294967295", "synth.seed=0", "eval.seed=4294967295", "transfer.seed=4294967295",
        "train.lr=10", "train.weight_decay=1", "train.fc_lr_mult=1000", "train.flow_conv1_lr_mult=0",
        "train.lr_gamma=1", "train.iterations=100", "train.warmup_epochs=1000", "train.val_clips=1000",
        "train.scale_jitter=[160,4096]", "train.resize=[4096,4096]", "train.clip_len=1024", "train.threads=4",
        "eval.fusion_weights=[1000,1000]", "eval.fusion_cv_grid=[0,1000]", "transfer.svm_clips=1000",
        "synth.groups=10000", "synth.clips_per_group=8", "synth.frames=10000", "synth.size=32", "synth.fps=1000",
        "synth.camera_pan=5", "synth.noise=255",
        "flow.bound=0.5", "flow.rawframes_bound=255", "flow.warps=1000", "flow.nscales=1000",
        "flow.inner_iterations=1000", "flow.outer_iterations=1000",
        "flow.tau=0.25", "flow.theta=1", "flow.lambda_=100", "flow.epsilon=0.1", "flow.gamma=10",
        "flow.scale_step=0.99", "eval.svm_cs=[1e-6,1e6]", "transfer.svm_cs=[1e-6,1e6]",
    ])
    assert (cfg.train.seed, cfg.train.lr, cfg.eval.fusion_weights, cfg.flow.bound) == (4294967295, 10.0,
                                                                                        [1000.0, 1000.0], 0.5)
    for alone in ("[0,1]", "[1,0]"):  # one stream alone
        load_config(None, [f"eval.fusion_weights={alone}"])


def test_every_user_of_a_seed_takes_the_largest_one():
    """The bound is what all of them accept: sklearn's folds (eval, transfer) take no more than 2**32 - 1."""
    top = SEED_LIMIT - 1
    next(KFold(2, shuffle=True, random_state=top).split(np.zeros((4, 1))))
    with pytest.raises(ValueError):
        next(KFold(2, shuffle=True, random_state=SEED_LIMIT).split(np.zeros((4, 1))))
    np.random.default_rng([top, 10**6, 10**9])
    torch.manual_seed(top * 1000 + 64 + 10**9)  # streams.resume: seed * 1000 + rank + 1 + step
    torch.Generator().manual_seed(top + 10**6)  # the DistributedSampler's seed + epoch


def test_the_largest_learning_rates_fit_torchs_float32():
    """lr = 1e300 raised 'value cannot be converted to type float without overflow' at the first step."""
    weight = torch.nn.Parameter(torch.ones(3))
    lr = MAX_LR * 2 * MAX_LR_MULT  # the fc bias runs at twice fc_lr_mult
    optimizer = torch.optim.SGD([weight], lr=lr, momentum=0.9, weight_decay=MAX_WEIGHT_DECAY)
    weight.sum().backward()
    optimizer.step()
    assert torch.isfinite(weight).all()


def test_fusion_at_the_bound_stays_finite_on_the_largest_float32_scores():
    big = np.full((2, 3), np.finfo(np.float32).max, np.float32)
    big[:, 0] = -big[:, 0]
    fused = fuse(big, big, (1000.0, 1000.0))
    assert np.isfinite(fused).all() and (fused.argmax(1) == 1).all()
    assert np.isfinite(weight_curve(big, big, [(1,), (1,)], [0.0, 1000.0])).all()


def test_the_cli_refuses_before_any_work(tmp_path, capsys):
    work = tmp_path / "work"
    code = main(["synth", "--set", f"work_dir={work}", "--set", "synth.fps=1e300"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == ("error: --set synth.fps=1e300: [synth] fps: must be 1 to 1000 (what the container "
                   "records; the motion is set per frame), got 1e+300\n")
    assert not work.exists()


@pytest.mark.parametrize("overrides", [
    ["flow.theta=0.01", "flow.lambda_=0.01", "flow.scale_step=0.3", "flow.gamma=0", "flow.epsilon=1e-300"],
    ["train.epochs=100000", "train.lr_steps=[1e-9, 100000]"],
    ["train.iterations=1000000000", "train.lr_steps=[60000, 1000000000]"],
    ["train.epochs=1"],  # a smoke run keeps the recipe's lr_steps [12, 24]: past its end, they never act
    ["train.iterations=2", "train.lr_steps=[60000, 120000]"],
])
def test_the_other_ends_of_each_range_validate(overrides):
    load_config(None, overrides)


def test_a_step_at_zero_in_a_run_counted_in_iterations_names_steps():
    with pytest.raises(ConfigError, match=r"\[train\] lr_steps: must be steps > 0 \(a step at 0 lowers lr from"):
        load_config(None, ["train.iterations=1000", "train.lr_steps=[0]"])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_every_shipped_config_still_loads(name):
    """The bounds are of values no recipe needs: every shipped config and the defaults stay valid."""
    load_config(REPO / "configs" / name)
    load_config(None)


@pytest.mark.parametrize("scale_step", SCALE_STEP_RANGE)
@pytest.mark.parametrize("backend", [OpenCVTVL1, FastTVL1])
def test_tvl1_at_the_ends_of_its_ranges_finds_finite_motion_on_the_smallest_frames(scale_step, backend):
    """Each bound is a value the solvers run at: 2 px frames (the least TV-L1 takes) at the smallest
    scale_step, and the most of every other parameter at once, give finite flow."""
    rng = np.random.default_rng(0)
    for frames in (rng.integers(0, 256, (2, MIN_SIDE, 3), np.uint8), rng.integers(0, 256, (2, 24, 32), np.uint8)):
        high = FlowConfig(tau=MAX_TAU, theta=THETA_RANGE[1], lambda_=LAMBDA_RANGE[1], epsilon=MAX_EPSILON,
                          gamma=MAX_GAMMA, scale_step=scale_step, nscales=3, warps=1, outer_iterations=2)
        low = FlowConfig(theta=THETA_RANGE[0], lambda_=LAMBDA_RANGE[0], scale_step=scale_step, nscales=3, warps=1,
                         outer_iterations=2)
        for cfg in (high, low):
            cfg.validate()
            assert np.isfinite(backend(cfg).compute(frames)).all()

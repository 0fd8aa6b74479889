"""Settings of the flow stage: the `[flow]` section of a config file."""
from __future__ import annotations

from dataclasses import dataclass

from p3dbase.cluster import scheduler_problem
from p3dbase.overrides import check_range

# The flow bound, px: one uint8 level is 2 * bound / 255 px (flow.encoding). Below 0.5 px every real
# motion is clipped; above 255 a level is over 2 px and small motion reads as none (recipes use 15-20).
# 1e300 and 1e-300 ran "fine" and stored flow that was all 128, or all 0 and 255.
MIN_BOUND, MAX_BOUND = 0.5, 255.0
# TV-L1's counts (nscales, warps, inner_iterations, outer_iterations), at most: the defaults are 5-30;
# warps = 10**20 never finished. The pyramid stops at 16 px anyway, so more scales change nothing.
MAX_ITERATIONS = 1000
# TV-L1's other parameters, (least, most): where the solver still finds motion (OpenCV's defaults in
# the middle; measured on a textured 3 px shift, both CPU backends alike). Outside, 1e308 stored NaN
# flow (tau, theta, gamma) or none at all (epsilon), and a scale_step of 1e-308 resized a level to
# 0 px (an OpenCV assertion for every video).
# tau: the scheme converges for tau < 0.25 in theory, and OpenCV's default is 0.25.
MAX_TAU = 0.25
# lambda_ weighs the data term against smoothness: at 0.001 the flow of the 3 px shift was 0.03 px.
LAMBDA_RANGE = (0.01, 100.0)
# theta couples u and v: the steps lambda * theta and tau / theta shrink with it; at 0.001 no motion.
THETA_RANGE = (0.01, 1.0)
# epsilon: a warp stops once the root-mean-square update of the flow is below it, px: at 1 a warp
# stopped with 60% of the motion, at 1e308 before any.
MAX_EPSILON = 0.1
# gamma weighs the illumination-change term, 0 = none: at 40 a quarter of the motion was lost, at
# 100 all of it (the flow pointed backwards).
MAX_GAMMA = 10.0
# scale_step: each pyramid level is this times the one above; below 0.3 the smallest frames TV-L1
# takes (2 px) shrink to 0 px, an OpenCV assertion; at 0.99 a 340x256 pyramid holds ~300 levels.
SCALE_STEP_RANGE = (0.3, 0.99)


@dataclass
class FlowConfig:
    # Decoding and storage.
    size: str = "340x256"  # "WxH", a short side ("256"), or "" to keep the decoded size
    store: str = "packed"  # "packed" (a file per video: fast random windows) or "mmaction" (TSN JPEG layout)
    bound: float = 20.0  # flow is clipped to +-bound px before the uint8 encoding (zero motion = 128); 0.5-255
    jpeg_quality: int = 95  # of every JPEG written (store = "mmaction", or a "jpeg" codec); 95 as mmaction2/TSN
    # store = "packed": how RGB frames are kept: "jpeg" (lossy, 3.3x smaller than png, as mmaction2
    # keeps them), "png" (lossless) or "raw" (uint8 as is, 10x jpeg's bytes). docs/flow.md, "Codecs".
    codec: str = "jpeg"
    # store = "packed": how flow images are kept, same choices. JPEG q95 leaves the EPE against ground
    # truth unchanged to 0.001 px (bench/flow_store.py) at 0.4x png's bytes.
    flow_codec: str = "jpeg"
    # A video decoding fewer frames than its container declares, by more than this share (and more
    # than one frame), is recorded as truncated. 1.0 turns the check off (variable-frame-rate files).
    missing_frames_tolerance: float = 0.02
    # Largest frame (width * height, after `size`) a video is processed at; 0 = no limit. TV-L1 holds
    # about 30 float images per pixel per worker: a 4000x3000 video at native size took 3.3 GB for
    # two pairs. The default admits 1920x1080 and refuses larger frames with a message.
    max_pixels: int = 2_073_600
    # Where frames and flow come from: "videos" (decode each video, compute TV-L1) or "rawframes"
    # (copy an existing mmaction2 / TSN / denseflow tree of JPEGs into the store, no recomputation;
    # docs/flow.md lists the names it recognises).
    source: str = "videos"
    # source = "rawframes": the folder holding one frame folder per video id
    # (<rawframes_root>/<video_id>/img_00001.jpg ...); "" = the dataset's own paths, which then are
    # frame folders (dataset.list_type = "rawframes").
    rawframes_root: str = ""
    # source = "rawframes": the bound the flow JPEGs were encoded with (denseflow's and mmaction2's
    # default is 20); they are decoded with it and re-encoded when the store's `bound` differs.
    rawframes_bound: float = 20.0
    # source = "rawframes": JPEGs of at least this IJG quality (read from their quantisation table) go
    # into a JPEG store byte for byte when size and bound match; lower ones are decoded and re-encoded
    # at jpeg_quality. 75 keeps EPIC-Kitchens' q88 frames and mmaction2's q95 files as they are.
    rawframes_min_quality: int = 75

    # Where it runs.
    backend: str = "fast"  # "fast" (OpenCV's TV-L1, fused CPU loop), "opencv" (cv2 DualTVL1) or "torch" (GPUs)
    device: str = "auto"  # torch backend: "auto", "cpu", "cuda", "cuda:N"
    batch_pairs: int = 64  # frame pairs per chunk of a video (bounds memory); one torch batch
    jobs: int = 0  # parallel videos; 0 = one per CPU core (fast, opencv) / per GPU (torch); at most 4 per core
    scheduler: str = ""  # "" = local processes; "tcp://host:8786" = a Dask cluster

    # TV-L1 (names and meanings of OpenCV's DualTVL1OpticalFlow; defaults chosen by measurement).
    tau: float = 0.25  # time step of the numerical scheme; > 0 and at most 0.25 (convergence)
    lambda_: float = 0.15  # OpenCV's `lambda` (a Python keyword): the data term's weight, 0.01-100
    theta: float = 0.3  # tightness: weight of (u - v)^2 that couples the data term and the TV term; 0.01-1
    nscales: int = 5  # pyramid levels
    warps: int = 5  # warpings per level
    epsilon: float = 0.01  # stopping threshold, px: precision against running time; > 0 and at most 0.1
    inner_iterations: int = 30  # iterations between median filterings
    outer_iterations: int = 10  # rounds of inner iterations per warp
    scale_step: float = 0.5  # size ratio of pyramid levels, 0.3-0.99; OpenCV: 0.8, 0.5 is 1.7x faster (docs/flow.md)
    gamma: float = 0.0  # weight of the illumination-change term, 0-10; 0 = none
    median_filtering: int = 5  # median filter size on the flow: 1 (off), 3 or 5
    use_initial_flow: bool = False  # start from the flow given to calc() instead of zero

    def validate(self) -> None:
        if self.store not in ("packed", "mmaction"):
            raise ValueError(f"store: must be 'packed' or 'mmaction', got {self.store!r}")
        for name in ("codec", "flow_codec"):
            if getattr(self, name) not in ("jpeg", "png", "raw"):
                raise ValueError(f"{name}: must be 'jpeg', 'png' or 'raw', got {getattr(self, name)!r}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality: must be in 0..100, got {self.jpeg_quality}")
        if not 0.0 <= self.missing_frames_tolerance <= 1.0:
            raise ValueError(f"missing_frames_tolerance: must be in [0, 1], got {self.missing_frames_tolerance}")
        if self.device not in ("auto", "cpu", "cuda") and not (self.device.startswith("cuda:")
                                                               and self.device[5:].isdigit()):
            raise ValueError(f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.backend not in ("fast", "opencv", "torch"):
            raise ValueError(f"backend: must be 'fast', 'opencv' or 'torch', got {self.backend!r}")
        if self.source not in ("videos", "rawframes"):
            raise ValueError(f"source: must be 'videos' or 'rawframes', got {self.source!r}")
        if not 1 <= self.rawframes_min_quality <= 101:
            raise ValueError(f"rawframes_min_quality: must be in 1..101 (101: re-encode all), "
                             f"got {self.rawframes_min_quality}")
        for name in ("bound", "rawframes_bound"):
            if not MIN_BOUND <= getattr(self, name) <= MAX_BOUND:
                raise ValueError(f"{name}: must be {MIN_BOUND:g} to {MAX_BOUND:g} px (one uint8 level is 2 * bound / "
                                 f"255 px: below, real motion is clipped; above, small motion reads as none; "
                                 f"recipes use 20), got {getattr(self, name)}")
        self._validate_tvl1()
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if not 1 <= getattr(self, name) <= MAX_ITERATIONS:
                raise ValueError(f"{name}: must be 1 to {MAX_ITERATIONS}, got {getattr(self, name)}")
        if self.median_filtering not in (1, 3, 5):
            raise ValueError(f"median_filtering: must be 1 (off), 3 or 5, got {self.median_filtering}")
        if self.jobs < 0:
            raise ValueError(f"jobs: must be >= 0 (0 = all cores), got {self.jobs}")
        if self.max_pixels < 0:
            raise ValueError(f"max_pixels: must be >= 0 (0 = no limit), got {self.max_pixels}")
        if self.scheduler and (problem := scheduler_problem(self.scheduler)):
            raise ValueError(f"scheduler: {problem}")
        if self.batch_pairs < 1:
            raise ValueError(f"batch_pairs: must be >= 1, got {self.batch_pairs}")
        if self.size:
            parts = self.size.lower().split("x")
            if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
                raise ValueError(f"size: must be 'WxH', a short side like '256', or '', got {self.size!r}")

    def _validate_tvl1(self) -> None:
        """TV-L1's real-valued parameters, each in the range where the solver finds motion."""
        check_range("tau", self.tau, 0, MAX_TAU, "the scheme's time step: it converges for tau < 0.25 in theory, "
                    "OpenCV uses 0.25; 1e308 stored NaN flow", above=True)
        check_range("lambda_", self.lambda_, *LAMBDA_RANGE, "the data term's weight, OpenCV 0.15: below, the flow "
                    "shrinks to none")
        check_range("theta", self.theta, *THETA_RANGE, "OpenCV 0.3: below, the solver's steps are too small to move; "
                    "1e308 stored NaN flow")
        check_range("epsilon", self.epsilon, 0, MAX_EPSILON, "the stopping threshold, OpenCV 0.01: larger stops the "
                    "solver before the flow has moved", above=True, unit=" px")
        check_range("gamma", self.gamma, 0, MAX_GAMMA, "the illumination term's weight, OpenCV 0 = none: larger "
                    "explains motion away as brightness change")
        check_range("scale_step", self.scale_step, *SCALE_STEP_RANGE, "the pyramid's size ratio, OpenCV 0.8: below, "
                    "small frames shrink to 0 px; at 1 the levels never shrink")

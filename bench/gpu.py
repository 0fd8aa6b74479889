"""One prepared GPU run: prove every CUDA path of the project and measure it, in at most 7 minutes.

    PYTHONPATH=. python3 bench/gpu.py --out DIR        # a bare GPU machine, from the repository root
    python bench/gpu.py --out DIR                      # your own GPU, with the project installed
    python bench/gpu.py --out DIR --smoke              # every section at tiny sizes on the CPU (a test)
    python bench/gpu.py --out DIR --sections training train_compiled   # some sections; they share the time

Seven sections (bench/gpu_sections.py), each in a process of its own with a deadline: a section
gets the time left minus the budgets of the sections after it, so time one does not use goes to
the next; inside it, a row that cannot finish before the deadline is skipped with a note, a row that
raises is recorded with its traceback, and the rows come in order of value.

1. correctness: `pytest -m cuda tests/cuda` (P3D on CUDA = on the CPU, bf16 AMP, channels_last_3d,
   TV-L1 on CUDA = on the CPU and OpenCV, checkpoints across devices, train.compile, NCCL DDP).
2. flow: the eager `flow.tvl1_torch` at 340x256 on SynthActions pairs (exact flow: EPE), the
   [flow] default batch first, against OpenCV's CPU TV-L1 on every core.
3. training: P3D-199 on 16x160x160 clips (`streams.train.train_step`): bf16 AMP + channels_last_3d
   at batch 32 first, then contiguous, inference, the largest batch, fp32 last; MFU.
4. train_compiled: the same + torch.compile (train.compile), against the eager rate at batch 32.
5. flow_compiled: the compiled TV-L1; its uint8 flow must be within one level of the eager one.
6. loading: packed stores read by the training DataLoader with 15, 1 and 4 workers, against training.
7. e2e: `make all`'s stages (`python -m pipeline ...`) on SynthActions, flow and training on the GPU.

DIR gets sections/NAME.json (every row, written as it is measured), gpu.json (every figure),
gpu.md (the table, pass/fail against the GPU targets of docs/gpu.md) and gpu.log (what the sections printed);
gpu.json and gpu.md are rewritten while a section runs, when it ends, and when the run gets
SIGTERM or SIGINT (the running section is stopped, its rows kept). Scratch data and torch's
compiler caches go to --work. This process imports no torch: it never holds a CUDA context while
the sections run (the device is described by nvidia-smi here, and by each section's own torch).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cli import run  # bench/, the script's own folder, is on sys.path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # p3dbase.atomic, without the editable install or PYTHONPATH=.
    sys.path.append(str(REPO))
SECTIONS_SCRIPT = Path(__file__).resolve().parent / "gpu_sections.py"
SECTIONS = ("correctness", "flow", "training", "train_compiled", "flow_compiled", "loading", "e2e")
# Seconds each section may take when every one runs, start-up of its process (torch, CUDA) included.
# A section gets the time left minus the budgets of those after it, so time an early one leaves
# goes to the next. train_compiled: P3D-199's forward and backward compile cold in minutes.
BUDGET_S = {"correctness": 70, "flow": 40, "training": 55, "train_compiled": 95, "flow_compiled": 45,
            "loading": 40, "e2e": 67}
TOTAL_S = 420.0  # 7 minutes: the GPU slot is longer, and a run must end inside it
SMOKE_TOTAL_S = 600.0  # a cap on a shared CPU, not an estimate (the smoke run takes about a minute)
RESERVE_S = 8.0  # stopping a section (SIGTERM, 3 s, SIGKILL) and writing the report
MIN_SECTION_S = 5.0


class Stopped(Exception):
    """The run got SIGTERM or SIGINT."""


def _stop(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def host_environment() -> dict[str, Any]:
    """The machine as this process sees it without torch: Python, cores, and the GPU by nvidia-smi."""
    env: dict[str, Any] = {"python_host": platform.python_version(), "platform": platform.platform(),
                           "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                           os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        fields = "name,driver_version,memory.total,power.max_limit,clocks.max.sm,pcie.link.gen.max"
        try:
            out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=15).stdout.strip().splitlines()
            env["nvidia_smi"] = [dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))
                                 for line in out]
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"failed: {e}"
    return env


def _empty(status: str, note: str) -> dict[str, Any]:
    return {"status": status, "seconds": 0.0, "budget_s": 0.0, "rows": [], "notes": [note], "errors": [], "extra": {}}


class Run:
    """The whole run: the sections one after another, the report rewritten as rows arrive."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.chosen = [s for s in SECTIONS if s in args.sections]
        self.total = args.total or (SMOKE_TOTAL_S if args.smoke else TOTAL_S)
        # With --sections the chosen ones share the whole time in the same proportions.
        scale = (self.total - RESERVE_S) / sum(BUDGET_S[s] for s in self.chosen)
        self.nominal = {s: BUDGET_S[s] * scale for s in self.chosen}
        self.start = time.monotonic()
        self.results = args.out / "sections"
        self.report: dict[str, Any] = {
            "command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "smoke": args.smoke, "total_s": self.total, "environment": host_environment(),
            "targets": {"flow_pairs_s": 1000.0, "train_clips_s": 1000.0}, "seconds": 0.0,
            "sections": {s: _empty("pending", "not reached yet") for s in self.chosen}}

    def budget(self, name: str) -> float:
        left = self.total - (time.monotonic() - self.start) - RESERVE_S
        later = self.chosen[self.chosen.index(name) + 1:]
        return left - sum(self.nominal[s] for s in later)

    def write(self) -> None:
        from p3dbase.atomic import write_text

        self.report["seconds"] = time.monotonic() - self.start
        for sec in self.report["sections"].values():  # the first section's view of the device
            env = sec.get("extra", {}).get("environment")
            if env and "torch" not in self.report["environment"]:
                self.report["environment"].update(env)
        write_text(self.args.out / "gpu.json", json.dumps(self.report, indent=1, default=str))
        write_text(self.args.out / "gpu.md", markdown(self.report))

    def read(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.results / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"rows": [], "notes": [], "errors": [], "extra": {}}

    def section(self, name: str, budget: float, log: Any) -> None:
        """Run one section until it ends or its budget is spent; its rows reach the report as they come."""
        args = self.args
        (self.results / f"{name}.json").unlink(missing_ok=True)
        cmd = [sys.executable, str(SECTIONS_SCRIPT), name, "--out", str(args.out), "--work", str(args.work),
               "--deadline", f"{time.time() + budget:.3f}"]
        if args.smoke:
            cmd.append("--smoke")
        if args.train_rate:
            cmd += ["--train-rate", f"{args.train_rate:.3f}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TQDM_MININTERVAL", "10")  # progress bars, but not a log line every 0.1 s
        # torch.compile's caches where the run's scratch data is: a second run (and the e2e flow
        # stage after flow_compiled) finds the kernels compiled; nothing outside --work is written.
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(args.work / "inductor"))
        env.setdefault("TRITON_CACHE_DIR", str(args.work / "triton"))
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one machine: NCCL's bootstrap stays on loopback
        if args.smoke:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU run, on any machine
            env["OMP_NUM_THREADS"] = "1"
        log.write(f"\n===== {name} (budget {budget:.0f} s) =====\n")
        log.flush()
        print(f"== {name}: budget {budget:.0f} s", flush=True)
        start = time.monotonic()
        sec = _empty("running", "")
        sec["notes"] = []
        sec["budget_s"] = round(budget, 1)
        self.report["sections"][name] = sec
        # A session of its own: on overrunning, the section's own children (DataLoader workers,
        # compiler processes, pytest) are stopped with it.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        seen = 0.0
        status, code = "ok", None
        try:
            while True:
                try:
                    code = proc.wait(timeout=2.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                path = self.results / f"{name}.json"
                mtime = path.stat().st_mtime if path.exists() else 0.0
                if mtime != seen:
                    seen = mtime
                    sec.update(self.read(name), seconds=round(time.monotonic() - start, 1))
                    self.write()
                if time.monotonic() - start > budget:
                    status = "timeout"
                    _terminate(proc)
                    break
        except Stopped as e:
            _terminate(proc)
            self._finish(name, sec, start, "stopped", None, f"the run got {e} while this section ran")
            raise
        try:  # what the section left behind in its session (compiler workers, a stuck loader worker)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._finish(name, sec, start, status, code,
                     f"stopped after its budget of {budget:.0f} s; the rows above were taken before"
                     if status == "timeout" else "")

    def _finish(self, name: str, sec: dict[str, Any], start: float, status: str, code: int | None,
                note: str) -> None:
        sec.update(self.read(name), seconds=round(time.monotonic() - start, 1))
        if status == "ok" and (code != 0 or any(r["status"] == "failed" for r in sec["rows"])):
            status = "failed"
        if code not in (0, None) and not sec["errors"]:
            sec["errors"].append(f"the section's process exited with {code}; see gpu.log")
        if note:
            sec["notes"].append(note)
        sec["status"] = status
        print(f"== {name}: {status} in {sec['seconds']:.0f} s", flush=True)
        self.write()

    def run(self) -> int:
        args = self.args
        args.out.mkdir(parents=True, exist_ok=True)
        args.work.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(exist_ok=True)
        for stale in self.results.glob("*.json"):  # rows of an earlier run must not pass for this one's
            stale.unlink()
        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.write()
            with open(args.out / "gpu.log", "w", encoding="utf-8") as log:
                for name in self.chosen:
                    budget = self.budget(name)
                    if budget < MIN_SECTION_S:
                        self.report["sections"][name] = _empty("skipped", "no time left in the run")
                        self.write()
                        continue
                    self.section(name, budget, log)
        except Stopped as e:
            for sec in self.report["sections"].values():
                if sec["status"] == "pending":
                    sec.update(_empty("not run", f"the run got {e} before this section"))
            self.write()
            print(f"stopped by {e}; {args.out / 'gpu.md'} holds what was measured", flush=True)
            return 128 + getattr(signal, str(e)).value
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.write()
        print(markdown(self.report))
        return 0 if all(s["status"] == "ok" for s in self.report["sections"].values()) else 1


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to the section's process group (it notes what it was measuring), SIGKILL 3 s later."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:  # the leader is gone; its children (workers, compilers) may not be
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    smi = env.get("nvidia_smi")
    card = smi[0] if isinstance(smi, list) and smi else {}
    device = env.get("device") or card.get("name") or "no GPU"
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "cuda", "cudnn", "nccl", "triton", "opencv", "python")
                         if env.get(k))
    lines = [f"# GPU run: {device}", "",
             f"`{report['command']}` on {report['started']}; {report['seconds']:.0f} s of {report['total_s']:.0f}.",
             "", f"- versions: {versions or 'not recorded (no section started)'}",
             f"- compiler: {env.get('compiler') or '-'}; cv2.optflow: {'yes' if env.get('cv2.optflow') else 'no'}; "
             f"{env.get('cpu_cores')} CPU cores",
             f"- card: {card.get('name', device)}, form factor {env.get('form_factor') or '-'}, driver "
             f"{card.get('driver_version', '-')}, power limit {card.get('power.max_limit', '-')}, "
             f"max SM clock {card.get('clocks.max.sm', '-')}, memory {card.get('memory.total', '-')}"]
    missing = [m for m, v in (env.get("optional") or {}).items() if v is None]
    if missing:
        lines.append(f"- optional packages absent: {', '.join(missing)} (docs/gpu.md: what each one costs)")
    lines += ["", "| section | what ran | figure | ratio | target | result |", "|---|---|---|---|---|---|"]
    verdict = {True: "**pass**", False: "**FAIL**", None: "-"}
    for name, sec in report["sections"].items():
        lines.append(f"| **{name}** | {sec['status']} in {sec['seconds']:.0f} s (budget {sec['budget_s']:.0f} s) "
                     f"| | | | {'-' if sec['status'] == 'ok' else '**' + sec['status'] + '**'} |")
        for row in sec["rows"]:
            result = "skipped" if row["status"] == "skipped" else verdict[row["passed"]]
            lines.append(f"| {name} | {_cell(row['what'])} | {_cell(row['figure'])} | {_cell(row['ratio'])} | "
                         f"{_cell(row['target'])} | {result} |")
    for name, sec in report["sections"].items():
        if sec["notes"] or sec["errors"]:
            lines += ["", f"## {name}", ""]
            lines += [f"- {n}" for n in sec["notes"]]
            for err in sec["errors"]:
                lines += ["", "```", err.strip()[-4000:], "```"]
    e2e = report["sections"].get("e2e", {}).get("extra", {}).get("report")
    if e2e:
        lines += ["", "## End to end: work/eval/results.md of this run", "", e2e.strip()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where gpu.json, gpu.md, gpu.log, sections/ go")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "p3d-gpu-bench",
                        help="scratch folder for stores, SynthActions and compiler caches (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test suite runs this)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                        help=f"which sections ({', '.join(SECTIONS)}; default all)")
    parser.add_argument("--total", type=float, default=0.0,
                        help=f"seconds for the whole run (default {TOTAL_S:.0f}; {SMOKE_TOTAL_S:.0f} with --smoke)")
    parser.add_argument("--train-rate", type=float, default=None,
                        help="training clips/s that loading is compared with when no training section ran")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.out = args.out.resolve()
    return Run(args).run()


if __name__ == "__main__":
    run(main)

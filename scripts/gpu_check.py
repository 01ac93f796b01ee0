#!/usr/bin/env python3
"""The GPU check: what one short device lease must prove, in one run that always ends in a report.

A GPU machine is lent to only some sessions, for 15 minutes of device time (its start included), with no
network and a 64 MiB limit on the files that travel. So everything is prepared here and run there once:

    bash scripts/fetch_gpu_wheels.sh          # here, on a CPU machine with internet: fills .gpu/
    python3 scripts/gpu_check.py --dry-run    # here: arguments, wheel set, time budget (also in CI)
    bash scripts/gpu_check.sh                 # there, from the repository root, with $OUT set
                                              # (device tool: carry [".gpu"])

Steps, each under its own time limit (their sum fits the 8-minute budget; --dry-run checks it). A step
that fails or runs out of time is recorded and the next one starts, so the report is always written:

    environment  GPU, driver, torch, CUDA, CPU cores
    install      the carried wheels into a private folder with pip --no-deps --target (the image's torch
                 and torchvision are never touched); the carried radiographs into pydicom's data cache;
                 then an import check. The project itself runs from src/ (PYTHONPATH).
    gpu_tests    pytest -m gpu tests/training/test_gpu.py tests/scope/test_scope.py
    bench_train  ResNet-50 at 224 px, bf16, channels_last, torch.compile, end to end from the decode-once
                 cache with one DataLoader worker per core but one
    bench_score  batch scoring of uncompressed 2048 x 2500 DICOMs on the GPU, and where the bound is
    bench_io     full-resolution JPEG 2000 decode with nvImageCodec vs the CPU decoder

Writes $OUT/gpu_check.md (the figures with device, driver, torch and the commands), $OUT/gpu_check.json,
$OUT/gpu_check.log (every step's output) and $OUT/gpu_tests.xml, and prints a one-screen summary.
Standard library only: it runs before the wheels it installs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480  # the 8 minutes of wall time for the whole check
SUMMARY_RESERVE_S = 15  # kept back for the report whatever the steps do
MAX_WHEELS_BYTES = 40 * 2**20
CARRY = ROOT / ".gpu"
RADIOGRAPHS = ("RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm")
# Modules the project cannot run without on the device; nvImageCodec is checked on its own (optional).
CORE_IMPORTS = ("pydicom", "pylibjpeg", "openjpeg", "rle", "pydantic", "fairlearn", "xraytriage.cli")
GOALS = {
    "train_images_per_s": 5000.0,  # ResNet-50, 224 px, end to end from the cache, one H200
    "score_scans_per_s": 1000.0,  # uncompressed 2k x 2.5k DICOMs, one H200
    "gpu_decode_x_cpu": 20.0,  # nvImageCodec full-resolution JPEG 2000 vs the CPU decoder, per file
}


# ----------------------------------------------------------------------------- the wheel set


def normalise(name: str) -> str:
    """PEP 503 project name, as wheel file names spell it with underscores."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class WheelSet:
    """scripts/gpu_wheels.txt: the pinned wheels the device image lacks, and what is left out on purpose."""

    pins: dict[str, str]  # normalised name -> version
    left_out: frozenset[str]

    @classmethod
    def parse(cls, text: str, source: str = "gpu_wheels.txt") -> WheelSet:
        pins: dict[str, str] = {}
        left_out: set[str] = set()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            skip = re.fullmatch(r"skip\s+([A-Za-z0-9][A-Za-z0-9._-]*)", line)
            if skip is not None:
                left_out.add(normalise(skip.group(1)))
                continue
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
            if match is None:
                raise ValueError(f"{source}:{number}: {raw.strip()!r} is neither NAME==VERSION nor skip NAME")
            name = normalise(match.group(1))
            if name in pins:
                raise ValueError(f"{source}:{number}: {match.group(1)} is listed twice")
            pins[name] = match.group(2)
        return cls(pins, frozenset(left_out))

    @classmethod
    def load(cls, path: Path = ROOT / "scripts" / "gpu_wheels.txt") -> WheelSet:
        return cls.parse(path.read_text(), path.name)

    def problems(self, folder: Path) -> list[str]:
        """Why ``folder`` is not exactly this set (empty when it is)."""
        if not folder.is_dir():
            return [f"{folder} is missing: run `bash scripts/fetch_gpu_wheels.sh`"]
        found: dict[str, list[str]] = {}
        for wheel in sorted(folder.glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            found.setdefault(normalise(name), []).append(version)
        out = [f"{name}=={v} is not in gpu_wheels.txt" for name, vs in found.items() for v in vs]
        out = [p for p in out if p.split("==")[0] not in self.pins]
        for name, version in self.pins.items():
            have = found.get(name, [])
            if not have:
                out.append(f"{name}=={version} is missing")
            elif have != [version]:
                out.append(f"{name}: found {', '.join(have)}, want exactly {version}")
        size = sum(w.stat().st_size for w in folder.glob("*.whl"))
        if size >= MAX_WHEELS_BYTES:
            out.append(f"wheels take {size / 2**20:.1f} MiB, over the {MAX_WHEELS_BYTES / 2**20:.0f} MiB cap")
        return out

    def prune(self, folder: Path) -> list[Path]:
        """Delete wheels that are not in the set (older versions, other packages); return them."""
        removed = []
        for wheel in folder.glob("*.whl"):
            name, version = wheel.name.split("-")[:2]
            if self.pins.get(normalise(name)) != version:
                wheel.unlink()
                removed.append(wheel)
        return removed


def uncovered_dependencies(wheels: WheelSet, pyproject: Path, image_packages: Path) -> list[str]:
    """Core dependencies of pyproject.toml that neither the device image, the wheel set nor its
    left-out list accounts for: each would be missing on the device."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: nothing to check against
        return []
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {normalise(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps}
    image = {
        normalise(n)
        for line in image_packages.read_text().splitlines()
        if not line.startswith("#")
        for n in line.split()
    }
    return sorted(n for n in names if n not in image and n not in wheels.pins and n not in wheels.left_out)


def radiograph_problems(folder: Path) -> list[str]:
    return [
        f"{folder / n} is missing: run `bash scripts/fetch_gpu_wheels.sh`"
        for n in RADIOGRAPHS
        if not (folder / n).is_file()
    ]


# ----------------------------------------------------------------------------- steps


@dataclass
class Step:
    name: str
    limit_s: int
    argv: list[str]
    purpose: str
    figures: Path | None = None  # JSON the step writes, merged into the report
    needs_core: bool = True  # skipped when the install's import check failed


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | timed out | skipped
    seconds: float
    limit_s: int
    command: str
    note: str = ""


@dataclass
class Report:
    started: str
    budget_s: int
    environment: dict = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    tests: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)


# Every test file holding @pytest.mark.gpu tests (tests/test_gpu_check.py checks none is left out).
GPU_TEST_FILES = ("tests/training/test_gpu.py", "tests/scope/test_scope.py")


def plan(work: Path, cores: int, python: str = "python3", carry: Path = CARRY) -> list[Step]:
    """The check's steps; limits in seconds (sum + SUMMARY_RESERVE_S <= BUDGET_S, see budget_problems)."""
    workers = str(max(1, cores - 1))  # one DataLoader worker per core, one core left for the main process
    py = [python, "-u"]
    tests = ["-m", "pytest", "-m", "gpu", *GPU_TEST_FILES, "-q", "-p", "no:cacheprovider"]
    train = (
        "--sizes 224 --batch-size 256 --steps 30 --warmup 8 --compile --cache --distinct 384 --scan-size 256 "
        "--augment-backend fast"  # albumentations stays behind (scripts/gpu_wheels.txt): 40 MiB cap
    )
    score = (
        "--device cuda --kinds uncompressed --count 20000 --distinct 48 --marginal 4000 --batch-size 256 "
        "--naive-count 24 --engines auto --ceiling-seconds 2"
    )
    io = "--files J2K --sizes 512 --no-monai --min-seconds 0.5"
    return [
        Step("environment", 10, [*py, str(work / "probe.py"), str(work / "environment.json")],
             "GPU, driver, torch, CUDA, cores", work / "environment.json", needs_core=False),
        Step("install", 30, [*py, __file__, "--install", "--work", str(work), "--carry", str(carry)],
             "carried wheels and radiographs, import check", work / "install.json", needs_core=False),
        Step("gpu_tests", 160, [*py, *tests, f"--junitxml={work / 'gpu_tests.xml'}"], "pytest -m gpu"),
        Step("bench_train", 150,
             [*py, "scripts/bench_train.py", *train.split(), "--workers", workers,
              "--json", str(work / "bench_train.json")],
             "ResNet-50 224 px bf16 channels_last compile, from the cache", work / "bench_train.json"),
        Step("bench_score", 85,
             [*py, "scripts/bench_score.py", *score.split(), "--workers", workers,
              "--json", str(work / "bench_score.json"), "--work", str(work / "score")],
             "scoring uncompressed 2048 x 2500 DICOMs on the GPU", work / "bench_score.json"),
        Step("bench_io", 30, [*py, "scripts/bench_io.py", *io.split(), "--json", str(work / "bench_io.json")],
             "nvImageCodec full-resolution JPEG 2000 vs the CPU", work / "bench_io.json"),
    ]  # fmt: skip


def budget_problems(steps: Sequence[Step], budget_s: int = BUDGET_S) -> list[str]:
    total = sum(s.limit_s for s in steps) + SUMMARY_RESERVE_S
    out = [f"step {s.name} has no time limit" for s in steps if s.limit_s <= 0]
    if total > budget_s:
        out.append(
            f"step limits {total - SUMMARY_RESERVE_S} s + {SUMMARY_RESERVE_S} s for the report "
            f"= {total} s, over the {budget_s} s budget"
        )
    if budget_s > BUDGET_S:
        out.append(f"budget {budget_s} s is over the issue's {BUDGET_S} s (8 minutes)")
    return out


PROBE = r"""
import json, os, subprocess, sys, platform
info = {"python": platform.python_version(), "cores": os.cpu_count()}
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
except (OSError, subprocess.SubprocessError) as exc:
    info["nvidia_smi"] = f"unavailable ({exc.__class__.__name__})"
import torch
info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                cudnn=torch.backends.cudnn.version())
try:
    import torchvision
    info["torchvision"] = torchvision.__version__
except Exception as exc:
    info["torchvision"] = f"import failed ({exc.__class__.__name__})"
print(json.dumps(info, indent=1))
with open(sys.argv[1], "w") as fh:
    json.dump(info, fh)
"""


class GpuCheck:
    """Runs the steps in order under one wall-clock budget, logs their output, renders the report."""

    def __init__(self, out: Path, work: Path, steps: list[Step], budget_s: int, env: dict[str, str]) -> None:
        self.out, self.work, self.steps, self.budget_s, self.env = out, work, steps, budget_s, env
        self.log_path = out / "gpu_check.log"
        self.report = Report(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), budget_s)
        self.t0 = time.monotonic()
        self.core_ok = True

    def left_s(self) -> float:
        return self.budget_s - SUMMARY_RESERVE_S - (time.monotonic() - self.t0)

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.work / "probe.py").write_text(PROBE)
        for number, step in enumerate(self.steps, 1):
            result = self.run_step(step)
            self.report.steps.append(result)
            print(
                f"[{number}/{len(self.steps)}] {step.name:<12} {result.status:<9} {result.seconds:6.1f} s"
                f" (limit {result.limit_s} s){'  ' + result.note if result.note else ''}",
                flush=True,
            )
            self.collect(step, result)
        self.finish()
        return 0 if all(r.status == "ok" for r in self.report.steps) else 1

    def run_step(self, step: Step) -> StepResult:
        command = " ".join(step.argv)
        limit = int(min(step.limit_s, self.left_s()))
        if step.needs_core and not self.core_ok:
            return StepResult(step.name, "skipped", 0.0, step.limit_s, command, "the import check failed")
        if limit < min(5, step.limit_s):  # too little left to start it usefully
            return StepResult(step.name, "skipped", 0.0, step.limit_s, command, "no time left in the budget")
        start = time.monotonic()
        with self.log_path.open("a") as log:
            log.write(f"\n===== {step.name} (limit {limit} s): {command}\n")
            log.flush()
            proc = subprocess.Popen(
                step.argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                log.write(f"\n===== {step.name}: killed after {limit} s\n")
                return StepResult(
                    step.name,
                    "timed out",
                    time.monotonic() - start,
                    limit,
                    command,
                    f"killed after {limit} s",
                )
        seconds = time.monotonic() - start
        status = "ok" if code == 0 else "failed"
        return StepResult(step.name, status, seconds, limit, command, "" if code == 0 else f"exit {code}")

    def collect(self, step: Step, result: StepResult) -> None:
        if step.figures is not None and step.figures.is_file():
            data = json.loads(step.figures.read_text())
            if step.name == "environment":
                self.report.environment = data
            elif step.name == "install":
                self.core_ok = not data.get("core_failures")
                if data.get("notes"):
                    result.note = "; ".join([result.note, *data["notes"]]).strip("; ")
                self.report.figures["install"] = data
            else:
                self.report.figures[step.name] = data
        elif step.name == "install" and result.status != "ok":
            self.core_ok = False
        if step.name == "gpu_tests":
            self.report.tests = junit_summary(self.work / "gpu_tests.xml")
            if self.report.tests:
                result.note = self.report.tests["line"]

    def finish(self) -> None:
        self.report.verdicts = verdicts(self.report.figures)
        junit = self.work / "gpu_tests.xml"
        if junit.is_file():
            shutil.copyfile(junit, self.out / "gpu_tests.xml")
        (self.out / "gpu_check.json").write_text(json.dumps(asdict(self.report), indent=1, default=str))
        (self.out / "gpu_check.md").write_text(render_markdown(self.report))
        print(render_summary(self.report, self.out))


def _kill_group(proc: subprocess.Popen) -> None:
    """The step and everything it started (DataLoader workers, torchrun ranks, compile workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def junit_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"line": f"unreadable JUnit file ({exc})"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    problems = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or node.text or "").strip().splitlines()
                problems.append(
                    {"test": case.get("name"), "kind": kind, "message": (message or [""])[0][:300]}
                )
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    line = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    return {**counts, "passed": passed, "line": line, "problems": problems}


# ----------------------------------------------------------------------------- figures and verdicts


def _end_to_end(train: dict) -> dict | None:
    return next((r for r in train.get("rows", []) if r["measurement"].startswith("end-to-end")), None)


def verdicts(figures: dict) -> dict:
    """Each goal: the measured figure and met / not met, or why it was not measured."""
    out = {}
    row = _end_to_end(figures.get("bench_train", {}))
    out["train_images_per_s"] = _verdict(row and row["images_per_s"], GOALS["train_images_per_s"])
    score = figures.get("bench_score", {}).get("kinds", {}).get("uncompressed", {})
    out["score_scans_per_s"] = _verdict(score.get("command_scans_per_s"), GOALS["score_scans_per_s"])
    gpu = figures.get("bench_io", {}).get("gpu", {})
    ratios = [r["x_cpu"] for r in gpu.get("full_resolution", [])]
    out["gpu_decode_x_cpu"] = _verdict(
        min(ratios) if ratios else None, GOALS["gpu_decode_x_cpu"], gpu.get("skipped")
    )
    return out


def _verdict(value: float | None, goal: float, why_not: str | None = None) -> dict:
    if value is None:
        return {"value": None, "goal": goal, "status": f"not measured{': ' + why_not if why_not else ''}"}
    return {"value": round(float(value), 1), "goal": goal, "status": "met" if value >= goal else "not met"}


def render_summary(report: Report, out: Path) -> str:
    env = report.environment
    lines = [
        "",
        "=" * 78,
        f"GPU check {report.started}: {env.get('device', 'no CUDA device')}, driver "
        f"{env.get('nvidia_smi', '?').split(',')[1].strip() if ',' in env.get('nvidia_smi', '') else '?'}, "
        f"torch {env.get('torch', '?')} (CUDA {env.get('cuda', '?')}), {env.get('cores', '?')} cores",
        "-" * 78,
    ]
    for r in report.steps:
        lines.append(f"{r.name:<12} {r.status:<9} {r.seconds:6.1f}/{r.limit_s:<4d}s  {r.note}"[:78])
    lines.append("-" * 78)
    names = {
        "train_images_per_s": "training img/s (224, from cache)",
        "score_scans_per_s": "scoring scans/s (2k x 2.5k uncompr.)",
        "gpu_decode_x_cpu": "nvImageCodec J2K decode x CPU",
    }
    for key, v in report.verdicts.items():
        value = "-" if v["value"] is None else f"{v['value']:g}"
        lines.append(f"{names[key]:<38} {value:>9}  goal >= {v['goal']:g}: {v['status']}"[:78])
    for problem in report.tests.get("problems", [])[:6]:
        if problem["kind"] != "skipped":
            lines.append(f"  {problem['kind']}: {problem['test']}: {problem['message']}"[:78])
    lines += ["-" * 78, f"report: {out / 'gpu_check.md'}  log: {out / 'gpu_check.log'}", "=" * 78]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    env = report.environment
    parts = [
        f"# GPU check, {report.started}",
        "",
        f"- device: {env.get('device', 'no CUDA device')} (compute capability {env.get('capability', '?')}, "
        f"{env.get('memory_gib', '?')} GiB, {env.get('multiprocessors', '?')} SMs), {env.get('cores', '?')} "
        "CPU cores",
        f"- nvidia-smi: {env.get('nvidia_smi', '?')}",
        f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}, "
        f"torchvision {env.get('torchvision', '?')}, Python {env.get('python', '?')}",
        f"- budget {report.budget_s} s; command: `bash scripts/gpu_check.sh`",
        "",
        "| step | status | seconds | limit | note |",
        "|---|---|---|---|---|",
        *(f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.limit_s} | {r.note} |" for r in report.steps),
        "",
        "## Goals",
        "",
        "| goal | measured | target | verdict |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['value'] if v['value'] is not None else '-'} | >= {v['goal']:g} | {v['status']} |"
            for k, v in report.verdicts.items()
        ),
    ]
    parts += _tests_section(report.tests)
    parts += _train_section(report.figures.get("bench_train"))
    parts += _score_section(report.figures.get("bench_score"))
    parts += _io_section(report.figures.get("bench_io"))
    parts += ["", "## Commands", "", *(f"- {r.name}: `{r.command}`" for r in report.steps), ""]
    return "\n".join(parts)


def _tests_section(tests: dict) -> list[str]:
    if not tests:
        return ["", "## GPU tests", "", "no JUnit results (the step did not run or crashed)"]
    rows = [f"| {p['test']} | {p['kind']} | {p['message']} |" for p in tests.get("problems", [])]
    table = ["", "| test | outcome | message |", "|---|---|---|", *rows] if rows else []
    return ["", "## GPU tests", "", tests["line"], *table]


def _train_section(train: dict | None) -> list[str]:
    if not train:
        return []
    head = (
        f"{train.get('device')}, batch {train.get('batch')}, {train.get('steps')} timed steps, amp "
        f"{train.get('amp')}, compile {train.get('compile')}, {train.get('workers')} workers, "
        f"cache {train.get('cache')}"
    )
    rows = [
        f"| {r['size']} | {r['measurement']} | {r['images_per_s']:.1f} | {r['x_baseline']:.2f} | "
        f"{r['tflops']:.1f} | {r['mfu'] if r['mfu'] is not None else 'n/a'} |"
        for r in train["rows"]
    ]
    return [
        "",
        "## Training (bench_train.py)",
        "",
        head,
        "",
        "| size | measurement | images/s | x baseline | TFLOP/s | MFU % |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _score_section(score: dict | None) -> list[str]:
    if not score:
        return []
    out = [
        "",
        "## Scoring (bench_score.py)",
        "",
        f"{score.get('device')}, batch {score.get('batch')}, {score.get('workers')} decoding workers",
        "",
        "| contender | scans/s |",
        "|---|---|",
    ]
    out += [f"| model only: {k} | {v:.1f} |" for k, v in score.get("ceiling", {}).items()]
    for kind, k in score.get("kinds", {}).items():
        out += [f"| {kind}: {name} | {sum(r) / len(r):.1f} |" for name, r in k.get("contenders", {}).items()]
        if k.get("bound"):
            out += ["", f"{kind}: {k['bound']}"]
    return out


def _io_section(io: dict | None) -> list[str]:
    if not io:
        return []
    gpu = io.get("gpu", {})
    if gpu.get("skipped"):
        return ["", "## JPEG 2000 decode (bench_io.py)", "", f"GPU section skipped: {gpu['skipped']}"]
    rows = [
        f"| {r['what']} | {r['gpu']:.1f} | {r['cpu']:.1f} | {r['x_cpu']:.1f} | {r.get('identical', '')} |"
        for r in gpu.get("full_resolution", []) + gpu.get("load_image", [])
    ]
    return [
        "",
        "## JPEG 2000 decode (bench_io.py)",
        "",
        "| what | GPU files/s | CPU files/s | x CPU | same pixels |",
        "|---|---|---|---|---|",
        *rows,
    ]


# ----------------------------------------------------------------------------- install (on the device)


def install(work: Path, carry: Path = CARRY) -> int:
    """Carried wheels -> ``work/site`` (--no-deps: nothing of the image changes); radiographs -> pydicom's
    data cache; then the import check. Always writes ``work/install.json`` for the report."""
    site = work / "site"
    wheels = sorted((carry / "wheels").glob("*.whl"))
    notes = [f"wheel set: {p}" for p in WheelSet.load().problems(carry / "wheels")]
    core_failures: dict[str, str] = {}
    if wheels:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
        proc = subprocess.run(pip, capture_output=True, text=True)
        print(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            core_failures["pip install"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        # nvidia/ is a namespace shared with the image's CUDA wheels: an __init__.py here would hide them.
        (site / "nvidia" / "__init__.py").unlink(missing_ok=True)
    sys.path[:0] = [str(ROOT / "src"), str(site)]
    for module in CORE_IMPORTS:
        try:
            __import__(module)
        except Exception as exc:  # anything a broken install raises
            core_failures[module] = f"{exc.__class__.__name__}: {str(exc)[:200]}"
    try:
        __import__("nvidia.nvimgcodec")
        nvimgcodec = "imported"
    except Exception as exc:
        nvimgcodec = f"import failed ({exc.__class__.__name__}: {str(exc)[:160]})"
        notes.append(f"nvImageCodec {nvimgcodec}")
    seeded = _seed_radiographs(carry / "data", notes) if "pydicom" not in core_failures else []
    result = {
        "site": str(site),
        "wheels": [w.name for w in wheels],
        "core_failures": core_failures,
        "nvimgcodec": nvimgcodec,
        "radiographs": seeded,
        "notes": notes,
    }
    (work / "install.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 1 if core_failures else 0


def _seed_radiographs(folder: Path, notes: list[str]) -> list[str]:
    """pydicom's get_testdata_file finds a file in its own download cache (hash-checked) before it
    would try the network, so tests and benchmarks find the radiographs as if pydicom-data were there."""
    from pydicom.data.download import get_data_dir

    notes.extend(radiograph_problems(folder))
    seeded = []
    for name in RADIOGRAPHS:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, get_data_dir() / name)
            seeded.append(name)
    return seeded


def step_environment(work: Path) -> dict[str, str]:
    """The environment every step runs in: the project from src/, the carried wheels, private caches."""
    site = work / "site"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(site), env.get("PYTHONPATH")) if p)
    cuda_libs = [
        str(p) for base in sys.path if base.endswith("-packages") for p in Path(base).glob("nvidia/cu13/lib")
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*cuda_libs, env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    env.update(
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
        NO_ALBUMENTATIONS_UPDATE="1",
        XRAYTRIAGE_CACHE_DIR=str(work / "user-cache"),
        TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
    )
    return env


# ----------------------------------------------------------------------------- dry run (here, and in CI)


def dry_run(budget_s: int, python: str, carry: Path = CARRY) -> int:
    """Everything that can be checked without CUDA: the time budget, the wheel set and its coverage of the
    project's dependencies, the benchmark arguments (parsed by each script's own parser), the GPU tests'
    collection. Exit 0 when nothing blocks a real run; a missing .gpu/ folder is reported, not fatal."""
    work = Path(tempfile.mkdtemp(prefix="gpu_check_dry_"))
    steps = plan(work, os.cpu_count() or 16, python)
    blocking: list[str] = []
    print(f"plan ({budget_s} s budget, {SUMMARY_RESERVE_S} s kept for the report):")
    for s in steps:
        print(f"  {s.name:<12} {s.limit_s:4d} s  {s.purpose}")
    blocking += budget_problems(steps, budget_s)
    wheels = WheelSet.load()
    blocking += [
        f"not on the device: {n} (add it to scripts/gpu_wheels.txt)"
        for n in uncovered_dependencies(
            wheels, ROOT / "pyproject.toml", ROOT / "scripts" / "gpu_image_packages.txt"
        )
    ]
    carried = WheelSet.load().problems(carry / "wheels") + radiograph_problems(carry / "data")
    for problem in carried:
        print(f"  carry: {problem}")
    for step in steps:
        if step.argv[2].startswith("scripts/bench_"):
            blocking += _parse_arguments(python, step)
    blocking += _collect_gpu_tests(python)
    for problem in blocking:
        print(f"BLOCKING: {problem}")
    shutil.rmtree(work, ignore_errors=True)
    print(
        "dry run: "
        + ("ok" if not blocking else f"{len(blocking)} problem(s)")
        + (
            ""
            if not carried
            else f"; .gpu/ not ready ({len(carried)} item(s)), run scripts/fetch_gpu_wheels.sh"
        )
    )
    return 0 if not blocking else 1


def _parse_arguments(python: str, step: Step) -> list[str]:
    script, args = step.argv[2], step.argv[3:]
    code = (
        "import sys, runpy; sys.argv = ['x']; "
        f"ns = runpy.run_path({script!r}, run_name='gpu_check_dry_run'); "
        f"ns['build_parser']().parse_args({args!r})"
    )
    proc = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return [f"{step.name}: {script} rejects its arguments: {proc.stderr.strip().splitlines()[-1:]}"]
    return []


def _collect_gpu_tests(python: str) -> list[str]:
    proc = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "gpu",
            *GPU_TEST_FILES,
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    selected = [line for line in proc.stdout.splitlines() if "::" in line]
    if proc.returncode != 0 or not selected:
        return [f"{' '.join(GPU_TEST_FILES)}: collection failed or selected nothing: {proc.stdout[-400:]}"]
    print(f"  gpu tests: {len(selected)} collected")
    return []


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="check everything that needs no GPU, run nothing"
    )
    mode.add_argument("--verify-wheels", action="store_true", help="check .gpu/ against gpu_wheels.txt")
    mode.add_argument("--install", action="store_true", help=argparse.SUPPRESS)  # the install step itself
    p.add_argument("--prune", action="store_true", help="with --verify-wheels: delete unlisted wheels")
    p.add_argument(
        "--out", type=Path, default=None, help="report folder (default: $OUT, else ./gpu_check_out)"
    )
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--budget", type=int, default=BUDGET_S, help=f"wall-clock seconds in all (<= {BUDGET_S})")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="STEP",
        help="run these steps (environment and install always run), e.g. to rerun one that failed",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter for the steps")
    p.add_argument("--carry", type=Path, default=CARRY, help="folder of the carried wheels/ and data/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.install:
        return install(args.work, args.carry)
    if args.verify_wheels:
        wheels = WheelSet.load()
        if args.prune and (args.carry / "wheels").is_dir():
            for removed in wheels.prune(args.carry / "wheels"):
                print(f"removed {removed.name}")
        problems = wheels.problems(args.carry / "wheels") + radiograph_problems(args.carry / "data")
        size = sum(w.stat().st_size for w in (args.carry / "wheels").glob("*.whl")) / 2**20
        print(
            f".gpu/wheels: {len(wheels.pins)} wheels listed, {size:.1f} MiB"
            if not problems
            else "\n".join(problems)
        )
        return 1 if problems else 0
    if args.dry_run:
        return dry_run(args.budget, args.python, args.carry)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or Path(os.environ.get("OUT") or "gpu_check_out")
    steps = plan(work, os.cpu_count() or 16, args.python, args.carry)
    if args.only:
        unknown = set(args.only) - {s.name for s in steps}
        if unknown:
            build_parser().error(
                f"--only: unknown step(s) {sorted(unknown)}; steps: {[s.name for s in steps]}"
            )
        steps = [s for s in steps if s.name in ("environment", "install", *args.only)]
    problems = budget_problems(steps, args.budget)
    if problems:
        build_parser().error("; ".join(problems))
    return GpuCheck(out, work, steps, args.budget, step_environment(work)).run()


if __name__ == "__main__":
    raise SystemExit(main())

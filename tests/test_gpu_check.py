"""scripts/gpu_check.py without a GPU: the dry run, the wheel set, the time budget, a step that overruns
its limit, and the report's verdicts. The check itself runs only on a lent device machine, once per
lease, so everything that can go wrong before it starts is caught here, in CI."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
check = runpy.run_path(str(ROOT / "scripts" / "gpu_check.py"), run_name="gpu_check_under_test")
WheelSet, Step, GpuCheck = check["WheelSet"], check["Step"], check["GpuCheck"]

LISTED = """\
# comment
pydicom==3.0.2
pydantic-core==2.50.5   # a comment after the pin
skip python-gdcm  # why
"""


def _wheel(folder: Path, name: str, size: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("wb") as fh:
        fh.truncate(size)  # sparse: sizes without writing the bytes
    return path


def test_dry_run_passes_on_the_repository_as_it_is() -> None:
    """What CI runs: the plan fits the budget, every dependency reaches the device, the benchmarks accept
    their arguments and the GPU tests collect. A clean clone has no .gpu/: reported, not fatal."""
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "BLOCKING" not in proc.stdout and "dry run: ok" in proc.stdout
    collected = int(proc.stdout.split("gpu tests: ")[1].split()[0])
    assert collected >= 10


def test_the_gpu_step_runs_every_file_that_holds_gpu_tests() -> None:
    marked = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if path.name != Path(__file__).name and "pytest.mark.gpu" in path.read_text(encoding="utf-8")
    }
    assert marked == set(check["GPU_TEST_FILES"])


def test_wheel_set_parses_pins_and_left_out_names() -> None:
    wheels = WheelSet.parse(LISTED)
    assert wheels.pins == {"pydicom": "3.0.2", "pydantic-core": "2.50.5"}
    assert wheels.left_out == frozenset({"python-gdcm"})
    with pytest.raises(ValueError, match="listed twice"):
        WheelSet.parse("pydicom==3.0.2\nPyDicom==3.0.1\n")
    with pytest.raises(ValueError, match=":2: 'numpy>=2' is neither"):
        WheelSet.parse("pydicom==3.0.2\nnumpy>=2\n")


def test_the_shipped_wheel_set_is_pinned_and_keeps_torch_out() -> None:
    wheels = WheelSet.load()
    assert {"pydicom", "pydantic", "fairlearn", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg2k-cu13"} <= set(
        wheels.pins
    )
    assert not {"torch", "torchvision", "numpy"} & set(wheels.pins)  # the image's own, never replaced


def test_wheel_folder_must_hold_exactly_the_set_under_40_mib(tmp_path: Path) -> None:
    wheels = WheelSet.parse(LISTED)
    folder = tmp_path / "wheels"
    assert wheels.problems(folder) == [f"{folder} is missing: run `bash scripts/fetch_gpu_wheels.sh`"]
    _wheel(folder, "pydicom-3.0.2-py3-none-any.whl")
    _wheel(folder, "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl")
    assert wheels.problems(folder) == []
    _wheel(folder, "pydicom-3.0.1-py3-none-any.whl")  # a second version stops pip's whole install
    _wheel(folder, "six-1.16.0-py2.py3-none-any.whl")
    problems = wheels.problems(folder)
    assert "six==1.16.0 is not in gpu_wheels.txt" in problems
    assert "pydicom: found 3.0.1, 3.0.2, want exactly 3.0.2" in problems
    removed = sorted(p.name for p in wheels.prune(folder))
    assert removed == ["pydicom-3.0.1-py3-none-any.whl", "six-1.16.0-py2.py3-none-any.whl"]
    assert wheels.problems(folder) == []
    # The cap is strict: 40 MiB in all is over it, one byte less is not (the other wheel holds 10 bytes).
    _wheel(folder, "pydicom-3.0.2-py3-none-any.whl", 40 * 2**20 - 11)
    assert wheels.problems(folder) == []
    _wheel(folder, "pydicom-3.0.2-py3-none-any.whl", 40 * 2**20 - 10)
    assert wheels.problems(folder) == ["wheels take 40.0 MiB, over the 40 MiB cap"]


def test_a_dependency_the_device_lacks_blocks_the_dry_run(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["torch>=2.11", "pydicom>=3.0", "python-gdcm>=3", "nibabel>=5"]\n'
    )
    image = tmp_path / "image.txt"
    image.write_text("# image\ntorch numpy\n")
    uncovered = check["uncovered_dependencies"](WheelSet.parse(LISTED), pyproject, image)
    assert uncovered == ["nibabel"]  # torch: the image's; pydicom: carried; python-gdcm: left out on purpose
    shipped = check["uncovered_dependencies"](
        WheelSet.load(), ROOT / "pyproject.toml", ROOT / "scripts" / "gpu_image_packages.txt"
    )
    assert shipped == []


def test_the_plan_fits_the_eight_minute_budget_and_an_overrun_is_named(tmp_path: Path) -> None:
    steps = check["plan"](tmp_path, 16)
    assert [s.name for s in steps] == [
        "environment",
        "install",
        "gpu_tests",
        "bench_train",
        "bench_score",
        "bench_io",
    ]
    total = sum(s.limit_s for s in steps) + check["SUMMARY_RESERVE_S"]
    assert total <= 480 and check["budget_problems"](steps) == []
    assert "--workers" in steps[3].argv and steps[3].argv[steps[3].argv.index("--workers") + 1] == "15"
    steps[2].limit_s += 480 - total + 1
    (problem,) = check["budget_problems"](steps)
    assert "481 s, over the 480 s budget" in problem
    assert (
        check["budget_problems"](steps[:1], 481)[-1] == "budget 481 s is over the issue's 480 s (8 minutes)"
    )


def _running(pid: int, wait_s: float = 5.0) -> bool:
    """Alive and not a zombie (an orphan killed with its group may wait a moment for init to reap it)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_step_over_its_limit_is_killed_with_its_children_and_the_report_is_still_written(
    tmp_path: Path,
) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    child_pid = work / "child.pid"
    figures = work / "bench_io.json"
    hang = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child_pid)!r}, 'w').write(str(c.pid)); time.sleep(60)"
    )
    skipped = {"gpu": {"skipped": "no CUDA device visible"}}
    ok = f"import json; json.dump({skipped!r}, open({str(figures)!r}, 'w'))"
    steps = [
        Step("environment", 10, _python("print('probe')"), "probe", needs_core=False),
        Step("gpu_tests", 2, _python(hang), "hangs"),
        Step("bench_train", 10, _python("raise SystemExit(3)"), "fails"),
        Step("bench_io", 10, _python(ok), "writes figures", figures),
    ]
    start = time.monotonic()
    code = GpuCheck(out, work, steps, 60, dict(os.environ)).run()
    assert code == 1 and time.monotonic() - start < 30
    report = json.loads((out / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("environment", "ok"),
        ("gpu_tests", "timed out"),
        ("bench_train", "failed"),
        ("bench_io", "ok"),
    ]
    assert report["steps"][2]["note"] == "exit 3"
    assert not _running(int(child_pid.read_text()))  # the step's own child went with it
    assert report["verdicts"]["gpu_decode_x_cpu"]["status"] == "not measured: no CUDA device visible"
    markdown = (out / "gpu_check.md").read_text()
    assert "| gpu_tests | timed out |" in markdown and "killed after 2 s" in markdown
    assert "killed after 2 s" in (out / "gpu_check.log").read_text()


def test_steps_that_do_not_fit_in_what_is_left_are_skipped_not_started(tmp_path: Path) -> None:
    steps = [Step("bench_io", 10, _python("print(1)"), "x")]
    checker = GpuCheck(tmp_path / "out", tmp_path, steps, check["SUMMARY_RESERVE_S"] + 4, dict(os.environ))
    assert checker.run() == 1
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"][0]
    assert result["status"] == "skipped" and result["note"] == "no time left in the budget"


def test_verdicts_compare_each_figure_with_its_goal_at_the_boundary() -> None:
    figures = {
        "bench_train": {"rows": [{"measurement": "in-memory fp32 eager (baseline)", "images_per_s": 9e9},
                                 {"measurement": "end-to-end from cache", "images_per_s": 5000.0}]},
        "bench_score": {"kinds": {"uncompressed": {"command_scans_per_s": 999.9}}},
        "bench_io": {"gpu": {"skipped": None, "full_resolution": [{"x_cpu": 35.0}, {"x_cpu": 19.96}]}},
    }  # fmt: skip
    v = check["verdicts"](figures)
    assert v["train_images_per_s"] == {"value": 5000.0, "goal": 5000.0, "status": "met"}
    assert v["score_scans_per_s"]["status"] == "not met"
    assert v["gpu_decode_x_cpu"] == {
        "value": 20.0,
        "goal": 20.0,
        "status": "not met",
    }  # the worst file counts
    assert check["verdicts"]({})["train_images_per_s"]["status"] == "not measured"


def test_junit_results_name_the_failing_tests(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase name="test_a"/>'
        '<testcase name="test_b"><failure message="assert 2 == 1">trace</failure></testcase>'
        '<testcase name="test_c"><skipped message="needs nvImageCodec"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = check["junit_summary"](xml)
    assert summary["line"] == "1 passed, 1 failed, 1 skipped"
    assert summary["problems"][0] == {"test": "test_b", "kind": "failure", "message": "assert 2 == 1"}
    assert check["junit_summary"](tmp_path / "missing.xml") == {}


def test_device_training_uses_an_augmentation_backend_the_device_image_has(tmp_path: Path) -> None:
    """albumentations (the default backend) is left out of the carried wheels for size, so the check's
    training benchmark must ask for the fused backend, or bench_train dies on its import."""
    assert "albumentations" in WheelSet.load().left_out
    train = next(s for s in check["plan"](tmp_path, 16) if s.name == "bench_train")
    flag = train.argv.index("--augment-backend")
    assert train.argv[flag + 1] == "fast"

"""Mutation testing of the clinical core with mutmut: ``make mutation [MODULE=src/xraytriage/...py]``.

Why a wrapper around ``mutmut run``: mutmut reads one ``[tool.mutmut]`` table and would run the
mutants of every module against one test selection; on a 2-core machine that never finishes. Each
module here gets its own work folder ``mutants/<module>/`` whose ``pyproject.toml`` is the project's
plus that module's ``only_mutate`` and test files (``MODULE_TESTS``); mutmut then runs each mutant
against only the tests that reach the mutated function. The score sets aside the equivalent mutants
listed, with a reason each, in ``tests/mutation/equivalent.txt``. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants"
EQUIVALENT_FILE = ROOT / "tests" / "mutation" / "equivalent.txt"

# The clinical core (the numbers a clinician acts on, and the pixels and patients behind them) and the
# tests that exercise each module. html.py and plots.py only render results: out of scope.
MODULE_TESTS: dict[str, list[str]] = {
    "src/xraytriage/evaluation/fairness.py": ["tests/evaluation/test_fairness.py"],
    "src/xraytriage/evaluation/bootstrap.py": ["tests/evaluation/test_eval_bootstrap.py"],
    "src/xraytriage/io/dicom.py": [  # the whole module; test_io_hostile.py without its worker memory-cap
        "tests/io/test_io_dicom_header.py",  # tests (they fork workers or start a whole scoring run,
        "tests/io/test_io_dicom_lut.py",  # seconds per mutant, and test data/workers.py, not dicom.py)
        "tests/io/test_io_dicom.py",
        "tests/io/test_io_reference.py",
        "tests/io/test_io_hostile.py",
        "-k",
        "not memory_cap and not cap_renewed and not inherits",
    ],
    "src/xraytriage/evaluation/intervals.py": ["tests/evaluation/test_eval_intervals.py"],
    "src/xraytriage/evaluation/rates.py": [
        "tests/evaluation/test_eval_intervals.py",
        "tests/evaluation/test_fairness.py",
    ],
    "src/xraytriage/evaluation/subgroups.py": ["tests/evaluation/test_fairness.py"],
    "src/xraytriage/evaluation/thresholds.py": ["tests/evaluation/test_eval_thresholds.py"],
    "src/xraytriage/evaluation/metrics.py": ["tests/evaluation/test_metrics.py"],  # its unit tests (with
    # scikit-learn as oracle); test_eval_thresholds.py also reaches it but costs seconds more per mutant
    "src/xraytriage/evaluation/calibration.py": [
        "tests/evaluation/test_eval_calibration.py",
        "tests/evaluation/test_metrics.py",
    ],
    "src/xraytriage/evaluation/simulation.py": ["tests/evaluation/test_eval_statistics.py"],
    "src/xraytriage/evaluation/audit.py": ["tests/data/test_audit.py"],
    "src/xraytriage/evaluation/identifiers.py": ["tests/scoring/test_privacy_integrity.py"],
    "src/xraytriage/evaluation/results.py": ["tests/evaluation/test_eval_results.py"],  # its unit tests:
    # test_fairness.py and test_eval_report.py also reach it but run whole evaluations per mutant
    "src/xraytriage/evaluation/scope_groups.py": ["tests/evaluation/test_scope_groups.py"],
    "src/xraytriage/evaluation/report.py": [  # evaluate_predictions's own tests: the command's (cli) start
        "tests/evaluation/test_eval_report.py",  # whole runs, 2-6 s each per mutant, and can only kill more
        "tests/evaluation/test_eval_report_outputs.py",
        "-k",
        "not cli",
    ],
    "src/xraytriage/io/pipeline.py": [
        "tests/io/test_io_hostile.py",
        "tests/io/test_io_dicom.py",
        "tests/io/test_io_raster.py",
        "tests/io/test_io_gpu.py",
    ],
    "src/xraytriage/io/resize.py": ["tests/io/test_io_resize.py"],
    "src/xraytriage/data/splits.py": ["tests/data/test_splits.py"],
    "src/xraytriage/scoring/journal.py": ["tests/scoring/test_score_journal.py"],  # its unit tests: the
    # scoring-run tests that also reach it take minutes per mutant
}

# Modules measured only in part, for now: the functions listed (methods written ``Class.method``); a
# module not listed here is measured whole.
MODULE_FUNCTIONS: dict[str, list[str]] = {}  # every module of the clinical core is measured whole

KILLED = {"killed", "timeout", "caught by type check"}


@dataclass
class ModuleScore:
    """Counts of one module's mutants by outcome; ``score`` leaves the equivalent ones out."""

    module: str
    statuses: dict[str, str]
    equivalent: set[str]
    survivors: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.survivors = sorted(
            name for name, s in self.statuses.items() if s not in KILLED and name not in self.equivalent
        )

    @property
    def counted(self) -> int:
        return len(self.statuses) - len(self.equivalent & self.statuses.keys())

    @property
    def killed(self) -> int:
        return sum(1 for n, s in self.statuses.items() if s in KILLED and n not in self.equivalent)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.counted if self.counted else 100.0


def mutant_globs(module: str) -> list[str]:
    """mutmut's names of the mutants to run: every function of the module, or the listed ones."""
    functions = MODULE_FUNCTIONS.get(module)
    if functions is None:
        return [f"{dotted(module)}.*"]
    return [f"{dotted(module)}.{mangled(name)}__mutmut_*" for name in functions]


def mangled(name: str) -> str:
    """mutmut's name of a function (``window`` -> ``x_window``) or a method (``Evaluation.overall`` ->
    ``xǁEvaluationǁoverall``)."""
    owner, dot, function = name.rpartition(".")
    return f"xǁ{owner}ǁ{function}" if dot else f"x_{function}"


def dotted(module: str) -> str:
    """``src/xraytriage/io/dicom.py`` -> ``xraytriage.io.dicom`` (mutmut's mutant-name prefix)."""
    return module.removeprefix("src/").removesuffix(".py").replace("/", ".")


def load_equivalent(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """Mutant name -> reason; every line is ``name  # reason`` and a reason is required."""
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, reason = line.partition("#")
        if not sep or not reason.strip():
            sys.exit(f"{path}:{number}: give a reason after '#' for equivalent mutant {name.strip()}")
        found[name.strip()] = reason.strip()
    return found


def prepare_workdir(module: str) -> Path:
    """A fresh mutants/<module>/ with the sources, tests and a pyproject for this module only."""
    work = WORK / dotted(module)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("src", "tests"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    text = (ROOT / "pyproject.toml").read_text()
    if not text.rstrip().rpartition("\n[")[2].startswith("tool.mutmut]"):
        sys.exit("pyproject.toml: [tool.mutmut] must be the last table (scripts/mutation.py appends to it)")
    tests = MODULE_TESTS[module]
    text += f"only_mutate = [{module!r}]\npytest_add_cli_args_test_selection = {tests!r}\n".replace("'", '"')
    table = tomllib.loads(text)["tool"]["mutmut"]
    assert table["only_mutate"] == [module] and table["pytest_add_cli_args_test_selection"] == tests
    (work / "pyproject.toml").write_text(text)
    return work


def _statuses(work: Path, env: dict[str, str], globs: list[str]) -> dict[str, str]:
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    statuses = {}
    for line in listing.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and any(fnmatch.fnmatchcase(name, glob) for glob in globs):
            statuses[name] = status
    return statuses


def run_module(module: str, jobs: int, again: bool = False) -> dict[str, str]:
    """Run every mutant of ``module`` (``again``: only those the last run did not kill and that are not
    listed as equivalent, against the current tests); return mutant name -> status as mutmut reports it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH="", XRAYTRIAGE_MUTATION="1")
    env.setdefault("XRAYTRIAGE_SHARED", str(ROOT.parent / "shared"))
    globs = mutant_globs(module)
    work = WORK / dotted(module)
    names = globs
    if again and (work / "mutants").is_dir():
        listed = load_equivalent()  # equivalent mutants cannot be killed: no need to run them again
        names = [n for n, s in _statuses(work, env, globs).items() if s not in KILLED and n not in listed]
        shutil.rmtree(work / "mutants" / "tests")  # mutmut copies the tests again: the current ones
        if not names:
            return _statuses(work, env, globs)
    else:
        work = prepare_workdir(module)
    run = subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names], cwd=work, env=env
    )
    if run.returncode != 0:
        print(f"mutmut run ended with exit code {run.returncode} for {module}", file=sys.stderr)
    return _statuses(work, env, globs)


def report(scores: list[ModuleScore], equivalent: dict[str, str]) -> None:
    print(f"\n{'module':45} {'mutants':>7} {'equiv.':>6} {'killed':>6} {'left':>5} {'score':>6}")
    for s in scores:
        eq = len(s.equivalent & s.statuses.keys())
        print(f"{s.module:45} {len(s.statuses):7} {eq:6} {s.killed:6} {len(s.survivors):5} {s.score:5.1f}%")
    for s in scores:
        for name in s.survivors:
            print(f"  not killed: {name} ({s.statuses[name]})")
        for name in sorted(s.equivalent & s.statuses.keys()):
            if s.statuses[name] in KILLED:
                print(f"  listed as equivalent but killed, remove it from the list: {name}")
    ran = {n for s in scores for n in s.statuses}
    prefixes = tuple(dotted(s.module) + "." for s in scores)
    for name in sorted(n for n in equivalent if n.startswith(prefixes) and n not in ran):
        print(f"  listed as equivalent but no longer exists (the code changed): {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="path of one module (repeatable); default all")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument(
        "--again",
        action="store_true",
        help="keep the last work folder; rerun only the mutants it did not kill and that are not listed "
        "as equivalent (after adding tests)",
    )
    parser.add_argument("--min-score", type=float, default=90.0, help="exit 1 below this (percent)")
    args = parser.parse_args(argv)
    modules = args.module or list(MODULE_TESTS)
    unknown = [m for m in modules if m not in MODULE_TESTS]
    if unknown:
        parser.error(f"not a module under mutation testing: {', '.join(unknown)} (see MODULE_TESTS)")
    equivalent = load_equivalent()
    scores = []
    for module in modules:
        statuses = run_module(module, args.jobs, args.again)
        scores.append(ModuleScore(module, statuses, set(equivalent) & statuses.keys()))
        report(scores[-1:], equivalent)
    report(scores, equivalent)
    return 0 if all(s.score >= args.min_score for s in scores) else 1


if __name__ == "__main__":
    raise SystemExit(main())

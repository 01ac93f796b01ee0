"""Static checks of the Dockerfile and .dockerignore (CI has no Docker engine, so the image is not built).

The .dockerignore matcher below follows Docker's rules (moby/patternmatcher): patterns are matched
against paths relative to the build context, ``*`` and ``?`` stay within one path segment, ``**``
spans any number of segments, a pattern that matches a directory excludes everything below it, and
the last matching pattern wins (``!pattern`` re-includes).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

CUDA_RUNTIME_TAG = re.compile(
    r"^(?:docker\.io/)?pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-runtime$"
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is skipped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*" and pattern[i + 1 : i + 2] == "*":
            i += 1
            if pattern[i + 1 : i + 2] == "/":
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
        elif ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
            self.rules.append((include, _pattern_regex(pattern)))

    def excluded(self, rel: str) -> bool:
        parts = Path(rel).as_posix().split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for include, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not include
        return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore((ROOT / ".dockerignore").read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _arg_defaults(dockerfile: list[tuple[str, str]], before_from: bool) -> dict[str, str]:
    defaults = {}
    for keyword, args in dockerfile:
        if keyword == "FROM" and before_from:
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip("\"'")
    return defaults


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (".venv", ".venv/lib/python3.11/site.py", True),
        (".venv", "src/.venv", False),
        ("**/__pycache__", "src/xraytriage/__pycache__/cli.cpython-311.pyc", True),
        ("**/*.egg-info", "src/xraytriage.egg-info/PKG-INFO", True),
        ("data", "src/xraytriage/data/manifest.py", False),
        ("**/data", "src/xraytriage/data/manifest.py", True),
        ("*.md\n!README.md", "README.md", False),
        ("*.md\n!README.md", "CHANGES.md", True),
        ("**/*.py[cod]", "src/a/b.pyc", True),
        ("src/*.yaml", "src/xraytriage/resources/demo.yaml", False),
    ],
)
def test_dockerignore_matcher_follows_docker_rules(patterns: str, path: str, excluded: bool) -> None:
    assert DockerIgnore(patterns).excluded(path) is excluded


def test_base_image_is_an_overridable_cuda_pytorch_runtime(dockerfile, pyproject) -> None:
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert froms, "no FROM"
    final_base = froms[-1].split()[0]
    assert final_base in {"${BASE_IMAGE}", "$BASE_IMAGE"}, f"final stage is FROM {final_base}, not the ARG"
    default = _arg_defaults(dockerfile, before_from=True).get("BASE_IMAGE")
    assert default, "ARG BASE_IMAGE=<default> must come before FROM"
    match = CUDA_RUNTIME_TAG.match(default)
    assert match, f"{default} is not a pytorch/pytorch:<torch>-cuda<ver>-cudnn<N>-runtime tag"

    # the torch in the image must satisfy pyproject, including through torchvision (0.N pairs with 2.N-15)
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0]: d for d in pyproject["project"]["dependencies"]}
    torch_floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", deps["torch"]).group(1).split(".")[:2])
    tv_floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", deps["torchvision"]).group(1).split(".")[:2])
    torch_for_tv = (2, tv_floor[1] - 15) if tv_floor[0] == 0 else torch_floor
    image_torch = tuple(int(x) for x in match["torch"].split(".")[:2])
    assert image_torch >= max(torch_floor, torch_for_tv), (
        f"{default} ships torch {match['torch']}, but pyproject needs torch>={torch_floor} and "
        f"torchvision>={tv_floor} (torch>={torch_for_tv})"
    )


def test_runs_as_non_root_user_with_the_xraytriage_entrypoint(dockerfile, pyproject) -> None:
    keywords = [k for k, _ in dockerfile]
    assert "ENTRYPOINT" in keywords
    entry_at = len(keywords) - 1 - keywords[::-1].index("ENTRYPOINT")
    users = [args for k, args in dockerfile[:entry_at] if k == "USER"]
    assert users, "no USER before ENTRYPOINT: the container would run as root"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0"}, f"USER {users[-1]}"
    assert not any(k == "USER" for k, _ in dockerfile[entry_at:]), "USER changed after ENTRYPOINT"
    if not user.isdigit():
        created = [args for k, args in dockerfile[:entry_at] if k == "RUN" and "useradd" in args]
        assert any(re.search(rf"useradd\b.*\b{re.escape(user)}\b", args) for args in created), (
            f"USER {user} is never created with useradd"
        )

    raw = dockerfile[entry_at][1]
    assert raw.startswith("["), f"ENTRYPOINT {raw}: use the exec form (arguments reach the CLI unchanged)"
    entry = json.loads(raw)
    assert entry == ["xraytriage"]
    assert "xraytriage" in pyproject["project"]["scripts"]


def test_package_is_installed_with_the_deployment_extras(dockerfile, pyproject) -> None:
    installs = []
    for keyword, args in dockerfile:
        if keyword == "RUN" and "pip install" in args:
            for command in re.split(r"&&|;|\|\|", args):
                if "pip install" in command:
                    installs.extend(shlex.split(command))
    targets = [t for t in installs if re.fullmatch(r"\.(\[[\w,\s-]+\])?", t)]
    assert targets, "no `pip install .[...]` of the project"
    extras = {e.strip() for t in targets for e in t[2:-1].split(",") if t.startswith(".[")}
    assert {"parquet", "cam", "export"} <= extras
    assert extras <= set(pyproject["project"]["optional-dependencies"]), "unknown extra"
    assert "-e" not in installs and "--editable" not in installs, "the image needs a real install"


def test_every_copy_source_exists_and_reaches_the_build_context(dockerfile, ignore) -> None:
    copies = [args for keyword, args in dockerfile if keyword in {"COPY", "ADD"}]
    assert copies
    for args in copies:
        flags, rest = [], args
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.lstrip()
        if any(f.startswith("--from") for f in flags):
            continue  # copies from another stage or image, not from the build context
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        for source in words[:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY source {source} does not exist"
            assert not ignore.excluded(source), f"COPY source {source} is excluded by .dockerignore"
            if path.is_dir():
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info")]
                    for name in filenames:
                        rel = (Path(dirpath) / name).relative_to(ROOT).as_posix()
                        if name.endswith((".pyc", ".pyo")):
                            continue
                        assert not ignore.excluded(rel), f"{rel} (under COPY {source}) is excluded"


def test_dockerignore_keeps_environments_outputs_and_caches_out(ignore) -> None:
    for rel in (
        ".venv/bin/python",
        ".git/HEAD",
        "demo_out/eval/metrics.json",
        "runs/nih/model.pt",
        "data/images/a.dcm",
        "src/xraytriage/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "src/xraytriage.egg-info/PKG-INFO",
    ):
        assert ignore.excluded(rel), f"{rel} would be sent to the Docker daemon"
    for rel in ("pyproject.toml", "README.md", "src/xraytriage/cli.py", "src/xraytriage/resources/demo.yaml"):
        assert not ignore.excluded(rel), f"{rel} is needed by the image build"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_run_instructions_are_valid_shell(dockerfile) -> None:
    runs = [args for keyword, args in dockerfile if keyword == "RUN" and not args.startswith("[")]
    assert runs
    for args in runs:
        proc = subprocess.run(["sh", "-n", "-c", args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"RUN {args[:200]}...: {proc.stderr}"

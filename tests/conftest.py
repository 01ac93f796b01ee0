"""Shared fixtures. ``../shared`` (beside the project root) is optional: tests using it skip without it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from xraytriage.data.synthetic import SyntheticSpec, generate_dataset

if os.environ.get("XRAYTRIAGE_MUTATION"):  # set by scripts/mutation.py: one failing example kills a mutant,
    from hypothesis import Phase, settings  # and shrinking it would cost seconds per mutant

    # The same examples in every run (derandomised, no example database): a score that two runs of the
    # same code and tests agree on (drawn at random, a clean run left a mutant alive that others killed)
    settings.register_profile(
        "mutation", phases=[Phase.explicit, Phase.generate], derandomize=True, database=None
    )
    settings.load_profile("mutation")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XRAYTRIAGE_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the processes they start) never write exported graphs into the user's ~/.cache."""
    before = os.environ.get("XRAYTRIAGE_CACHE_DIR")
    os.environ["XRAYTRIAGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if before is None:
        os.environ.pop("XRAYTRIAGE_CACHE_DIR", None)
    else:
        os.environ["XRAYTRIAGE_CACHE_DIR"] = before


@pytest.fixture(scope="session", autouse=True)
def _private_site_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never create or read a site key in the user's ~/.config."""
    before = os.environ.get("XRAYTRIAGE_KEY_FILE")
    os.environ["XRAYTRIAGE_KEY_FILE"] = str(tmp_path_factory.mktemp("site-key") / "site.key")
    yield
    if before is None:
        os.environ.pop("XRAYTRIAGE_KEY_FILE", None)
    else:
        os.environ["XRAYTRIAGE_KEY_FILE"] = before


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must never download: any connection beyond loopback fails at once, loudly."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (
            host.startswith("127.") or host in {"localhost", "::1"} or host.startswith("/")
        ):
            return real_connect(self, address)
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        raise OSError(f"network access blocked in tests (tried {address!r})")

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip("../shared/data is not present (a fresh clone has none)")
    return data


@pytest.fixture(scope="session")
def pydicom_test_file():
    """Path of a file shipped by pydicom or pydicom-data, or skip."""
    from pydicom.data import get_testdata_file

    def _get(name: str) -> str:
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"{name} not available (install the dev extra: pydicom-data)")
        return str(path)

    return _get


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic patients at 64 px: the data of the tiny training run (support.training.tiny_config)."""
    out = tmp_path_factory.mktemp("tiny")
    return generate_dataset(out, SyntheticSpec(n_patients=24, size=64, seed=3), progress=False)

"""What installing the project puts on a user's machine: the wheel, built as pip builds it."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

ROOT = Path(__file__).resolve().parents[1]


def _wheel(tmp_path: Path) -> zipfile.ZipFile:
    builder = WheelBuilder(str(ROOT))
    (path,) = builder.build(directory=str(tmp_path), versions=["standard"])
    return zipfile.ZipFile(path)


def test_wheel_installs_no_generic_top_level_package(tmp_path: Path) -> None:
    names = _wheel(tmp_path).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    # `providers` is a name other distributions use: installing both would make one
    # shadow the other. The repository's providers/ folder ships as gateway_providers.
    assert top == {"gateway", "gateway_providers"}
    bundled = {p.name for p in (ROOT / "providers" / "gateway_providers").glob("*.py")}
    assert {n.removeprefix("gateway_providers/") for n in names if "/" in n} >= bundled
    assert "gateway/handlers.py" in names


def test_wheel_ships_types_license_and_one_version(tmp_path: Path) -> None:
    import gateway

    wheel = _wheel(tmp_path)
    names = wheel.namelist()
    # py.typed: users' type checkers read the package's annotations instead of Any.
    assert {"gateway/py.typed", "gateway_providers/py.typed"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    headers = wheel.read(metadata).decode()
    # The version is written once, in gateway/__init__.py; the wheel takes it from there.
    assert f"\nVersion: {gateway.__version__}\n" in headers

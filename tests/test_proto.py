"""The API definition: stubs match the .proto, and StylizeParams mirrors every engine option."""

from __future__ import annotations

import dataclasses
import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.options import CHOICES, StylizeOptions

ROOT = Path(__file__).resolve().parents[1]
STUBS = "client/styletx_proto/v1"
GENERATED = ("styletx_pb2.py", "styletx_pb2.pyi", "styletx_pb2_grpc.py", "styletx_pb2_grpc.pyi")


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    """Regenerate into a temp dir; a difference means the .proto was edited without running the script."""
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    for name in GENERATED:
        fresh, checked_in = tmp_path / STUBS / name, ROOT / STUBS / name
        assert checked_in.exists(), f"{checked_in} missing: run scripts/gen_proto.sh"
        assert filecmp.cmp(fresh, checked_in, shallow=False), f"{name} drifted: run scripts/gen_proto.sh"


def test_params_mirror_every_engine_option() -> None:
    """Every public StylizeOptions field is a StylizeParams field (blend weights travel with each Style)."""
    public = {f.name for f in dataclasses.fields(StylizeOptions)} - {"style_blend_weights"}
    assert public == set(pb.StylizeParams.DESCRIPTOR.fields_by_name)
    assert "weight" in pb.Style.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize("option", sorted(CHOICES))
def test_every_choice_is_an_enum_value(option: str) -> None:
    enum = pb.StylizeParams.DESCRIPTOR.fields_by_name[option].enum_type
    assert enum is not None
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
    names = {v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0}
    assert names == set(CHOICES[option])


def test_scalar_params_track_presence() -> None:
    """Unset must mean 'server default', so every scalar is proto3 `optional`."""
    for fd in pb.StylizeParams.DESCRIPTOR.fields:
        if not fd.is_repeated and fd.enum_type is None:
            assert fd.has_presence, fd.name


def test_buf_lint() -> None:
    buf = shutil.which("buf")
    require_tool(buf is not None, "buf not installed (npm install -g @bufbuild/buf)")
    assert buf is not None
    subprocess.run([buf, "lint"], cwd=ROOT, check=True)

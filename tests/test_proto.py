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
PARAMS_MODULE = "client/styletx_client/_params.py"  # scripts/gen_params.py: the SDK's typed options
GENERATED = ("styletx_pb2.py", "styletx_pb2.pyi", "styletx_pb2_grpc.py", "styletx_pb2_grpc.pyi")


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    """Regenerate into a temp dir; a difference means the .proto was edited without running the script."""
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    for path in [f"{STUBS}/{name}" for name in GENERATED] + [PARAMS_MODULE]:
        fresh, checked_in = tmp_path / path, ROOT / path
        assert checked_in.exists(), f"{checked_in} missing: run scripts/gen_proto.sh"
        assert filecmp.cmp(fresh, checked_in, shallow=False), f"{path} drifted: run scripts/gen_proto.sh"


def test_sdk_options_follow_the_proto() -> None:
    """The generated options hold every scalar StylizeRequest option (sub-messages flattened) with its comment;
    JobOptions adds the hand-written regional controls (images: masks and the content-strength map)."""
    from google.protobuf.descriptor import FieldDescriptor
    from styletx_client import JobOptions
    from styletx_client._params import OPTIONS
    from styletx_client._request import RegionOptions

    request = pb.StylizeRequest.DESCRIPTOR
    expected = {f.name for f in request.fields
                if f.message_type is None and f.type != FieldDescriptor.TYPE_BYTES}
    for holder in ("params", "fast", "cyclegan", "preview"):
        prefix = "preview_" if holder == "preview" else ""
        expected |= {prefix + f.name for f in request.fields_by_name[holder].message_type.fields}
    assert set(OPTIONS) == expected
    assert set(JobOptions.__annotations__) == expected | set(RegionOptions.__annotations__)
    assert {"style_masks", "content_strength"} <= set(RegionOptions.__annotations__)
    assert all(spec.help for spec in OPTIONS.values()), "every option needs a proto comment"
    assert OPTIONS["size"].default == StylizeOptions().size


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

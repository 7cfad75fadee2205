"""The ``styletx`` CLI: remote mode against an in-process server, local mode through the backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from styletx_client import LocalClient, cli
from styletx_client._request import OPTIONS
from styletx_server.local import LocalBackend
from support.fake import FakeEngine, ServerThread

from styletx_core.options import StylizeOptions

FLAGS = ["--size", "64", "--min-size", "32", "--iterations", "2", "--coarse-iterations", "1", "-q"]


def test_every_engine_option_has_a_flag() -> None:
    parser = cli.build_parser(plugins=False)
    stylize = parser._subparsers._group_actions[0].choices["stylize"]  # type: ignore[union-attr,index]
    flags = {option for action in stylize._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in OPTIONS if name not in cli._NOT_FLAGS} <= flags


def test_remote_stylize_with_previews_and_loss_plot(
    server: ServerThread, images: tuple[Path, Path], tmp_path: Path
) -> None:
    out, previews, plot = tmp_path / "out.jpg", tmp_path / "previews", tmp_path / "loss.png"
    code = cli.main(
        [
            "stylize",
            *map(str, images),
            "-o",
            str(out),
            "--server",
            server.target,
            *FLAGS,
            "--preview-every",
            "1",
            "--preview-dir",
            str(previews),
            "--loss-plot",
            str(plot),
            "--optimizer",
            "adam",
            "--content-layers",
            "relu4_2",
            "relu3_1",
        ]
    )
    assert code == 0
    assert Image.open(out).format == "JPEG"  # format from the suffix
    coarse_scales = len(StylizeOptions(size=64, min_size=32).scales()) - 1
    assert len(list(previews.glob("out_*.jpg"))) == 2 + coarse_scales  # --preview-every 1
    assert Image.open(plot).size[0] > 100


def test_variations_write_a_contact_sheet(
    server: ServerThread, images: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "v.png"
    assert (
        cli.main(
            [
                "stylize",
                *map(str, images),
                "-o",
                str(out),
                "--server",
                server.target,
                *FLAGS,
                "--variations",
                "2",
                "--seed",
                "10",
            ]
        )
        == 0
    )
    assert (tmp_path / "v_v0.png").exists() and (tmp_path / "v_v1.png").exists()
    assert Image.open(tmp_path / "v_sheet.png").size[0] >= 256


def test_style_masks_layers_and_content_strength_reach_the_server(
    server: ServerThread, fake: FakeEngine, images: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    content, style = images
    mask, strength = tmp_path / "sky.png", tmp_path / "strength.png"
    Image.new("L", (20, 10), 255).save(mask)
    Image.new("L", (20, 10), 128).save(strength)
    common = ["stylize", str(content), str(style), str(style), "-o", str(tmp_path / "m.png"), "--server",
              server.target, *FLAGS]
    code = cli.main([*common, "--style-mask", str(mask), "--style-mask", "-", "--style-own-layers", "-",
                     "--style-own-layers", "relu4_1,relu5_1", "--content-strength", str(strength)])
    assert code == 0
    controls, strength_map = fake.last_regions
    assert controls[0].mask.size == (20, 10) and controls[0].layers is None
    assert controls[1].mask is None and controls[1].layers == ("relu4_1", "relu5_1")
    assert strength_map is not None and strength_map.size == (20, 10)
    blank = tmp_path / "blank.png"
    Image.new("L", (20, 10), 0).save(blank)
    assert cli.main([*common, "--style-mask", str(blank)]) == 2
    assert "styles[0].mask" in capsys.readouterr().err


def test_region_presets_travel_as_styles_with_a_preset_and_a_mask(images: tuple[Path, Path], tmp_path: Path) -> None:
    """``--region-preset NAME MASK`` (CLI) and ``region_presets`` (SDK) become Style(preset, mask) entries."""
    from styletx_client import build_request

    mask = tmp_path / "sky.png"
    Image.new("L", (20, 10), 255).save(mask)
    args = cli.build_parser(plugins=False).parse_args(
        ["stylize", str(images[0]), "-o", str(tmp_path / "p.png"), "--mode", "preset", "--preset", "style07",
         "--region-preset", "style12", str(mask)])
    request = build_request(images[0], (), **cli._request_kwargs(args))
    assert request.preset == "style07" and [s.preset for s in request.styles] == ["style12"]
    assert request.styles[0].mask == mask.read_bytes() and not request.styles[0].image
    sdk = build_request(images[0], (), mode="preset", preset="style07", region_presets=[("style12", mask)])
    assert sdk.styles == request.styles


def test_bad_option_exits_2_naming_the_field(
    server: ServerThread, images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "stylize",
            *map(str, images),
            "-o",
            str(tmp_path / "x.png"),
            "--server",
            server.target,
            "--size",
            "4",
        ]
    )
    assert code == 2 and "params.size" in capsys.readouterr().err


def test_info_and_health(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--server", server.target]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["limits"]["maxStyles"] and info["defaults"]["size"] == 512
    assert cli.main(["health", "--server", server.target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_local_mode_uses_the_backend(
    monkeypatch: pytest.MonkeyPatch, images: tuple[Path, Path], tmp_path: Path
) -> None:
    backend = LocalBackend(engine_factory=lambda device: FakeEngine(device, step_seconds=0))
    monkeypatch.setattr(cli, "LocalClient", lambda timeout: LocalClient(timeout, backend=backend))
    out = tmp_path / "local.png"
    assert cli.main(["stylize", *map(str, images), "-o", str(out), *FLAGS]) == 0
    assert Image.open(out).size == (64, 48)


def test_local_mode_without_the_server_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import styletx_client._client as impl

    monkeypatch.setattr(impl.importlib.metadata, "entry_points", lambda group: [])
    code = cli.main(["stylize", *map(str, images), "-o", str(tmp_path / "y.png"), *FLAGS])
    assert code == 2 and "server + engine distribution" in capsys.readouterr().err  # a configuration error

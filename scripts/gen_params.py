"""Generate ``client/styletx_client/_params.py``: the SDK's typed keyword options and the CLI's help texts.

One source: every option of a Stylize job is a field of ``StylizeRequest`` in proto/styletx/v1/styletx.proto
(its own scalars and enums, and the fields of ``params``, ``fast``, ``cyclegan`` and ``preview``, flattened; the
preview's get a ``preview_`` prefix). Each becomes

* a key of the ``JobOptions`` TypedDict (``Literal`` choices for enums), with the proto comment as its
  docstring, so editors complete ``size=`` and type checkers reject ``sise=``;
* an entry of ``OPTIONS``: where it goes in the request, the help text, the choices and the engine's default
  (``styletx_core.options.StylizeOptions``), which ``build_request`` and the CLI flags use.

Run by scripts/gen_proto.sh (``--out DIR`` writes under DIR); tests/test_proto.py fails when the checked-in
file drifts from the proto or the engine's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = "styletx/v1/styletx.proto"
TARGET = "client/styletx_client/_params.py"
#: Request fields that are inputs, not options (the SDK's positional arguments).
INPUTS = {"content", "styles"}
#: Sub-messages whose fields are prefixed (``preview.format`` → ``preview_format``).
PREFIXED = {"preview"}
_F = descriptor_pb2.FieldDescriptorProto
_PYTHON = {_F.TYPE_DOUBLE: "float", _F.TYPE_FLOAT: "float", _F.TYPE_BOOL: "bool", _F.TYPE_STRING: "str"}


def load_descriptor(proto_root: Path) -> descriptor_pb2.FileDescriptorProto:
    """The .proto's descriptor with its comments (protoc --include_source_info)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "set.pb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(proto_root), "--include_source_info",
                        f"--descriptor_set_out={out}", PROTO], check=True)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[0]


def comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comment per descriptor path, as one line of text."""
    return {tuple(loc.path): " ".join(loc.leading_comments.split())
            for loc in file.source_code_info.location if loc.leading_comments}


def enum_names(enum: descriptor_pb2.EnumDescriptorProto) -> list[str]:
    """``["lbfgs", "adam"]`` for Optimizer: the values but UNSPECIFIED, prefix dropped, lower case."""
    prefix = enum.value[0].name.removesuffix("UNSPECIFIED")
    return [v.name.removeprefix(prefix).lower() for v in enum.value if v.number]


def collect_options(file: descriptor_pb2.FileDescriptorProto, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Every option of a Stylize job: name, path in the request, Python type, help, choices, default."""
    messages = {m.name: (index, m) for index, m in enumerate(file.message_type)}
    enums = {e.name: e for e in file.enum_type}
    docs = comments(file)
    request_index, request = messages["StylizeRequest"]
    options: list[dict[str, Any]] = []
    for field_index, field in enumerate(request.field):
        if field.name in INPUTS or field.type == _F.TYPE_BYTES or (
                field.type == _F.TYPE_MESSAGE and field.label == _F.LABEL_REPEATED):
            continue  # images and lists of messages are inputs, not options
        if field.type == _F.TYPE_MESSAGE:
            index, message = messages[field.type_name.rsplit(".", 1)[-1]]
            prefix = f"{field.name}_" if field.name in PREFIXED else ""
            for sub_index, sub in enumerate(message.field):
                options.append(_option(prefix + sub.name, (field.name, sub.name), sub, enums,
                                       docs.get((4, index, 2, sub_index), ""), defaults))
        else:
            options.append(_option(field.name, (field.name,), field, enums,
                                   docs.get((4, request_index, 2, field_index), ""), defaults))
    names = [o["name"] for o in options]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SystemExit(f"options with the same flattened name: {sorted(duplicates)}; extend PREFIXED")
    return options


def _option(name: str, path: tuple[str, ...], field: _F, enums: dict[str, Any], doc: str,
            defaults: dict[str, Any]) -> dict[str, Any]:
    choices = enum_names(enums[field.type_name.rsplit(".", 1)[-1]]) if field.type == _F.TYPE_ENUM else []
    kind = _PYTHON.get(field.type, "int")
    if choices:
        kind = "Literal[" + ", ".join(repr(c) for c in choices) + "]"
    repeated = field.label == _F.LABEL_REPEATED
    default = defaults.get(name) if path[0] == "params" else None
    return {"name": name, "path": path, "kind": f"Sequence[{kind}]" if repeated else kind,
            "base": "str" if choices else _PYTHON.get(field.type, "int"), "repeated": repeated,
            "help": doc, "choices": choices, "default": list(default) if isinstance(default, tuple) else default}


def engine_defaults() -> dict[str, Any]:
    """The engine's default per option (the server publishes the same ones in GetServerInfo)."""
    sys.path.insert(0, str(ROOT))
    from styletx_core.options import StylizeOptions

    defaults = {f.name: f.default for f in dataclasses.fields(StylizeOptions)
                if f.default is not dataclasses.MISSING and f.default is not None}
    return {name: round(value, 6) if isinstance(value, float) else value for name, value in defaults.items()}


def render(options: list[dict[str, Any]]) -> str:
    """The module's source (ruff-clean, stable order: the proto's)."""
    lines = [
        '"""Every option of a Stylize job, typed. GENERATED by scripts/gen_params.py from '
        f'proto/{PROTO} (comments) and',
        "styletx_core.options (engine defaults): do not edit; run scripts/gen_proto.sh.",
        '"""',
        "",
        "# ruff: noqa: E501",
        "from __future__ import annotations",
        "",
        "from collections.abc import Sequence",
        "from typing import Literal, NamedTuple, TypedDict",
        "",
        '__all__ = ["OPTIONS", "JobOptions", "OptionSpec"]',
        "",
        "",
        "class OptionSpec(NamedTuple):",
        '    """One option: where it goes in a ``StylizeRequest``, and what the CLI shows for it."""',
        "",
        "    path: tuple[str, ...]",
        '    """Field path in StylizeRequest (``("params", "size")``)."""',
        "    kind: type",
        '    """Python type of one value (``str`` for choices)."""',
        "    repeated: bool",
        "    help: str",
        '    """The proto comment."""',
        "    choices: tuple[str, ...]",
        "    default: object",
        '    """The engine\'s default (None: the server decides, or see ``help``)."""',
        "",
        "",
        "class JobOptions(TypedDict, total=False):",
        '    """Keyword options of ``Client.stylize``, ``stylize_stream``, ``build_request`` (unset: server default).',
        "",
        "    Names are StylizeRequest's fields with ``params``, ``fast`` and ``cyclegan`` flattened and ``preview``'s",
        "    prefixed: ``size=512, optimizer=\"adam\", strength=0.8, preview_every=10, preview_format=\"png\"``.",
        '    """',
        "",
    ]
    for option in options:
        lines.append(f"    {option['name']}: {option['kind']}")
        lines.append(f'    """{_doc(option)}"""')
    lines += ["", "", "OPTIONS: dict[str, OptionSpec] = {"]
    for option in options:
        lines.append(f"    {option['name']!r}: OptionSpec(")
        lines.append(f"        {option['path']!r}, {option['base']}, {option['repeated']!r},")
        lines.append(f"        {option['help']!r},")
        lines.append(f"        {tuple(option['choices'])!r}, {option['default']!r}),")
    lines += ["}", ""]
    return "\n".join(lines)


def _doc(option: dict[str, Any]) -> str:
    text = option["help"].replace("\\", "\\\\").replace('"""', "'''")
    if option["default"] is not None:
        text += f" Default: {option['default']!r}."
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="write under this root instead of the repository")
    args = parser.parse_args(argv)
    source = render(collect_options(load_descriptor(ROOT / "proto"), engine_defaults()))
    target = args.out / TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

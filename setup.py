"""Build hook: generate the gRPC stubs from proto/ at build and install time.

The stubs are never committed (see .gitignore). `build_py` runs for wheels, sdists-to-wheels
and editable installs alike, so every way of installing the package gets fresh stubs that
match the .proto files next to them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
PROTO_ROOT = ROOT / "proto"


def generate_stubs() -> None:
    from grpc_tools import protoc  # build requirement, see pyproject.toml

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "shopclip" / "v1").glob("*.proto"))
    if not protos:
        return
    include = Path(protoc.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={PROTO_ROOT}",
            f"--pyi_out={PROTO_ROOT}", f"--grpc_python_out={PROTO_ROOT}", *protos]
    if protoc.main(args) != 0:
        sys.exit("protoc failed to generate the shopclip.v1 stubs")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})

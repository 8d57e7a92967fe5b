"""Builds the compiled hot path (mediad._forward), the benchmark's compiled helpers and
the gRPC stubs of proto/charter/v1 (generated into charter/v1, never committed), with their
typed stubs (*_pb2.pyi, *_pb2_grpc.pyi) from mypy-protobuf's protoc plugins, a build
requirement in pyproject.toml."""
import glob
import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_grpc_stubs() -> None:
    protos = sorted(glob.glob(os.path.join(HERE, "proto", "charter", "v1", "*.proto")))
    if not protos:
        return
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    # pip puts the build requirements' scripts (mypy-protobuf's plugins) on PATH.
    plugins = {name: shutil.which(f"protoc-gen-{name}") for name in ("mypy", "mypy_grpc")}
    missing = [f"protoc-gen-{name}" for name, path in plugins.items() if path is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: install mypy-protobuf (a build requirement)")
    args = [
        "grpc_tools.protoc",
        f"-I{os.path.join(HERE, 'proto')}",
        f"-I{include}",
        f"--python_out={HERE}",
        f"--grpc_python_out={HERE}",
        *(f"--plugin=protoc-gen-{name}={path}" for name, path in plugins.items()),
        f"--mypy_out=quiet:{HERE}",
        f"--mypy_grpc_out=quiet:{HERE}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/charter/v1")


generate_grpc_stubs()

CFLAGS = ["-O3", "-fno-strict-aliasing"]
extensions = [Extension("mediad._forward", ["mediad/_forward.pyx"], extra_compile_args=CFLAGS)]
# Benchmark helpers (load generator, reference relay) are compiled in place, never installed.
for pyx in sorted(glob.glob(os.path.join(HERE, "bench", "_*.pyx"))):
    name = "bench." + os.path.splitext(os.path.basename(pyx))[0]
    extensions.append(Extension(name, [os.path.relpath(pyx, HERE)], extra_compile_args=CFLAGS))

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        annotate=bool(os.environ.get("CHARTER_ANNOTATE")),
    )
)

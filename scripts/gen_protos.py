"""Generate the Python code for ``protos/`` into ``preimage/v1/`` and ``preimage/oip/``.

The only producer of generated code. Run it after editing a ``.proto`` file::

    python scripts/gen_protos.py            # write preimage/v1/ and preimage/oip/
    python scripts/gen_protos.py --check    # exit 1 when either is stale

Messages get ``*_pb2.py`` (protoc) and ``*_pb2.pyi`` (mypy-protobuf); services
get ``*_pb2_grpc.py`` (grpcio-tools) and ``*_pb2_grpc.pyi`` (mypy-protobuf).
The output depends only on the protos and the pinned grpcio-tools and
mypy-protobuf versions, so ``--check`` is exact.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# Each generated package and the docstring of its __init__.py.
PACKAGES = {
    Path("preimage") / "v1": "``preimage.v1``",
    # The Open Inference Protocol (proto package ``inference``), see protos/preimage/oip/NOTICE.md.
    Path("preimage") / "oip": "the Open Inference Protocol (proto package ``inference``)",
}
INIT_TEXT = '"""Generated protobuf and gRPC code for {what}. Do not edit: run scripts/gen_protos.py."""\n'


def _plugin(name: str) -> str:
    """Locate a protoc plugin next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every proto file, writing the package tree under ``out_dir``.

    Returns:
        The generated files, relative to ``out_dir``.
    """
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = []
    for package_dir, what in PACKAGES.items():
        package = out_dir / package_dir
        (package / "__init__.py").write_text(INIT_TEXT.format(what=what))
        files += [p.relative_to(out_dir) for p in package.iterdir() if p.is_file()]
    return sorted(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        targets = [ROOT / package_dir for package_dir in PACKAGES]
        if options.check:
            current = sorted(
                p.relative_to(ROOT) for target in targets if target.exists() for p in target.iterdir() if p.is_file()
            )
            stale = [
                str(p)
                for p in fresh
                if not (ROOT / p).exists() or not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)
            ]
            extra = [str(p) for p in current if p not in fresh]
            if stale or extra:
                print("generated code is stale; run: python scripts/gen_protos.py", file=sys.stderr)
                for name in stale + extra:
                    print(f"  {name}", file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        for target in targets:
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
        for rel in fresh:
            shutil.copyfile(Path(tmp) / rel, ROOT / rel)
        print(f"wrote {len(fresh)} files to {', '.join(map(str, PACKAGES))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())

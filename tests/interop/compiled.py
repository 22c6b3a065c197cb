"""Build the Go and Java interop clients from protos/, once per test session.

Stubs are generated with ``protoc`` and the languages' plugins into a temporary
folder (nothing generated is committed for Go or Java), then compiled together
with ``tests/interop/go/client.go`` or ``tests/interop/java/Client.java``. The
toolchains are Debian's packages, which ``scripts/install.sh`` installs: Go in
GOPATH mode against the libraries under ``/usr/share/gocode``, Java against the
jars in ``/usr/share/java``.

A missing toolchain skips the test with the reason, except under CI
(``CI=true``, as ``.ci/run`` sets), where it fails: CI must prove these clients.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["IN_CI", "build_go_client", "build_java_client", "unavailable"]

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parents[1] / "protos"
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
GOPATH_SYSTEM = Path("/usr/share/gocode")
JAVA_JARS = Path("/usr/share/java")
# netty-tcnative's OpenSSL binding: gRPC needs ALPN for TLS, and Debian's netty has no JDK ALPN provider.
TCNATIVE_GLOB = "/usr/lib/*/jni/libnetty-tcnative.so"  # the multiarch folder, e.g. x86_64-linux-gnu
# grpc-java and what it needs at run time, as Debian names the jars.
JARS = (
    "grpc-api", "grpc-context", "grpc-core", "grpc-netty", "grpc-protobuf", "grpc-protobuf-lite", "grpc-stub",
    "protobuf", "proto-google-common-protos", "guava", "perfmark-api", "geronimo-annotation-1.3-spec",
    "netty-buffer", "netty-codec", "netty-codec-http", "netty-codec-http2", "netty-codec-socks", "netty-common",
    "netty-handler", "netty-handler-proxy", "netty-resolver", "netty-transport", "netty-tcnative",
)  # fmt: skip
INSTALL_HINT = "scripts/install.sh installs it (Debian packages, as root)"


def unavailable(what: str) -> NoReturn:
    """Skip for a missing toolchain piece; under CI fail instead, since CI must run these clients."""
    message = f"{what} is missing: {INSTALL_HINT}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        unavailable(f"`{name}`")
    return found


def _run(args: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)


def _protoc(*outputs: str) -> None:
    protos = sorted(str(p) for p in (PROTOS / "preimage" / "v1").glob("*.proto"))
    # google/protobuf/*.proto (timestamp) ship with Debian's libprotobuf-dev under /usr/include.
    _run([_tool("protoc"), f"-I{PROTOS}", "-I/usr/include", *outputs, *protos], "protoc")


def build_go_client(work: Path) -> list[str]:
    """Compile tests/interop/go/client.go; returns the command that runs it."""
    go = _tool("go")
    _tool("protoc-gen-go")
    _tool("protoc-gen-go-grpc")
    if not (GOPATH_SYSTEM / "src" / "google.golang.org" / "grpc").is_dir():
        unavailable(f"gRPC for Go ({GOPATH_SYSTEM}/src/google.golang.org/grpc)")
    gopath = work / "gopath"
    src = gopath / "src"
    src.mkdir(parents=True)
    # go_package puts the stubs at github.com/preimage-dev/preimage/gen/go/preimage/v1 under src/.
    _protoc(f"--go_out={src}", f"--go-grpc_out={src}")
    binary = work / "client"
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}{os.pathsep}{GOPATH_SYSTEM}", GOFLAGS="")
    if not any(k in env for k in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        env["GOCACHE"] = str(work / "go-build")  # Go keeps its build cache under $HOME otherwise
    _run([go, "build", "-o", str(binary), "client.go"], "go build", cwd=HERE / "go", env=env)
    return [str(binary)]


def build_java_client(work: Path) -> list[str]:
    """Compile tests/interop/java/Client.java with its stubs; returns the command that runs it."""
    javac = _tool("javac")
    java = _tool("java")
    plugin = _tool("grpc_java_plugin")
    jars = [JAVA_JARS / f"{name}.jar" for name in JARS]
    for jar in jars:
        if not jar.exists():
            unavailable(str(jar))
    tcnative = next(iter(sorted(glob.glob(TCNATIVE_GLOB))), None)
    if tcnative is None:
        unavailable(TCNATIVE_GLOB)
    # netty loads it by the name libnetty_tcnative.so and checks the file's own name, so a copy, not a link.
    native = work / "jni"
    native.mkdir()
    shutil.copyfile(tcnative, native / "libnetty_tcnative.so")
    generated = work / "gen"
    classes = work / "classes"
    generated.mkdir()
    classes.mkdir()
    _protoc(f"--java_out={generated}", f"--plugin=protoc-gen-grpc-java={plugin}", f"--grpc-java_out={generated}")
    classpath = os.pathsep.join(str(j) for j in jars)
    sources = sorted(str(p) for p in generated.rglob("*.java"))
    _run(
        [javac, "-nowarn", "--release", "17", "-d", str(classes), "-cp", classpath, *sources,
         str(HERE / "java" / "Client.java")],
        "javac",
    )  # fmt: skip
    return [java, f"-Djava.library.path={native}", "-cp", f"{classes}{os.pathsep}{classpath}", "Client"]

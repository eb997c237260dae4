"""Build, smoke-check and measure the runtime and sandbox images with no container registry.

    python -m deploy.images.build [--python-image IMAGE] [--fresh] [--no-cache] [--results PATH]

Uses the engine at DOCKER_HOST, or starts a private dockerd (services.runner.sandbox.dockerd: no bridge, no
iptables; its layer cache kept in .cache/images/engine, or a temp dir with --fresh). Without
--python-image it makes the Python base locally: the debootstrap bookworm root of
services.runner.sandbox.images plus python3-venv and ca-certificates from the Debian mirror. Then it builds
runtime.Dockerfile and sandbox.Dockerfile with the classic builder (`--network host`: the engine has no
bridge, and RUN steps reach only the package registries), runs the smoke checks as the images' own
user (uid 10001), prints sizes and build times and writes them to bench/results/images.json.
Needs root (dockerd, debootstrap) unless DOCKER_HOST is set.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from services.runner.sandbox import dockerd, images

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "deploy" / "images"
CACHE_DIR = REPO / ".cache" / "images"
# The debootstrap tarball of services.runner.sandbox.images, shared with the sandbox tests.
SANDBOX_CACHE_DIR = REPO / ".cache" / "sandbox"
RESULTS = REPO / "bench" / "results" / "images.json"
# Bump the suffix when BASE_DOCKERFILE changes: an existing image of this name is reused as is. The
# sandbox base's own tag is part of it, so a new debootstrap base also makes a new Python base.
PYTHON_BASE = f"botburrow/python-base:{images.BASE_IMAGE.rsplit(':', 1)[-1]}-venv-v2"
BASE_DOCKERFILE = f"""FROM {images.BASE_IMAGE}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3-venv ca-certificates \\
 && apt-get clean \\
 && rm -rf /var/lib/apt/lists/*
"""
# What runtime.Dockerfile copies from the repository; everything else stays out of the context.
RUNTIME_SOURCES = (
    "pyproject.toml",
    "README.md",
    "botburrow",
    "schemas",
    "streams",
    "services",
    "deploy/images/constraints.txt",
    "deploy/images/build-constraints.txt",
    "deploy/images/certs",
)
SANDBOX_SOURCES = ("deploy/images/certs", "tools/package.json", "tools/package-lock.json")
# The CA bundle the host's own pip trusts: where a TLS-intercepting proxy fronts the registries, the
# build stages need it too (they get it as certs/ca-bundle.crt; the final images do not).
CA_CANDIDATES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The proxy CA bundle is for the build stages only: no final image may hold it.
NO_CA_BUNDLE = ("no build CA", ["--entrypoint", "sh"],
                ["-c", "! find / -xdev -name ca-bundle.crt 2>/dev/null | grep ."])  # fmt: skip
SMOKE_RUNTIME: tuple[tuple[str, list[str], list[str]], ...] = (
    ("uid", ["--entrypoint", "id"], ["-u"]),
    NO_CA_BUNDLE,
    ("botburrow --help", [], ["--help"]),
    ("import every stage", ["--entrypoint", "python3"], ["-c", "import " + ", ".join(
        f"services.{stage}.stage" for stage in ("ingest", "scheduler", "runner", "metrics", "configsync"))]),
    ("closure", ["--entrypoint", "python3"], ["-c", (
        "import importlib.metadata as m; print('\\n'.join(sorted(f\"{d.metadata['Name'].lower()}=={d.version}\""
        " for d in m.distributions())))")]),
)  # fmt: skip
SANDBOX_COMMANDS = ("claude", "goose", "aider", "opencode", "bwrap", "node")
# The runner finds every CLI and MCP server where it looks for them (BOTBURROW_TOOLS_DIR, the venv).
TOOLS_FOUND = ("runner finds its tools", ["--entrypoint", "python3"], ["-c", """
import os, shutil, sys
from pathlib import Path
from services.runner.executors.base import find_binary
from botburrow.tools import node_bin
missing = [n for n in ("claude", "goose", "aider", "opencode") if not find_binary(n, os.environ)]
missing += [n for n in ("mcp-server-filesystem", "brave-search-mcp-server") if not node_bin(n).is_file()]
missing += [] if shutil.which("github-mcp-server", path=str(Path(sys.executable).parent)) else ["github-mcp-server"]
print("missing: " + ", ".join(missing) if missing else "all found under " + os.environ["BOTBURROW_TOOLS_DIR"])
sys.exit(1 if missing else 0)
"""])
SMOKE_SANDBOX = (
    *((name, ["--entrypoint", name], ["--version"]) for name in SANDBOX_COMMANDS),
    TOOLS_FOUND,
    ("uid", ["--entrypoint", "id"], ["-u"]),
    NO_CA_BUNDLE,
)


class BuildError(RuntimeError):
    pass


@dataclass
class Built:
    image: str
    build_s: float
    size_bytes: int = 0
    smoke: dict[str, str] = field(default_factory=dict)


@dataclass
class Engine:
    host: str
    log_dir: Path
    env: dict[str, str]

    async def run(self, *argv: str, stdin: bytes | None = None, log: str | None = None) -> str:
        """`docker ARGV`; the output streams to log_dir/<log>.log when named. Raises BuildError with its tail."""
        log_path = self.log_dir / f"{log}.log" if log else None
        sink = await asyncio.to_thread(open, log_path, "wb") if log_path else asyncio.subprocess.PIPE
        try:
            proc = await asyncio.create_subprocess_exec(
                "docker", *argv, env=self.env, stdout=sink, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            output_bytes, _ = await proc.communicate(stdin)
        finally:
            if log_path:
                await asyncio.to_thread(sink.close)  # type: ignore[union-attr]
        if log_path:
            output = await asyncio.to_thread(log_path.read_text, errors="replace")
        else:
            output = output_bytes.decode("utf-8", "replace")
        if proc.returncode != 0:
            where = f" (full log: {log_path})" if log_path else ""
            raise BuildError(f"docker {' '.join(argv[:2])} failed ({proc.returncode}){where}:\n{output[-3000:]}")
        return output

    async def exists(self, image: str) -> bool:
        try:
            await self.run("image", "inspect", "--format", "{{.Id}}", image)
        except BuildError:
            return False
        return True

    async def build(
        self, dockerfile: str, context: bytes, tag: str, build_args: dict[str, str], *, no_cache: bool
    ) -> Built:
        """Classic builder (DOCKER_BUILDKIT=0 in env), context as a tar on stdin, host network for RUN steps."""
        argv = ["build", "--network", "host", "--force-rm", "-f", dockerfile, "-t", tag]
        argv += [f"--build-arg={key}={value}" for key, value in build_args.items()]
        argv += ["--no-cache"] if no_cache else []
        log = f"build-{tag.split('/')[-1].split(':')[0]}"
        print(f"images | docker build {tag}: log in {self.log_dir / log}.log", flush=True)
        started = time.monotonic()
        await self.run(*argv, "-", stdin=context, log=log)
        built = Built(tag, round(time.monotonic() - started, 1))
        built.size_bytes = int(await self.run("image", "inspect", "--format", "{{.Size}}", tag))
        return built


def context_tar(sources: tuple[str, ...], extra: dict[str, bytes]) -> bytes:
    """A build context holding only `sources` (no caches, venvs or node_modules) plus `extra` files."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = Path(info.name).name
        if name in ("__pycache__", ".pytest_cache", "ca-bundle.crt") or name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    # Not PAX: the docker CLI recognises a tar on stdin by parsing its first 512-byte header alone, and
    # a PAX record header needs more than that, so it would take the tar for a Dockerfile.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for source in (*sources, "deploy/images/runtime.Dockerfile", "deploy/images/sandbox.Dockerfile"):
            tar.add(REPO / source, arcname=source, filter=keep)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ca_bundle(explicit: str | None) -> bytes | None:
    if explicit == "none":
        return None
    for candidate in (explicit, *(os.environ.get(name) for name in CA_CANDIDATES), str(SYSTEM_CA_BUNDLE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    if explicit:
        raise BuildError(f"--ca-bundle {explicit}: no such file")
    return None


async def python_base(engine: Engine, cache_dir: Path) -> tuple[str, float]:
    """The local stand-in for python:3.11-slim-bookworm: debootstrap bookworm + python3-venv (cached)."""
    started = time.monotonic()
    if not await engine.exists(PYTHON_BASE):
        base = await images.ensure_base_image(engine.host, cache_dir)
        print(f"images | building {PYTHON_BASE} from {base} (python3-venv from the Debian mirror)", flush=True)
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(BASE_DOCKERFILE.encode())
            tar.addfile(info, io.BytesIO(BASE_DOCKERFILE.encode()))
        await engine.build("Dockerfile", context.getvalue(), PYTHON_BASE, {}, no_cache=False)
    return PYTHON_BASE, round(time.monotonic() - started, 1)


async def smoke(engine: Engine, built: Built, checks: tuple[tuple[str, list[str], list[str]], ...]) -> None:
    """Run each check with the image's own USER, no network, a read-only root and HOME on a tmpfs."""
    for name, options, args in checks:
        output = await engine.run(
            "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "-e", "HOME=/tmp",
            *options, built.image, *args,
        )  # fmt: skip
        built.smoke[name] = output.strip()
        first = output.strip().splitlines()[0] if output.strip() else "(no output)"
        print(f"images | smoke {built.image} {name}: ok  {first[:90]}", flush=True)


def closure_errors(installed: str) -> list[str]:
    """The runtime image holds exactly constraints.txt plus our own package."""
    pinned = {line.strip().lower() for line in (HERE / "constraints.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}  # fmt: skip
    have = {line.strip().lower().replace("_", "-") for line in installed.splitlines() if line.strip()}
    have = {line for line in have if not line.startswith("botburrow-agents==")}
    normalized = {line.replace("_", "-") for line in pinned}
    return [f"installed but not pinned: {x}" for x in sorted(have - normalized)] + [
        f"pinned but not installed: {x}" for x in sorted(normalized - have)
    ]


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


async def build_checked(engine: Engine, name: str, sources: tuple[str, ...], extra: dict[str, bytes], tag: str,
                        build_args: dict[str, str], checks: tuple[tuple[str, list[str], list[str]], ...], *,
                        no_cache: bool) -> Built:
    """Build deploy/images/<name>.Dockerfile as `tag`, run its smoke checks, insist on uid 10001."""
    print(f"images | building {tag} FROM {next(iter(build_args.values()))}", flush=True)
    context = await asyncio.to_thread(context_tar, sources, extra)
    built = await engine.build(f"deploy/images/{name}.Dockerfile", context, tag, build_args, no_cache=no_cache)
    await smoke(engine, built, checks)
    if built.smoke["uid"] != "10001":
        raise BuildError(f"{tag} runs as uid {built.smoke['uid']}, not 10001")
    return built


async def build_all(engine: Engine, args: argparse.Namespace) -> dict[str, object]:
    """Base (unless given), runtime, sandbox; smoke checks after each; the results as a JSON-able dict."""
    results: dict[str, object] = {"engine": (await engine.run("version", "--format", "{{.Server.Version}}")).strip()}
    if args.python_image:
        python_image, base_s = args.python_image, 0.0
    else:
        python_image, base_s = await python_base(engine, SANDBOX_CACHE_DIR)
    results["python_image"] = python_image
    results["python_base_prepare_s"] = base_s
    base_size = await engine.run("image", "inspect", "--format", "{{.Size}}", python_image)
    results["python_base_size_mb"] = round(int(base_size) / 1e6, 1)
    bundle = await asyncio.to_thread(ca_bundle, args.ca_bundle)
    extra = {"deploy/images/certs/ca-bundle.crt": bundle} if bundle else {}
    tag = version()
    prefix = f"{args.registry.rstrip('/')}/" if args.registry else ""
    runtime_tag, sandbox_tag = f"{prefix}botburrow-runtime:{tag}", f"{prefix}botburrow-sandbox:{tag}"
    runtime = await build_checked(engine, "runtime", RUNTIME_SOURCES, extra, runtime_tag,
                                  {"PYTHON_IMAGE": python_image}, SMOKE_RUNTIME, no_cache=args.no_cache)
    if errors := closure_errors(runtime.smoke.pop("closure")):
        raise BuildError(f"{runtime_tag}: the installed packages differ from constraints.txt:\n" + "\n".join(errors))
    sandbox = await build_checked(engine, "sandbox", SANDBOX_SOURCES, extra, sandbox_tag,
                                  {"BASE_IMAGE": runtime_tag, "PYTHON_IMAGE": python_image}, SMOKE_SANDBOX,
                                  no_cache=args.no_cache)
    for name, built in (("runtime", runtime), ("sandbox", sandbox)):
        smoke_lines = {key: (value.splitlines() or [""])[0][:200] for key, value in built.smoke.items()}
        size_mb = round(built.size_bytes / 1e6, 1)
        results[name] = {"image": built.image, "build_s": built.build_s, "size_mb": size_mb, "smoke": smoke_lines}
    results["no_cache"] = args.no_cache
    results["fresh_engine"] = args.fresh
    return results


async def run(args: argparse.Namespace) -> dict[str, object]:
    """With DOCKER_HOST: that engine. Otherwise a private dockerd, stopped (by PID) when done."""
    log_dir = args.cache_dir
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_BUILDKIT": "0", "HOME": str(log_dir)}
    if host := os.environ.get("DOCKER_HOST"):
        return await build_all(Engine(host, log_dir, {**env, "DOCKER_HOST": host}), args)
    with tempfile.TemporaryDirectory(prefix="images-engine-") as tmp:
        work_dir = Path(tmp) if args.fresh else log_dir / "engine"
        daemon = await asyncio.to_thread(dockerd.start, work_dir)
        try:
            return await build_all(Engine(daemon.host, log_dir, {**env, "DOCKER_HOST": daemon.host}), args)
        finally:
            await asyncio.to_thread(daemon.stop)


def report(results: dict[str, object]) -> str:
    lines = [
        f"engine {results['engine']}, Python base {results['python_image']} "
        f"(prepared in {results['python_base_prepare_s']} s)"
    ]
    for name in ("runtime", "sandbox"):
        built = results[name]
        assert isinstance(built, dict)
        lines.append(f"{name:8} {built['image']:42} {built['size_mb']:8.1f} MB  built in {built['build_s']:6.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.images.build", description=__doc__.split("\n")[0])
    parser.add_argument("--python-image", help="a registry base (python:3.11-slim-bookworm) instead of the local one")
    parser.add_argument("--registry", default="", help="tag as REGISTRY/botburrow-runtime:VERSION (default: none)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="logs, engine data, base tarball")
    parser.add_argument("--ca-bundle", help="PEM bundle the build stages trust (default: the host's; 'none': off)")
    parser.add_argument("--fresh", action="store_true", help="a throw-away engine data-root (cold layer cache)")
    parser.add_argument("--no-cache", action="store_true", help="docker build --no-cache")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir.resolve()
    try:
        results = asyncio.run(run(args))
    except (BuildError, images.ImageBuildError, dockerd.DockerdError) as error:
        print(f"images | FAILED: {error}", file=sys.stderr)
        return 1
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"images | results written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The container images: the build context the script sends, and (slow) a real runtime image build.

The slow test builds deploy/images/runtime.Dockerfile on the session's private dockerd (fixture
`docker_host`) from the local debootstrap Python base, with PyPI as the only network, and runs the
smoke checks of `python -m deploy.images.build` as the image's own user: about 70 s on a cold engine
(the sandbox image, ~3 min more, is left to `python -m deploy.images.build`).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from deploy.images import build

REPO = Path(__file__).resolve().parents[1]


def test_context_holds_the_sources_and_parses_from_its_first_header():
    context = build.context_tar(build.RUNTIME_SOURCES, {"deploy/images/certs/ca-bundle.crt": b"PEM"})
    # The docker CLI decides "tar or Dockerfile?" from the first 512 bytes alone (a PAX tar fails that).
    first = tarfile.TarInfo.frombuf(context[:512], tarfile.ENCODING, "surrogateescape")
    assert first.name == "pyproject.toml"
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        names = set(tar.getnames())
        bundle = tar.extractfile("deploy/images/certs/ca-bundle.crt")
        assert bundle is not None and bundle.read() == b"PEM"
    assert {"README.md", "botburrow/cli/__init__.py", "deploy/images/runtime.Dockerfile",
            "deploy/images/constraints.txt", "deploy/images/certs/README.md"} <= names  # fmt: skip
    assert not [n for n in names if "__pycache__" in n or n.startswith((".venv", ".cache", "tools/"))]


def test_closure_check_names_missing_and_unpinned_packages():
    pinned = [line for line in (REPO / "deploy/images/constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    exact = "\n".join([*pinned, "botburrow-agents==0.1.0"])
    assert build.closure_errors(exact) == []
    drifted = exact.replace("msgspec==0.22.0", "msgspec==0.21.0") + "\nrequests==2.0.0"
    assert build.closure_errors(drifted) == [
        "installed but not pinned: msgspec==0.21.0",
        "installed but not pinned: requests==2.0.0",
        "pinned but not installed: msgspec==0.22.0",
    ]


@pytest.mark.slow
async def test_runtime_image_builds_and_runs_as_uid_10001(docker_host: str, sandbox_image: str, tmp_path: Path):
    if shutil.which("docker") is None:
        pytest.skip("docker CLI not installed: apt-get install --no-install-recommends docker.io")
    engine = build.Engine(docker_host, tmp_path, {"PATH": "/usr/bin:/bin:/usr/local/bin", "DOCKER_BUILDKIT": "0",
                                                  "HOME": str(tmp_path), "DOCKER_HOST": docker_host})  # fmt: skip
    python_image, _ = await build.python_base(engine, build.SANDBOX_CACHE_DIR)
    bundle = await asyncio.to_thread(build.ca_bundle, None)
    context = build.context_tar(build.RUNTIME_SOURCES, {"deploy/images/certs/ca-bundle.crt": bundle} if bundle else {})
    runtime = await engine.build("deploy/images/runtime.Dockerfile", context, "botburrow-runtime:test",
                                 {"PYTHON_IMAGE": python_image}, no_cache=False)  # fmt: skip
    await build.smoke(engine, runtime, build.SMOKE_RUNTIME)
    assert runtime.smoke["uid"] == "10001"
    assert "ingest" in runtime.smoke["botburrow --help"] and "runner" in runtime.smoke["botburrow --help"]
    assert build.closure_errors(runtime.smoke["closure"]) == []
    assert runtime.smoke["no build CA"] == ""  # the proxy CA bundle stayed in the build stage

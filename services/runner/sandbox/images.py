"""The Docker sandbox base image, built without any registry: a debootstrap root file system, docker import.

    python -m services.runner.sandbox.images [--cache-dir .cache/sandbox] [--docker-host unix:///path/docker.sock]

builds (once; cached) `<cache>/bookworm-py3.tar` from
`debootstrap --variant=minbase --include=python3 bookworm <root> http://deb.debian.org/debian` (needs root
and the Debian mirror; ~45 s), and with a docker host imports it as BASE_IMAGE (~3 s) unless that image is
there already. deploy/images/sandbox.Dockerfile can take BASE_IMAGE as its base (`--build-arg`).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

BASE_IMAGE = "services/runner/sandbox-base:bookworm-py3-v2"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE_DIR = Path(".cache/sandbox")
# Bump the suffix when the build changes: the cached tarball is keyed by this name only.
TARBALL = "bookworm-py3-v2.tar"


class ImageBuildError(RuntimeError):
    pass


async def _run(*argv: str, env: dict[str, str] | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        tail = output.decode("utf-8", "replace")[-2000:]
        raise ImageBuildError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed ({proc.returncode}):\n{tail}")


async def _unmount_below(path: Path) -> None:
    """debootstrap mounts /proc and /sys in its target; an interrupted run leaves them mounted there."""
    text = await asyncio.to_thread(Path("/proc/self/mountinfo").read_text)
    prefix = str(path) + "/"
    mounts = [line.split()[4] for line in text.splitlines() if line.split()[4].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        proc = await asyncio.create_subprocess_exec("umount", "-l", mount)
        await proc.wait()


async def rootfs_tarball(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The cached root file system tarball, built first if missing. Concurrent callers build it once."""
    cache_dir = await asyncio.to_thread(cache_dir.resolve)
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    tarball = cache_dir / TARBALL
    lock_file = await asyncio.to_thread(open, cache_dir / f"{TARBALL}.lock", "w")
    try:
        # The lock is held across the build so a second test session waits instead of building twice.
        await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        if shutil.which("debootstrap") is None:
            raise ImageBuildError("debootstrap not found: apt-get install --no-install-recommends debootstrap")
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="rootfs-", dir=cache_dir))
        try:
            root = work / "root"
            await _run("debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root), MIRROR)
            # Host tool trees bind-mounted at their host paths may live under /root (a pyenv Python that a
            # CLI venv links to): the sandbox user must be able to traverse it. It holds nothing.
            await asyncio.to_thread(os.chmod, root / "root", 0o755)
            partial = work / TARBALL
            await _run("tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), ".")
            await asyncio.to_thread(os.replace, partial, tarball)
        finally:
            await _unmount_below(work)
            await asyncio.to_thread(shutil.rmtree, work, True)
        return tarball
    finally:
        await asyncio.to_thread(lock_file.close)


async def image_exists(docker_host: str, image: str = BASE_IMAGE) -> bool:
    import aiodocker

    async with aiodocker.Docker(url=docker_host) as docker:
        try:
            await docker.images.inspect(image)
        except aiodocker.DockerError:
            return False
        return True


async def ensure_base_image(docker_host: str, cache_dir: Path = DEFAULT_CACHE_DIR, image: str = BASE_IMAGE) -> str:
    """Make sure the engine at docker_host has `image`; import it from the cached tarball if not."""
    if await image_exists(docker_host, image):
        return image
    tarball = await rootfs_tarball(cache_dir)
    docker = shutil.which("docker")
    if docker is None:
        raise ImageBuildError("docker CLI not found: apt-get install --no-install-recommends docker.io")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": docker_host}
    await _run(docker, "import", "--change", 'CMD ["/bin/sh"]', str(tarball), image, env=env)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.runner.sandbox.images",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--docker-host", help="unix:///path/docker.sock: also import the image there")
    parser.add_argument("--image", default=BASE_IMAGE)
    args = parser.parse_args(argv)
    try:
        tarball = asyncio.run(rootfs_tarball(args.cache_dir))
        print(f"rootfs: {tarball}")
        if args.docker_host:
            print(f"image: {asyncio.run(ensure_base_image(args.docker_host, args.cache_dir, args.image))}")
    except ImageBuildError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

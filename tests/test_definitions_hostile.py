"""Definitions are data: every source refuses what could reach outside an agent's folder, file by file.

The attack that started this: `agents/<a>/system-prompt.md` as a symlink to `/proc/self/environ` put
the process's R2_SECRET_KEY into that agent's prompt. Here it is tried for real (in a child process
whose environment holds a planted secret), with its variants (a symlinked folder, a hard link, a FIFO,
a huge file), and on S3 (a real SeaweedFS) with hostile object keys and manifest entries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from botburrow.definitions import LocalSource, SourceError, load_all, validate_dir
from botburrow.definitions import bucket as configs
from botburrow.definitions.source import SYMLINK, path_problem
from botburrow.runtime.bus import Bus
from botburrow.runtime.kvread import bucket_keys
from services.configsync.sync import sync_once
from tests.fixtures.s3 import S3Server

PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions"
AGENTS = {"claude-coder-1", "devops-agent", "pirate-captain-agent", "research-agent", "sprint-coder",
          "test-persona-agent"}
PLANTED = "r2-secret-planted-7f3a9c"
CONFIG = "name: {name}\ntype: native\nbrain:\n  model: m\ncapabilities: {{}}\n"


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    root = tmp_path / "defs"
    shutil.copytree(PUBLISHED, root)
    return root


def add_agent(root: Path, name: str, prompt: str = "You are {{name}}.\n") -> Path:
    folder = root / "agents" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(CONFIG.format(name=name))
    (folder / "system-prompt.md").write_text(prompt)
    return folder


LOAD_IN_CHILD = """
import asyncio, json, sys
from botburrow.definitions import LocalSource, load_all
result = asyncio.run(load_all(LocalSource(sys.argv[1])))
print(json.dumps({"prompts": {n: a.system_prompt for n, a in result.agents.items()},
                  "errors": [str(e) for e in result.errors]}))
"""


def test_a_prompt_symlinked_to_proc_self_environ_is_refused_and_leaks_nothing(definitions: Path) -> None:
    evil = add_agent(definitions, "evil-agent")
    (evil / "system-prompt.md").unlink()
    (evil / "system-prompt.md").symlink_to("/proc/self/environ")
    env = {**os.environ, "R2_SECRET_KEY": PLANTED}

    child = subprocess.run([sys.executable, "-c", LOAD_IN_CHILD, str(definitions)], env=env, capture_output=True,
                           text=True, timeout=60, check=True)
    loaded = json.loads(child.stdout)

    assert PLANTED not in child.stdout + child.stderr
    assert set(loaded["prompts"]) == AGENTS  # the others keep loading
    assert loaded["errors"] == [f"agents/evil-agent/system-prompt.md: $: refused: {SYMLINK}"]

    cli = subprocess.run([sys.executable, "-m", "botburrow", "validate", str(definitions)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and PLANTED not in cli.stdout + cli.stderr
    assert f"{definitions}/agents/evil-agent/system-prompt.md: $: refused: {SYMLINK}" in cli.stdout.splitlines()


async def test_the_symlink_attack_never_reaches_the_bucket(bus: Bus, definitions: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.md"
    secret.parent.mkdir()
    secret.write_text(f"R2_SECRET_KEY={PLANTED}\n")
    (add_agent(definitions, "evil-agent") / "system-prompt.md").unlink()
    (definitions / "agents/evil-agent/system-prompt.md").symlink_to(secret)

    report = await sync_once(bus, LocalSource(definitions))

    assert sorted(report.added) == sorted(f"agent.{a}" for a in AGENTS) + sorted(
        f"skill.{s}" for s in ("budget-check", "hub-post", "hub-search"))
    assert report.errors == [f"agents/evil-agent/system-prompt.md: $: refused: {SYMLINK}"]
    kv = await bus.kv(configs.BUCKET)
    for key in await bucket_keys(kv):
        assert PLANTED not in ((await kv.get(key)).value or b"").decode()


async def test_every_way_out_of_a_folder_is_refused_with_its_path(definitions: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    add_agent(outside, "elsewhere-agent")
    (definitions / "agents/elsewhere-agent").symlink_to(outside / "agents/elsewhere-agent")  # a symlinked folder
    hard = add_agent(definitions, "hard-agent")
    (hard / "system-prompt.md").unlink()
    os.link(outside / "agents/elsewhere-agent/system-prompt.md", hard / "system-prompt.md")
    fifo = add_agent(definitions, "fifo-agent")
    (fifo / "system-prompt.md").unlink()
    os.mkfifo(fifo / "system-prompt.md")  # reading it would block the loader for ever
    huge = add_agent(definitions, "huge-agent")
    (huge / "system-prompt.md").write_bytes(b"x" * 5000)
    locked = add_agent(definitions, "locked-agent")
    (locked / "config.yaml").chmod(0)  # unreadable (unless we are root): that agent fails, not the source
    folder_link = add_agent(definitions, "skill-link-agent")
    (definitions / "skills/linked-skill").symlink_to(folder_link)

    result = await load_all(LocalSource(definitions, max_file_bytes=4096))

    assert set(result.agents) - {"locked-agent"} == AGENTS | {"skill-link-agent"}
    reasons = {error.path: error.message for error in result.errors}
    assert reasons == {
        "agents/elsewhere-agent": f"refused: {SYMLINK}",
        "agents/fifo-agent/system-prompt.md": "refused: not a regular file",
        "agents/hard-agent/system-prompt.md": "refused: a hard link (its content may live outside the definitions)",
        "agents/huge-agent/system-prompt.md":
            "refused: 5000 bytes or more, over the 4096-byte limit (DEFINITION_FILE_MAX_BYTES): not read",
        "skills/linked-skill": f"refused: {SYMLINK}",
    } | ({} if os.geteuid() == 0 else {"agents/locked-agent/config.yaml": "refused: cannot be read: Permission denied"})
    lines = validate_dir(definitions)
    for path in ("agents/elsewhere-agent", "agents/fifo-agent/system-prompt.md", "skills/linked-skill"):
        assert any(line.startswith(f"{definitions}/{path}: $: refused: ") for line in lines), path


async def test_an_agents_folder_linked_out_of_the_directory_is_refused_whole(definitions: Path,
                                                                             tmp_path: Path) -> None:
    moved = tmp_path / "real-agents"
    (definitions / "agents").rename(moved)
    (definitions / "agents").symlink_to(moved)
    with pytest.raises(SourceError, match=r"agents is a symbolic link out of .*: refused"):
        await load_all(LocalSource(definitions))
    assert validate_dir(definitions) == [
        f"{definitions}: {definitions}/agents is a symbolic link out of {definitions}: refused"]


async def test_a_kubernetes_volume_layout_loads(definitions: Path, tmp_path: Path) -> None:
    """A ConfigMap or Secret volume: `agents -> ..data/agents`, `..data -> ..2026_12_04_...` inside the
    mount. Links of `agents` and `skills` that stay inside the directory are followed; nothing below is."""
    volume = tmp_path / "volume"
    (volume / "..2026_12_04_21_00_00.1").mkdir(parents=True)
    for kind in ("agents", "skills"):
        shutil.move(definitions / kind, volume / "..2026_12_04_21_00_00.1" / kind)
        (volume / kind).symlink_to(f"..data/{kind}")
    (volume / "..data").symlink_to("..2026_12_04_21_00_00.1")
    result = await load_all(LocalSource(volume))
    assert result.errors == [] and set(result.agents) == AGENTS


@pytest.mark.parametrize(("path", "problem"), [
    ("agents/../config.yaml", "'..' segment"),
    ("/agents/x/config.yaml", "absolute path"),
    ("agents\\x\\config.yaml", "backslash"),
    ("agents/x\0/config.yaml", "NUL byte"),
    ("agents/x\n/config.yaml", "control character"),
    ("agents//config.yaml", "empty"),
])
def test_path_problems(path: str, problem: str) -> None:
    assert problem in (path_problem(path) or "")
    assert path_problem("agents/research-agent/config.yaml") is None


HOSTILE_CONFIGS = {
    "an integer of 5,000 digits": (b"cache_ttl: 1" + b"0" * 5000 + b"\n", "YAML value cannot be read: ValueError"),
    "nesting 100,000 deep": (b"a: " + b"[" * 100_000 + b"\n", "YAML syntax error"),
    "a python tag": (b"x: !!python/object/apply:os.system [id]\n", "YAML syntax error"),
    "a NUL byte": (b"name: a\x00\n", "YAML syntax error"),
    "an alias bomb": (b"".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9 if i else ['x'] * 9)}]\n".encode()
                               for i in range(8)) + b"interests: {topics: *l7}\n", "Expected `str`"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
async def test_a_hostile_config_fails_alone_with_its_path(definitions: Path, case: str) -> None:
    data, message = HOSTILE_CONFIGS[case]
    config = definitions / "agents/research-agent/config.yaml"
    config.write_bytes(config.read_bytes() + b"\n" + data if case == "an alias bomb" else data)
    result = await load_all(LocalSource(definitions))
    assert set(result.agents) == AGENTS - {"research-agent"}
    [error] = result.errors
    assert error.path == "agents/research-agent/config.yaml" and message in error.message, error


# --- S3 (SeaweedFS) ----------------------------------------------------------------------------------

HOSTILE_ENTRIES = {
    "agents/../system-prompt.md": "manifest entry: an empty, '.' or '..' segment in the path",
    "/agents/abs-agent/config.yaml": "manifest entry: an absolute path",
    "agents/bs-agent\\..\\x/config.yaml": "manifest entry: a backslash in the path",
    "agents/nul-agent\0/config.yaml": "manifest entry: a NUL byte in the path",
    "../other/agents/x/config.yaml": "manifest entry: an empty, '.' or '..' segment in the path",
}


async def test_s3_hostile_manifest_entries_are_refused_and_the_others_load(s3: S3Server, definitions: Path) -> None:
    prefix = s3.new_prefix()
    add_agent(definitions, "big-agent", prompt="y" * 5000)
    s3.upload_tree(definitions, prefix, manifest=True)
    client = s3.client()
    # What `..` would reach if a client or proxy normalised it: a secret beside the definitions.
    client.put_object(Bucket=s3.bucket, Key=prefix + "system-prompt.md", Body=f"R2_SECRET_KEY={PLANTED}".encode())
    manifest = json.loads(client.get_object(Bucket=s3.bucket, Key=prefix + "manifest.json")["Body"].read())
    for entry in manifest["entries"]:
        if entry["path"] == "agents/big-agent/system-prompt.md":
            entry["size"] = 10  # a manifest that lies about the size: the GET finds out, and reads no more
    manifest["entries"] += [{"path": path, "hash": "0" * 64, "size": 10} for path in HOSTILE_ENTRIES]
    manifest["entries"].append({"path": "skills/ghost-skill/SKILL.md", "hash": "3" * 64, "size": 10})  # no object
    client.put_object(Bucket=s3.bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())

    source = s3.source(prefix)
    source.max_file_bytes = 4096
    result = await load_all(source)

    assert set(result.agents) == AGENTS
    reasons = {error.path: error.message for error in result.errors}
    hostile = {path.replace("\0", "\\x00"): f"refused: {why}" for path, why in HOSTILE_ENTRIES.items()}
    too_big = "refused: 4097 bytes or more, over the 4096-byte limit (DEFINITION_FILE_MAX_BYTES): not read"
    missing = "refused: listed in the manifest, missing from the bucket"
    assert reasons == hostile | {"agents/big-agent/system-prompt.md": too_big, "skills/ghost-skill/SKILL.md": missing}
    assert all(PLANTED not in agent.system_prompt for agent in result.agents.values())
    assert len(result.skills) == 3
    assert source.object_gets == 2 * len(AGENTS) + 3 + 2 + 1  # the hostile entries were never fetched


async def test_s3_hostile_object_keys_are_refused_without_a_manifest(s3: S3Server, definitions: Path) -> None:
    """Listed keys go through the same check. SeaweedFS itself refuses `..` keys and folds `//` and `\\`
    into `/` (R2 keeps them: the manifest test covers those), but it keeps control characters."""
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=False)
    client = s3.client()
    for key in ("agents/tab\tagent/config.yaml", "agents/esc\x1bagent/system-prompt.md"):
        client.put_object(Bucket=s3.bucket, Key=prefix + key, Body=CONFIG.format(name="x").encode())
    for marker in ("", "agents/", "agents/research-agent/"):  # folder markers, as S3 consoles make: not errors
        client.put_object(Bucket=s3.bucket, Key=prefix + marker, Body=b"")

    source = s3.source(prefix)
    result = await load_all(source)

    assert set(result.agents) == AGENTS
    assert {error.path: error.message for error in result.errors} == {
        "agents/tab\\x09agent/config.yaml": "refused: object key: a control character in the path",
        "agents/esc\\x1bagent/system-prompt.md": "refused: object key: a control character in the path",
    }
    assert source.object_gets == 2 * len(AGENTS) + 3


async def test_s3_a_large_allowed_file_arrives_whole(s3: S3Server, definitions: Path) -> None:
    """The bounded read loops over the body: one read returns only what has arrived, not the whole object."""
    prompt = "".join(f"line {i:06d} of a long but allowed prompt\n" for i in range(5000))  # ~200 KB
    add_agent(definitions, "long-agent", prompt=prompt)
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=True)
    result = await load_all(s3.source(prefix))
    assert result.errors == [] and result.agents["long-agent"].system_prompt == prompt


@pytest.mark.parametrize("manifest", [b'{"entries": {"not": "a list"}}', b'{"entries": [{"path": "\xff"}]}',
                                      b'{"entries": [{"path": "agents/a/config.yaml", "hash": "\xff\xfe"}]}',
                                      b"[" * 100_000, b"not json"])
async def test_s3_an_unreadable_manifest_is_one_clear_source_error(s3: S3Server, manifest: bytes) -> None:
    prefix = s3.new_prefix()
    s3.client().put_object(Bucket=s3.bucket, Key=prefix + "manifest.json", Body=manifest)
    with pytest.raises(SourceError, match=r"manifest\.json is not a valid manifest"):
        await load_all(s3.source(prefix))

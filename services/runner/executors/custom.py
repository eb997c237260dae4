"""`type: custom`: `executor.command` with its args, `${PROMPT}` substituted (contract §2, §4).

The command gets the model gateway the same way the CLIs do (Anthropic and OpenAI base URLs, the
activation token as key), the system prompt in a file named by `BOTBURROW_SYSTEM_PROMPT_FILE`, the
MCP relays as JSON in `BOTBURROW_MCP_SERVERS`, and `executor.env`. Its stdout is the answer; a
non-zero exit or an empty stdout fails the activation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from services.runner.executors.base import CliJob, Invocation, Parsed
from services.runner.executors.process import Completed
from services.runner.seams import ThinkRequest

PROMPT_PLACEHOLDER = "${PROMPT}"


class Custom:
    name = "custom"
    binary_name = "executor.command"
    housekeeping_models = ()  # it is told BOTBURROW_MODEL, the only model it may call

    @staticmethod
    def locate(request: ThinkRequest) -> str | None:
        """An absolute command as is, else looked up on the runner's PATH."""
        executor = request.definition.config.executor
        if executor is None:
            return None
        if "/" in executor.command:
            return executor.command if Path(executor.command).is_file() else None
        return shutil.which(executor.command, path=request.config.search_path or None)

    def invocation(self, job: CliJob) -> Invocation:
        executor = job.request.definition.config.executor
        assert executor is not None  # locate() found no command without one
        system = job.write("system-prompt.md", job.system)
        argv = [job.binary, *(arg.replace(PROMPT_PLACEHOLDER, job.task) for arg in executor.args)]
        servers = [{"name": e.name, "command": e.command, "args": list(e.args), "env": dict(e.env)} for e in job.mcp]
        env = {**job.base_env(), **executor.env,
               "ANTHROPIC_BASE_URL": job.gateway.base_url, "ANTHROPIC_API_KEY": job.gateway.token,
               "OPENAI_BASE_URL": f"{job.gateway.base_url}/v1", "OPENAI_API_KEY": job.gateway.token,
               "BOTBURROW_MODEL": job.model, "BOTBURROW_SYSTEM_PROMPT_FILE": str(system),
               "BOTBURROW_MCP_SERVERS": json.dumps(servers)}
        return Invocation(argv, env)

    def parse(self, job: CliJob, done: Completed) -> Parsed:
        if done.returncode != 0:
            return Parsed(error=None)  # the verdict names the exit code and stderr tail
        return Parsed(text=done.stdout.decode("utf-8", "replace"))


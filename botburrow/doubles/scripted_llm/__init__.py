"""The scripted LLM: a protocol-faithful double of the Anthropic Messages and OpenAI Chat APIs.

Local mode (`botburrow dev`, demo mode) and the tests point model clients at it. Run it alone with
`python -m botburrow.doubles.scripted_llm [--port N] [--script FILE] [--demo]`.

- `server`: `ScriptedLLM`, the server
- `script`: scripts: steps, keyed cursors, answers, records and violations
- `anthropic_api`: `POST /v1/messages`
- `openai_api`: `POST /v1/chat/completions`, `GET /v1/models`
- `wire`: what both share: ids, retry headers, SSE
- `cli`, `__main__`: run it alone
"""

from botburrow.doubles.scripted_llm.cli import main, read_script_file
from botburrow.doubles.scripted_llm.script import (
    Answer,
    Expect,
    RecordedRequest,
    Step,
    StepError,
    ToolCall,
    Usage,
    Violation,
)
from botburrow.doubles.scripted_llm.server import ScriptedLLM

__all__ = [
    "Answer",
    "Expect",
    "RecordedRequest",
    "ScriptedLLM",
    "Step",
    "StepError",
    "ToolCall",
    "Usage",
    "Violation",
    "main",
    "read_script_file",
]

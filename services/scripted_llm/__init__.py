"""The scripted LLM: a protocol-faithful double of the Anthropic Messages and OpenAI Chat APIs.

Local mode (`botburrow dev`, demo mode) and the tests point model clients at it. Run it alone with
`python -m botburrow.services.scripted_llm [--port N] [--script FILE] [--demo]`.
"""

from botburrow.services.scripted_llm.cli import main, read_script_file
from botburrow.services.scripted_llm.script import (
    Answer,
    Expect,
    RecordedRequest,
    Step,
    StepError,
    ToolCall,
    Usage,
    Violation,
)
from botburrow.services.scripted_llm.server import ScriptedLLM

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

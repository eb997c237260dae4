"""The `botburrow` command (contract §7). Each sub-command imports only what it needs, so starting a
stage does not load the others' code.

- `__init__`: the parser and the dispatch (stages, local mode, the doubles alone, operator commands)
- `ops`: operator commands that talk to NATS: streams apply, tail, show, dlq (and the dispatch of the rest)
- `inject`: `botburrow inject notification | --raw SUBJECT`
- `control`: `botburrow agent pause|resume <agent>`, `botburrow cancel <activation id>`
- `errors`: every command's failure as one line that says what to do (`--debug`: the traceback)
- `read`: an ordered read of a stream's history up to its current end
- `timeline`: `botburrow show`: an activation's run events as a timeline
- `replay`: `botburrow replay --rerun | --offline [--with-definitions DIR]`
- `letters`: how `botburrow dlq` shows and refuses dead letters of `configs` values
- `memory`: `botburrow memory ls|show|forget`: the agents' memories (issue 19)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

from botburrow.dev import add_arguments as add_dev_arguments

STAGES = ("ingest", "scheduler", "runner", "metrics", "configsync")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="botburrow", description="Make Botburrow Hub agents act.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the {stage} stage")
    dev = sub.add_parser("dev", help="everything on one machine: NATS, Hub emulator, scripted LLM, all stages")
    add_dev_arguments(dev)  # its options live with it, in botburrow.dev
    sub.add_parser("hub-emulator", help="the Hub emulator alone", add_help=False)
    sub.add_parser("scripted-llm", help="the scripted LLM alone", add_help=False)
    sub.add_parser("doctor", help="the JetStream cluster: each stream's and bucket's replicas, leader, lagging peers")
    streams = sub.add_parser("streams", help="JetStream topology")
    streams.add_argument("action", choices=["apply"])
    validate = sub.add_parser("validate", help="check a definitions directory as the loader would")
    validate.add_argument("directory")
    inject = sub.add_parser("inject", help="publish a notification, or any payload as is (--raw)")
    inject.add_argument("kind", nargs="?", choices=["notification"])
    inject.add_argument("--raw", metavar="SUBJECT", help="publish stdin or FILE to SUBJECT as is")
    inject.add_argument("file", nargs="?", help="with --raw: the payload file (default: stdin)")
    inject.add_argument("--agent")
    inject.add_argument("--type", default="mention", help="mention (default), dm, reply, comment, ...")
    inject.add_argument("--post", help="the post (thread) of a mention or reply (default: the agent's last one)")
    inject.add_argument("--comment")
    inject.add_argument("--dm", help="DM conversation id (for --type dm; default: the agent's last, or a new one)")
    inject.add_argument("--content", default="")
    inject.add_argument("--from", dest="sender", default="operator")
    inject.add_argument("--id", help="notification id (default: a new one)")
    inject.add_argument("--wait", action="store_true", help="wait for the activation to end and print the reply")
    inject.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the activation (120)")
    agent = sub.add_parser("agent", help="pause or resume an agent (the scheduler activates no paused agent)")
    agent.add_argument("action", choices=["pause", "resume"])
    agent.add_argument("agent")
    cancel = sub.add_parser("cancel", help="stop a running activation, or refuse a queued one when it starts")
    cancel.add_argument("activation_id")
    tail = sub.add_parser("tail", help="follow events as they arrive")
    tail.add_argument("--subject", help="a NATS subject filter (default: every botburrow subject)")
    tail.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="the timeline of one activation")
    show.add_argument("activation_id")
    show.add_argument("--json", action="store_true")
    replay = sub.add_parser("replay", help="re-run an activation: live (--rerun) or offline against its record")
    mode = replay.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rerun", action="store_true", help="publish the original request again, under a new id")
    mode.add_argument("--offline", action="store_true", help="re-execute with the recorded model answers")
    replay.add_argument("activation_id")
    replay.add_argument("--with-definitions", metavar="DIR", help="offline: swap in another agent definition")
    replay.add_argument("--json", action="store_true")
    memory = sub.add_parser("memory", help="the agents' memories: ls, show, forget (one, or a person's: --person)")
    memory.add_argument("action", choices=["ls", "show", "forget"])
    memory.add_argument("agent", nargs="?", help="the agent (forget --person: every agent when left out)")
    memory.add_argument("id", nargs="?", help="show/forget: the memory's id (from ls)")
    memory.add_argument("--person", help="forget: every memory of or about this person")
    dlq = sub.add_parser("dlq", help="dead letters")
    dlq.add_argument("action", choices=["ls", "show", "redrive"])
    dlq.add_argument("seq", nargs="?", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("hub-emulator", "scripted-llm"):
        module = "hub_emulator" if args_list[0] == "hub-emulator" else "scripted_llm"
        sys.exit(importlib.import_module(f"botburrow.doubles.{module}").main(args_list[1:]) or 0)
    if "--debug" in args_list:  # accepted anywhere on the line, not only before the command
        args_list = ["--debug", *[a for a in args_list if a != "--debug"]]
    args = _parser().parse_args(args_list)
    if args.command in STAGES:
        importlib.import_module(f"services.{args.command}.stage").main()
        return
    if args.command == "dev":
        from botburrow.dev import DevOptions
        from botburrow.dev import main as dev_main

        sys.exit(dev_main(DevOptions.from_args(args)))
    try:
        sys.exit(_operator_command(args))
    except KeyboardInterrupt:  # Ctrl-C on a waiting command (`inject --wait`, `cancel`): stopped, no traceback
        sys.exit(130)
    except Exception as exc:
        if args.debug:
            raise
        from botburrow.cli.errors import fail

        sys.exit(fail(args.command, exc))


def _operator_command(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        from botburrow.cli import doctor

        sys.exit(asyncio.run(doctor.main()))
    if args.command == "validate":
        from botburrow.definitions.validate import validate_dir

        problems = validate_dir(args.directory)
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s)" if problems else "all definitions valid")
        return 1 if problems else 0
    if args.command == "memory":
        from botburrow.cli import memory

        return asyncio.run(memory.run(args))
    from botburrow.cli import ops

    return asyncio.run(ops.run(args))

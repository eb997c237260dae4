"""The runner stage: runs activations (contract §4). Nothing is imported here: the MCP relay
(`mcp.relay`) starts in a sandbox with the standard library only.

- `stage`: `run(ctx)` and `main()`: the consumer loop (priorities, slots, leases, heartbeats, drain)
- `config`: `RunnerConfig`, the runner's settings read once in `run()` (model access, sandbox, bounds)
- `activation`: one activation, from claim to completion, ending in a typed `Ending`: the only
  implementation of what an activation does
- `seams`: the places an activation is extended (grants, model gate, Hub reads, toolsets, thinker, posters,
  event log), each a protocol with the runner's default
- `hubreads`: the Hub content an activation reads before thinking (threads, exploration candidates)
- `context`: what the model is told: the system prompt with skills, and the task
- `loop`: the native agent loop, over a neutral `transcript`; the activation's `Budget` (turns, tokens,
  deadline), which the gateway charges too
- `transcript`: a provider-neutral conversation, and the model seam the loop talks to
- `providers`: the model adapters (Anthropic Messages, OpenAI-compatible Chat Completions)
- `modelaccess`: where an agent's model calls go and which key they carry
- `gateway`: the runner-side model gateway a CLI in a sandbox calls instead of the model
- `pricing`: the price table
- `hubtools`: the Hub tools of the native loop, gated by `hub:*` grants
- `shelltools`: shell and file tools of the native loop, in the sandbox
- `mcptools`: the MCP toolset of an activation: the granted servers, filtered
- `posting`: posting as the agent, exactly once, within its limits
- `lease`: the agent's lease in the `leases` bucket
- `runlog`: the activation's event log on `agents.run.<agent>.<id>.<event>`
- `recorded`: a recorded activation and the seams that play it back
- `offline`: offline and shadow re-runs: `Activation` with recorded seams, compared with the recording
- `executors/`: the coding-agent CLI executors (claude-code, goose, aider, opencode, custom)
- `mcp/`: MCP for agents: the operator's catalog, the servers, the filtering proxy, the relay
- `sandbox/`: run one command in a throw-away sandbox (bwrap, docker, none)
"""

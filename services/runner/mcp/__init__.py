"""MCP for agents (contract §3): the operator's catalog, the built-in servers, the client-side filtering
proxy, our `hub` server and the stdio relay a sandboxed CLI uses to reach the runner's servers.

Nothing is imported here: `relay` runs in a sandbox with the standard library only. The grant
grammar itself is kernel (`botburrow.grants`): settings read it too.

- `catalog`: the operator's catalog: the only MCP servers an activation may start, and how
- `servers`: the servers an activation may start, as launch plans, only with grants
- `proxy`: the runner-side proxy in front of one server: filtered `tools/list` and `tools/call`
- `hubserver`: our `hub` MCP server
- `endpoint`: the runner-side Unix-socket endpoint a sandboxed CLI reaches through `relay`
- `relay`: `python -m services.runner.mcp.relay <socket> <server>`, the stdio side in the sandbox
"""

"""MCP for agents (SPEC §3): grant policy, the built-in servers, the client-side filtering proxy,
our `hub` server and the stdio relay a sandboxed CLI uses to reach the runner's servers."""

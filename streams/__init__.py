"""The JetStream topology (`topology`), its idempotent apply (`apply`) and subject names (`subjects`)."""

"""Agent memory (issue 19): what an agent remembers across activations, as its definition's `memory` asks.

- `items`: one memory, a Markdown document with front matter, and the layout under `memory/<agent>/`;
- `store`: the object store (S3/R2, or a directory in local mode); the runner writes only `memory/`;
- `index`: an agent's memories as one snapshot; `index.json` as a cache; two writers; eviction;
- `retrieval`: the strategies (`embedding_search`, `keyword`, `recent`) and what `relevance_threshold` means;
- `redaction`: what is taken out before a write;
- `extraction`: the one small model call after posting (projects, decisions, feedback);
- `service`: the `Memories` seam an activation calls (`recall` before thinking, `remember` after posting),
  and `memory` run events for both.

Nothing is imported here: the retrieval libraries load only when a memory agent first needs them.
"""

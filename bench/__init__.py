"""Benchmarks (`just bench`): each module here has `async def main(results_dir: Path) -> dict` that
measures one thing on real parts and returns its numbers; `python -m bench [name ...]` runs them and
writes `bench/results/<name>.json`. Benchmarks, not tests: nothing here asserts a time."""

"""The benchmarks behind BENCHMARKS.md: `streamrec bench encoder|pipeline|recommender|index`."""

# The two commands of the README. Everything else is `.venv/bin/streamrec --help`.
.PHONY: run test

run:  ## set up, then run the main job on the embedded broker with real MovieLens data
	@scripts/bootstrap
	.venv/bin/streamrec demo

test:  ## the whole suite: ruff, mypy, pytest against a real Apache Kafka it starts itself
	@scripts/test

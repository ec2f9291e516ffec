"""``python -m reranker.cli``: the same as the ``reranker`` command."""

from reranker.cli.root import main

main()

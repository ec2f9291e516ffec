"""The ``reranker`` command line: one command per verb, one module per command group.

Exit codes: 0 success; 1 unexpected failure; 2 bad usage or settings; 3 the Elasticsearch
node could not be started or reached; 4 unreadable or malformed input; 5 indexing failed
(the live alias was left as it was); 6 a search failed; 7 a model could not be loaded.
"""

from reranker.cli.root import main

__all__ = ["main"]

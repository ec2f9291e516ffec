"""Every error the package raises on purpose derives from :class:`RerankerError`.

Callers (the CLI, the proxy) catch these and turn them into one clear message and an exit
code or an HTTP status; anything else reaching them is a bug.
"""

from __future__ import annotations


class RerankerError(Exception):
    """Base class of the package's deliberate errors."""

    exit_code = 1


class ConfigError(RerankerError):
    """Settings that are missing, malformed or contradictory."""

    exit_code = 2


class NodeError(RerankerError):
    """The local Elasticsearch node could not be fetched, started, reached or stopped."""

    exit_code = 3


class SourceError(RerankerError):
    """An input corpus, query file or qrels file that cannot be read or parsed."""

    exit_code = 4


class MalformedLineError(SourceError):
    """One line of a JSONL source is not a valid document; carries where it is."""

    def __init__(self, path: str, line_number: int, reason: str) -> None:
        super().__init__(f"{path}:{line_number}: {reason}")
        self.path = path
        self.line_number = line_number
        self.reason = reason


class IndexingError(RerankerError):
    """Building or swapping an index failed; the live alias was left untouched."""

    exit_code = 5


class SearchError(RerankerError):
    """A first-stage query failed or was given bad input."""

    exit_code = 6


class ModelError(RerankerError):
    """A model folder that is missing files, fails its card check, or cannot be loaded."""

    exit_code = 7

"""The rerank API against clients nobody here wrote, over real HTTP (uvicorn on loopback):
Cohere's official SDK, LangChain's ``CohereRerank``, and the requests Elasticsearch's
``custom`` and ``hugging_face`` inference services and an OpenSearch ML Commons connector send,
built from the README's own request bodies the way those servers build them.

Elasticsearch's and OpenSearch's inference features are not in the distribution the tests can
run, so their side is reproduced from their source (cited at each helper), not run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest
from cohere.errors import BadRequestError, UnauthorizedError
from langchain_cohere.rerank import CohereRerank
from langchain_core.documents import Document

from reranker.config import Settings
from reranker.proxy import ProxySettings, create_app
from reranker.rerank.scorer import Scorer
from tests.conftest import serving_over_http
from tests.helpers import QUERY, SHIPPED, TEXTS

README = (Path(__file__).resolve().parents[2] / "docs" / "rerank-api.md").read_text(
    encoding="utf-8"
)
KEY = "s3cret"

RELEVANT = {1, 3}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``reranker serve --scorer-only`` as the CLI builds it, with a client key, on loopback."""
    scorer = Scorer(SHIPPED, variant="int8", threads=1)
    settings = ProxySettings(
        es=Settings(es_url="http://127.0.0.1:9"), scorer_only=True, api_keys=(KEY,)
    )
    app = create_app(settings, scorer_factory=lambda: scorer, load_in_background=False)
    with serving_over_http(app) as url:
        yield url


# ------------------------------------------------------------------ Cohere's SDK, LangChain


def test_cohere_sdk_v1_client_reranks_through_our_base_url(server: str) -> None:
    client = cohere.Client(api_key=KEY, base_url=server)
    response = client.rerank(
        query=QUERY, documents=TEXTS, top_n=2, return_documents=True, model="any"
    )
    assert {r.index for r in response.results} == RELEVANT
    assert all(r.document.text == TEXTS[r.index] for r in response.results)
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert response.meta.api_version.version == "1"


def test_cohere_sdk_v2_client_scores_every_document(server: str) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=server)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=TEXTS)
    assert sorted(r.index for r in response.results) == list(range(len(TEXTS)))
    assert {r.index for r in response.results[:2]} == RELEVANT
    assert response.id


def test_cohere_sdk_raises_its_own_typed_errors_for_our_errors(server: str) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=server)
    with pytest.raises(BadRequestError) as empty:
        client.rerank(model="any", query=QUERY, documents=[])
    assert "list of documents must not be empty" in empty.value.body["message"]
    with pytest.raises(BadRequestError):
        client.rerank(model="any", query=QUERY, documents=TEXTS, top_n=0)
    with pytest.raises(UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server).rerank(
            model="any", query=QUERY, documents=TEXTS
        )


def test_langchain_cohere_rerank_orders_documents_through_our_base_url(server: str) -> None:
    compressor = CohereRerank(
        cohere_api_key=KEY, base_url=server, model="reranker-minilm-l6", top_n=2
    )
    documents = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(TEXTS)]
    kept = compressor.compress_documents(documents, QUERY)
    assert {doc.metadata["n"] for doc in kept} == RELEVANT
    assert all(0 < doc.metadata["relevance_score"] < 1 for doc in kept)


# ------------------------------------------------------------------ Elasticsearch, OpenSearch


def readme_blocks() -> list[list[str]]:
    """The README's fenced code blocks, as lists of lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def console_body(first_line: str) -> dict[str, Any]:
    """The JSON body of the README's console block that starts with ``first_line`` (up to
    the next request line of the same block, if any)."""
    for block in readme_blocks():
        if block and block[0].strip() == first_line:
            body = []
            for line in block[1:]:
                if re.match(r"^(GET|PUT|POST|DELETE) ", line):
                    break
                body.append(line)
            parsed: dict[str, Any] = json.loads("\n".join(body))
            return parsed
    raise AssertionError(f"no README block starts with {first_line!r}")


PLACEHOLDER = re.compile(r"\$\{(.*?)\}")


def substitute(template: str, params: dict[str, str], field: str) -> str:
    """Elasticsearch's ``ValidatingSubstitutor`` (x-pack/plugin/inference ``common/
    ValidatingSubstitutor.java``): ``${key}`` replaced where ``params`` has the key, then any
    placeholder left is an error."""
    replaced = PLACEHOLDER.sub(lambda m: params.get(m.group(1), m.group(0)), template)
    left = PLACEHOLDER.search(replaced)
    if left:
        raise ValueError(f"Found placeholder [{left.group(0)}] in field [{field}]")
    return replaced


def custom_request(
    settings: dict[str, Any], query: str, inputs: list[str], **task: Any
) -> tuple[dict[str, str], bytes]:
    """The headers and body Elasticsearch's ``custom`` service sends for a rerank
    (``custom/request/CustomRequest.java``): secret parameters as plain strings in headers;
    in the body every parameter as JSON (``JsonUtils.toJson``), ``input`` a JSON array of
    strings and ``query`` a JSON string (``RequestParameters``/``RerankParameters``), and
    ``top_n``/``return_documents`` only when the request has them."""
    secrets = settings.get("secret_parameters", {})
    headers = {"Content-Type": "application/json"}  # the default, replaced by the user's
    for name, value in settings.get("headers", {}).items():
        headers[name] = substitute(value, secrets, f"header.{name}")
    params = {name: json.dumps(value) for name, value in secrets.items()}
    params.update(input=json.dumps(inputs), query=json.dumps(query))
    params.update({name: json.dumps(value) for name, value in task.items() if value is not None})
    return headers, substitute(settings["request"], params, "request").encode("utf-8")


def extract(data: Any, path: str) -> Any:
    """Elasticsearch's ``MapPathExtractor`` (``common/MapPathExtractor.java``): ``$``, then
    ``.field`` and ``[*]`` steps; a missing field or a wrong type is an error."""
    if not path.startswith("$"):
        raise ValueError(f"Path [{path}] must start with a dollar sign ($)")

    def navigate(current: Any, rest: str) -> Any:
        if current is None or not rest:
            return current
        field = re.match(r"^\.([^.\[]+)(.*)", rest)
        if field:
            if not isinstance(current, dict) or current.get(field.group(1)) is None:
                raise ValueError(f"Unable to find field [{field.group(1)}] in map")
            return navigate(current[field.group(1)], field.group(2))
        wildcard = re.match(r"^\[\*\](.*)", rest)
        if wildcard and isinstance(current, list):
            found = (navigate(item, wildcard.group(1)) for item in current)
            return [item for item in found if item is not None]
        raise ValueError(f"Invalid path received [{rest}]")

    return navigate(data, path[1:])


def parse_rerank(answer: Any, parser: dict[str, str]) -> list[tuple[int, float]]:
    """``custom/response/RerankResponseParser.transform``: scores (numbers) and indices
    (integers) by their JSONPaths, in equal numbers."""
    scores = extract(answer, parser["relevance_score"])
    indices = extract(answer, parser["reranked_index"])
    assert isinstance(scores, list) and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
    )
    assert isinstance(indices, list) and all(isinstance(i, int) for i in indices)
    if len(indices) != len(scores):
        raise ValueError(f"The number of index fields [{len(indices)}] was not the same as the "
                         f"number of scores [{len(scores)}]")  # fmt: skip
    return list(zip(indices, scores, strict=True))


def es_url(settings: dict[str, Any], server: str) -> str:
    """The README's URL (``http://scorer:9280/...``, the Compose service) on our server."""
    return re.sub(r"^http://scorer:9280", server, settings["url"])


def test_elasticsearch_custom_service_request_is_answered_and_read_by_its_jsonpaths(
    server: str,
) -> None:
    endpoint = console_body("PUT _inference/rerank/reranker-custom")
    settings = endpoint["service_settings"]
    assert endpoint["service"] == "custom"
    settings["secret_parameters"] = {"api_key": KEY}
    parser = settings["response"]["json_parser"]
    assert parser == {
        "reranked_index": "$.results[*].index",
        "relevance_score": "$.results[*].relevance_score",
    }
    # the creation-time validation call (CustomServiceIntegrationValidator: a test query, one
    # input, top_n 1, return_documents true), then a search-time call as a
    # text_similarity_reranker makes it: every input, no top_n
    calls = [
        ("test query", ["how big"], {"top_n": 1, "return_documents": True}),
        (QUERY, TEXTS, {}),
    ]
    for query, inputs, task in calls:
        headers, body = custom_request(settings, query, inputs, **task)
        assert headers["Authorization"] == f"Bearer {KEY}"
        response = httpx.post(es_url(settings, server), content=body, headers=headers)
        assert response.status_code == 200, response.text
        ranked = parse_rerank(response.json(), parser)
        assert sorted(i for i, _ in ranked) == list(range(len(inputs)))  # every input, once
    assert {i for i, _ in ranked[:2]} == RELEVANT


def test_a_template_with_top_n_fails_in_elasticsearch_at_search_time() -> None:
    """Why the README says to leave ``${top_n}`` out: a search sends no top_n."""
    settings = {"request": '{"query": ${query}, "documents": ${input}, "top_n": ${top_n}}'}
    with pytest.raises(ValueError, match=r"\$\{top_n\}"):
        custom_request(settings, QUERY, TEXTS)


def hugging_face_answer(ranks: Any, count: int) -> list[tuple[int, float]]:
    """``huggingface/response/HuggingFaceRerankResponseEntity``: an array of objects with
    ``index``, ``score``/``relevance_score`` and ``text``/``document``; any other field
    fails the parse."""
    assert isinstance(ranks, list)
    parsed = []
    for rank in ranks:
        assert set(rank) <= {"index", "score", "relevance_score", "text", "document"}, rank
        parsed.append((int(rank["index"]), float(rank.get("score", rank.get("relevance_score")))))
    assert sorted(i for i, _ in parsed) == list(range(count))
    return parsed


@pytest.mark.parametrize(
    "entity",
    [
        # HuggingFaceRerankRequestEntity, older: texts / return_text
        {"texts": TEXTS, "query": QUERY, "return_text": True},
        # and newer: documents / return_documents / top_n (Elasticsearch cuts to top_n itself)
        {"documents": TEXTS, "query": QUERY, "return_documents": False, "top_n": 2},
    ],
    ids=["texts", "documents"],
)
def test_elasticsearch_hugging_face_service_requests_get_the_answer_it_parses(
    server: str, entity: dict[str, Any]
) -> None:
    endpoint = console_body("PUT _inference/rerank/reranker-tei")
    settings = endpoint["service_settings"]
    assert endpoint["service"] == "hugging_face"
    response = httpx.post(
        es_url(settings, server),
        content=json.dumps(entity).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200, response.text
    ranked = hugging_face_answer(response.json(), len(TEXTS))
    assert {i for i, _ in ranked[:2]} == RELEVANT


def test_the_retriever_example_names_the_endpoint_and_scores_its_whole_window() -> None:
    search = console_body("GET beir-scifact/_search")
    reranker = search["retriever"]["text_similarity_reranker"]
    assert reranker["inference_id"] == "reranker-custom"
    assert reranker["rank_window_size"] <= ProxySettings().max_window


def test_opensearch_connector_request_is_answered_in_cohere_shape(server: str) -> None:
    """The README's connector as ML Commons fills it: ``${parameters.documents}`` a JSON
    array, ``${parameters.query}`` inside quotes, ``top_n`` the number of documents (its cohere
    rerank pre-process function), the key from ``${credential.cohere_key}``."""
    connector = console_body("POST /_plugins/_ml/connectors/_create")
    action = connector["actions"][0]
    assert action["post_process_function"] == "connector.post_process.cohere.rerank"
    params = {
        "parameters.documents": json.dumps(TEXTS),
        "parameters.query": json.dumps(QUERY)[1:-1],
        "parameters.model": connector["parameters"]["model"],
        "parameters.top_n": str(len(TEXTS)),
        "credential.cohere_key": KEY,
    }
    body = substitute(action["request_body"], params, "request_body")
    headers = {k: substitute(v, params, k) for k, v in action["headers"].items()}
    response = httpx.post(
        re.sub(r"^http://scorer:9280", server, action["url"]),
        content=body.encode("utf-8"),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(TEXTS)))

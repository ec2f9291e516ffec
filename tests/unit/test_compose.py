"""``docker-compose.yml`` and the ``Dockerfile``, checked without Docker (none runs here): the
Compose file against the Compose Specification's JSON schema (vendored in
``tests/data/compose-spec/``), and both against the repository and the CLI they run."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reranker.cli.serve import serve_cmd

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
    return loaded


def validator() -> Any:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_the_vendored_schema_is_the_compose_specifications_draft_2019_09_schema() -> None:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    assert schema["title"] == "Compose Specification"
    assert type(validator()).__name__ == "Draft201909Validator"
    assert (SCHEMA.parent / "LICENSE").read_text("utf-8").lstrip().startswith("Apache License")


def test_docker_compose_yml_is_valid_against_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["scorer"].update(gpu_count=1),  # not a Compose key
        lambda c: c["services"]["scorer-gpu"]["deploy"]["resources"]["reservations"]["devices"][
            0
        ].pop("capabilities"),
        lambda c: c["services"]["scorer"].update(ports="9290:9280"),  # not a list
    ],
    ids=["unknown-key", "device-without-capabilities", "ports-not-a-list"],
)
def test_the_schema_check_catches_a_broken_compose_file(break_it: Any) -> None:
    broken = copy.deepcopy(compose())
    break_it(broken)
    assert list(validator().iter_errors(broken))


def test_compose_runs_the_proxy_and_a_scorer_only_service_built_from_the_dockerfile() -> None:
    services = compose()["services"]
    for name in ("proxy", "scorer"):
        service = services[name]
        assert service["build"] == "."
        assert (REPO / "Dockerfile").is_file()
        assert any(port.endswith(":9280") for port in service["ports"])
        assert "9280/_health" in " ".join(service["healthcheck"]["test"])
    assert services["scorer"]["command"][:2] == ["serve", "--scorer-only"]
    assert "--scorer-only" not in services["proxy"]["command"]
    assert services["proxy"]["environment"]["RERANKER_ES_URL"] == "http://elasticsearch:9200"
    assert "profiles" not in services["scorer"] and "profiles" not in services["proxy"]


def test_the_gpu_profile_gives_its_scorer_an_nvidia_gpu_and_the_gpu_build() -> None:
    service = compose()["services"]["scorer-gpu"]
    assert service["profiles"] == ["gpu"]
    assert service["build"]["args"]["GPU"] == "1"
    assert "--scorer-only" in service["command"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # it serves the fp16 variant the GPU build makes
    model = service["command"][service["command"].index("--model") + 1]
    assert f"Path('{Path(model).relative_to('/app')}')" in " ".join(dockerfile())


@pytest.mark.parametrize("service", ["proxy", "scorer", "scorer-gpu"])
def test_each_service_command_is_one_the_cli_accepts(service: str) -> None:
    command = compose()["services"][service]["command"]
    assert command[0] == "serve"
    context = serve_cmd.make_context("serve", list(command[1:]))  # raises on a bad option
    assert context.params["scorer_only"] is (True if "--scorer-only" in command else None)


def test_the_dockerfile_copies_only_what_exists_and_the_build_context_keeps() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [shlex.split(i)[1:-1] for i in dockerfile() if i.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    assert (REPO / "models" / "reranker-minilm-l6" / "reranker.json").is_file()


def test_the_image_runs_the_cli_on_the_port_compose_publishes() -> None:
    instructions = dockerfile()
    assert 'ENTRYPOINT ["reranker"]' in instructions
    assert any(i.startswith("ENV ") and "RERANKER_PROXY_PORT=9280" in i for i in instructions)
    assert any(i.startswith("ENV ") and "RERANKER_PROXY_HOST=0.0.0.0" in i for i in instructions)
    assert "EXPOSE 9280" in instructions
    # the GPU build's fp16 step calls what the export package provides
    from export.dequantize import fp16_from_int8

    assert callable(fp16_from_int8)
    assert any("fp16_from_int8(" in i and "ARG GPU" not in i for i in instructions)

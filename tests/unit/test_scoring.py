"""The cross-encoder Scorer on a real exported checkpoint (MiniLM body, fresh one-label head)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from reranker.errors import ModelError
from reranker.models import sha256_file
from reranker.rerank.scorer import Scorer, ScoreTimeout, longest_first


@pytest.fixture(scope="module")
def xenc_scorer(xenc_export_dir: Path) -> Scorer:
    return Scorer(xenc_export_dir, threads=2)


def _torch_logits(checkpoint: Path, pairs: list[tuple[str, str]], max_length: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), local_files_only=True
    ).eval()
    batch = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )
    with torch.inference_mode():
        result: np.ndarray = model(**batch).logits[:, 0].float().numpy()
    return result


def test_fp32_scores_equal_torch_logits_on_scifact_pairs(
    xenc_scorer: Scorer, xenc_checkpoint_dir: Path, scifact_pairs: list[tuple[str, str]]
) -> None:
    pairs = scifact_pairs[::10]  # 10 pairs, judged and unjudged, most truncated at 256 tokens
    expected = _torch_logits(xenc_checkpoint_dir, pairs, max_length=256)
    got = xenc_scorer.score(pairs)
    assert got.dtype == np.float32
    assert got.shape == (len(pairs),)
    assert np.abs(got - expected).max() <= 1e-4


def test_scores_come_back_in_caller_order_when_lengths_are_shuffled(
    xenc_scorer: Scorer, scifact_pairs: list[tuple[str, str]]
) -> None:
    rng = np.random.default_rng(3)
    pairs = [
        (q, p[: int(n)])
        for (q, p), n in zip(scifact_pairs[:12], rng.integers(10, 1000, 12), strict=True)
    ]
    together = xenc_scorer.score(pairs)
    alone = np.array([xenc_scorer.score([pair])[0] for pair in pairs])
    assert np.abs(together - alone).max() <= 1e-5
    assert len(set(np.round(together, 6).tolist())) > 8  # distinct scores, so order matters


def test_batches_are_length_sorted_and_within_token_and_size_budgets(
    xenc_export_dir: Path, scifact_pairs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = Scorer(xenc_export_dir, max_length=128, max_batch_tokens=512, max_batch_size=6)
    seen: list[tuple[int, int]] = []
    real_run = scorer._run

    def spy(encodings: Any, width: int, features: Any = None, heads: Any = ()) -> Any:
        seen.append((len(encodings), width))
        return real_run(encodings, width, features, heads)

    monkeypatch.setattr(scorer, "_run", spy)
    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 800, 30)
    pairs = [(q, p[: int(n)]) for (q, p), n in zip(scifact_pairs[:30], lengths, strict=True)]
    scorer.score(pairs)
    assert sum(rows for rows, _ in seen) == 30
    assert all(rows <= 6 and rows * width <= 512 for rows, width in seen)
    widths = [width for _, width in seen]
    assert widths == sorted(widths)
    assert scorer.last_stats.batches == len(seen)
    assert scorer.last_stats.padded_tokens == sum(rows * width for rows, width in seen)


@pytest.mark.parametrize("words", [(3, 5), (3, 200), (200, 3), (70, 90), (150, 150), (0, 300)])
def test_pair_truncation_equals_hf_longest_first(
    xenc_export_dir: Path, words: tuple[int, int]
) -> None:
    scorer = Scorer(xenc_export_dir, max_length=128)
    query = " ".join(f"query{i % 13}" for i in range(words[0]))
    passage = " ".join(f"passage{i % 17}" for i in range(words[1]))
    reference = Tokenizer.from_file(str(xenc_export_dir / "tokenizer.json"))
    reference.no_padding()
    reference.enable_truncation(128, strategy="longest_first")
    expected = reference.encode(query, passage)
    (got,), truncated = scorer._encode([(query, passage)])
    assert got.ids == expected.ids
    assert got.type_ids == expected.type_ids
    assert truncated == (1 if expected.overflowing else 0)


def test_longest_first_rule_keeps_budget_and_shortens_longer_side_first() -> None:
    for n1 in range(0, 40):
        for n2 in range(0, 40):
            k1, k2 = longest_first(n1, n2, 30)
            assert k1 <= n1 and k2 <= n2
            assert k1 + k2 == min(n1 + n2, 30)
            if n1 + n2 > 30 and n1 <= n2:
                assert k1 == min(n1, 15)  # the shorter side is cut only past half the budget


def test_sigmoid_scores_are_the_logistic_of_logits(
    xenc_scorer: Scorer, scifact_pairs: list[tuple[str, str]]
) -> None:
    pairs = scifact_pairs[:4]
    logits = xenc_scorer.score(pairs)
    probs = xenc_scorer.score(pairs, sigmoid=True)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    assert ((probs > 0) & (probs < 1)).all()


def test_empty_pairs_give_an_empty_float32_array(xenc_scorer: Scorer) -> None:
    scores = xenc_scorer.score([])
    assert scores.shape == (0,)
    assert scores.dtype == np.float32


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("q", "p"), ("q", 7)], r"pairs\[1\] passage is int"),
        ([(None, "p")], r"pairs\[0\] query is NoneType"),
        ([("q", "p"), "qp"], r"pairs\[1\] must be a \(query, passage\) pair"),
        ([("q", "p", "x")], r"pairs\[0\] must be a \(query, passage\) pair"),
        ("query passage", "not a string"),
    ],
)
def test_malformed_pairs_raise_type_error_naming_the_pair(
    xenc_scorer: Scorer, pairs: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        xenc_scorer.score(pairs)


def test_a_100k_character_passage_is_scored_quickly_and_counted_as_truncated(
    xenc_scorer: Scorer,
) -> None:
    long_passage = "Protein folding shapes enzyme function in the cell. " * 2000  # 104k chars
    started = time.perf_counter()
    scores = xenc_scorer.score([("protein folding", long_passage), ("a", "short passage")])
    assert time.perf_counter() - started < 10
    assert np.isfinite(scores).all()
    assert xenc_scorer.last_truncated == 1
    assert xenc_scorer.last_stats.tokens <= 256 + 6


def test_threads_sharing_one_scorer_get_the_same_scores_as_one_thread(
    xenc_scorer: Scorer, scifact_pairs: list[tuple[str, str]]
) -> None:
    short = [(q, p[:300]) for q, p in scifact_pairs[:12]]
    chunks = [short[i : i + 3] for i in range(0, 12, 3)]
    expected = [xenc_scorer.score(chunk) for chunk in chunks]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = xenc_scorer.score(chunks[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, atol=1e-5)


class _NanSession:
    def __init__(self, real: ort.InferenceSession) -> None:
        self._real = real

    def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        logits = self._real.run(outputs, feed)[0]
        logits[0, 0] = np.nan
        return [logits]


def test_non_finite_model_output_raises_model_error(
    xenc_export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = Scorer(xenc_export_dir)
    monkeypatch.setattr(scorer, "_session", _NanSession(scorer._session))
    with pytest.raises(ModelError, match="non-finite"):
        scorer.score([("q", "a passage"), ("q", "another passage")])


def test_a_deadline_already_past_scores_nothing(
    xenc_export_dir: Path, scifact_pairs: list[tuple[str, str]]
) -> None:
    scorer = Scorer(xenc_export_dir, max_batch_size=2)
    with pytest.raises(ScoreTimeout, match="after 0 of 6 pairs"):
        scorer.score(scifact_pairs[:6], deadline=time.monotonic() - 1)
    assert scorer.stats.pairs == 0  # not a batch was run


def test_a_deadline_passing_while_tokenising_stops_before_the_first_batch(
    xenc_export_dir: Path, scifact_pairs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = Scorer(xenc_export_dir, max_batch_size=2)
    deadline = time.monotonic() + 60
    encode = scorer._encode

    def slow_encode(items: list[tuple[str, str]]) -> Any:
        monkeypatch.setattr(time, "monotonic", lambda: deadline + 1)  # the clock ran past it
        return encode(items)

    monkeypatch.setattr(scorer, "_encode", slow_encode)
    with pytest.raises(ScoreTimeout, match="after 0 of 6 pairs"):
        scorer.score(scifact_pairs[:6], deadline=deadline)


def test_model_id_and_version_come_from_the_card(
    xenc_scorer: Scorer, xenc_export_dir: Path
) -> None:
    card = json.loads((xenc_export_dir / "reranker.json").read_text(encoding="utf-8"))
    assert xenc_scorer.model_id == "test-xenc" == card["name"]
    assert xenc_scorer.version == card["files"]["model.onnx"][:12]
    assert xenc_scorer.variant == "fp32"


def test_int8_variant_stays_close_to_fp32(
    xenc_scorer: Scorer, xenc_export_dir: Path, scifact_pairs: list[tuple[str, str]]
) -> None:
    int8 = Scorer(xenc_export_dir, variant="int8", threads=2)
    pairs = [(q, p[:600]) for q, p in scifact_pairs[::4]]  # 25 pairs, judged and unjudged
    fp32_scores = xenc_scorer.score(pairs)
    int8_scores = int8.score(pairs)
    assert int8.version != xenc_scorer.version
    assert np.corrcoef(fp32_scores, int8_scores)[0, 1] > 0.95


def test_requesting_an_absent_provider_falls_back_to_cpu_with_a_warning(
    xenc_export_dir: Path,
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here; the fallback cannot be observed")
    with pytest.warns(RuntimeWarning, match="falling back to CPUExecutionProvider"):
        scorer = Scorer(xenc_export_dir, providers=["CUDAExecutionProvider"])
    assert scorer.provider == "CPUExecutionProvider"
    assert np.isfinite(scorer.score([("q", "p")])).all()


def test_default_providers_use_cpu_when_cuda_is_absent(xenc_scorer: Scorer) -> None:
    expected = (
        "CUDAExecutionProvider"
        if "CUDAExecutionProvider" in ort.get_available_providers()
        else "CPUExecutionProvider"
    )
    assert xenc_scorer.provider in {expected, "CPUExecutionProvider"}


# ---------------------------------------------------------------------------- refusals


def _copy_folder(src: Path, dst: Path, *, link_onnx: bool = True) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        if link_onnx and path.suffix == ".onnx":
            (dst / path.name).symlink_to(path)
        else:
            shutil.copy2(path, dst / path.name)
    return dst


def test_a_folder_whose_config_does_not_match_the_card_is_refused(
    xenc_export_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_folder(xenc_export_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["hidden_dropout_prob"] = 0.5
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match=r"config\.json: sha256"):
        Scorer(folder)


def test_a_truncated_onnx_file_is_refused_by_its_hash(
    xenc_export_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_folder(xenc_export_dir, tmp_path / "m")
    (folder / "model.onnx").unlink()
    data = (xenc_export_dir / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"model\.onnx: sha256"):
        Scorer(folder)


def test_a_corrupt_onnx_file_matching_its_card_is_a_model_error_not_a_crash(
    xenc_export_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_folder(xenc_export_dir, tmp_path / "m")
    (folder / "model.onnx").unlink()
    data = (xenc_export_dir / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    card = json.loads((folder / "reranker.json").read_text(encoding="utf-8"))
    card["files"]["model.onnx"] = sha256_file(folder / "model.onnx")
    (folder / "reranker.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelError, match="cannot be loaded by ONNX Runtime"):
        Scorer(folder)


def test_a_folder_without_a_card_is_refused(xenc_export_dir: Path, tmp_path: Path) -> None:
    folder = _copy_folder(xenc_export_dir, tmp_path / "m")
    (folder / "reranker.json").unlink()
    with pytest.raises(ModelError, match=r"no reranker\.json"):
        Scorer(folder)


def test_an_encoder_folder_is_not_accepted_as_a_cross_encoder(
    minilm_encoder_dir: Path,
) -> None:
    with pytest.raises(ModelError, match=r"reranker\.json"):
        Scorer(minilm_encoder_dir)


def test_an_unexported_variant_is_refused_naming_the_ones_present(xenc_export_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"no 'bf16' variant \(it has: .*fp32"):
        Scorer(xenc_export_dir, variant="bf16")


def test_score_query_equals_score_on_the_pairs(
    xenc_scorer: Scorer, scifact_pairs: list[tuple[str, str]]
) -> None:
    query = scifact_pairs[0][0]
    passages = [p[:400] for _, p in scifact_pairs[:5]]
    np.testing.assert_allclose(
        xenc_scorer.score_query(query, passages),
        xenc_scorer.score([(query, p) for p in passages]),
        atol=1e-6,
    )
    with pytest.raises(TypeError, match="not a single string"):
        xenc_scorer.score_query(query, "one passage")

"""The GPU benchmark's CPU side: ``benchmarks/gpu.sh --allow-cpu`` end to end on a tiny run,
the clear failure without CUDA, IO binding against the plain run, the fp16 variant made from
the shipped int8 model, and the offline packaging of the GPU runtime (``gpu_runtime.py``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from reranker.rerank.scorer import Scorer
from tests.helpers import per_tensor_int8

REPO = Path(__file__).resolve().parents[2]
GPU_SH = REPO / "benchmarks" / "gpu.sh"
SHIPPED = REPO / "models" / "reranker-minilm-l6"
AWARE = REPO / "models" / "reranker-minilm-l6-aware"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

PAIRS = [
    ("what causes rain", "Rain forms when water vapour condenses into droplets heavy enough."),
    ("capital of France", "Paris is the capital and largest city of France."),
    ("vitamin D and bones", "Vitamin D increases calcium absorption; trials on bone density vary."),
    ("a", "b"),
]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_bench = _module("gpu_bench")
gpu_runtime = _module("gpu_runtime")


def _beir(folder: Path) -> Path:
    """A tiny BEIR folder: 12 passages, 3 test queries that BM25 finds candidates for."""
    topics = ["rain clouds water", "bone density vitamin", "heart disease risk", "gene expression"]
    docs = [
        {"_id": f"d{i}", "title": f"Study {i}", "text": f"{topics[i % 4]} study number {i} " * 3}
        for i in range(12)
    ]
    queries = [
        {"_id": "q1", "text": "does vitamin D change bone density"},
        {"_id": "q2", "text": "water in rain clouds"},
        {"_id": "q3", "text": "risk of heart disease"},
    ]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td0\t1\nq3\td2\t1\n"
    )
    return folder


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_GPU_")}
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# the script


@pytest.mark.slow
def test_gpu_sh_allow_cpu_runs_everything_and_writes_one_json(tmp_path: Path) -> None:
    data = _beir(tmp_path / "scifact")
    out = tmp_path / "out"
    tiny = ["--queries", "2", "--window", "4", "--batch-sizes", "2,4", "--sweep-windows", "1"]
    tiny += ["--scorer-pairs", "3", "--scorer-repeats", "1", "--threads", "1"]
    run = subprocess.run(
        ["bash", str(GPU_SH), str(out), "--allow-cpu", "--data", str(data), "--", *tiny],
        env=_env(RERANKER_GPU_WORK=str(tmp_path / "work")),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json"]
    report = json.loads((out / "gpu.json").read_text())
    assert report["ok"] is True
    assert report["schema"] == gpu_bench.SCHEMA
    assert report["provider"] == "CPUExecutionProvider"
    assert report["device"]["name"]
    assert report["variant"] == "fp16" and report["io_binding"] is True
    assert "dequantised" in report["model"]["fp16"]
    assert report["versions"]["onnxruntime"] == ort.__version__
    assert report["data"]["queries"] == 2 and report["data"]["window"] == 4
    assert "BM25" in report["data"]["first_stage"]
    window = report["window"]
    for key in ("p50_ms", "p95_ms", "p99_ms", "pairs_per_s", "batch_size", "meets_target"):
        assert key in window
    assert window["windows"] == 2
    assert window["pairs"] == round(report["data"]["mean_window"] * 2) <= 8
    assert 0 < window["p50_ms"] <= window["p95_ms"] <= window["max_ms"]
    assert [row["batch_size"] for row in window["sweep"]] == [2, 4]
    assert window["without_io_binding"]["windows"] == 2
    assert window["breakdown"]["tokenize_p50_ms"] > 0
    assert window["target_p50_ms"] == 10.0
    scorer_bench = report["bench_scorer"]
    assert scorer_bench["model"]["torch"] == "not run (--no-torch)"
    assert scorer_bench["backends"]["ort-fp32"]["pairs_per_s"] > 0
    assert report["parity"]["max_abs_diff_io_binding_vs_plain"] == 0.0
    assert report["parity"]["max_abs_diff_fp16_vs_fp32_cpu"] < 0.05
    assert any("not a GPU result" in note for note in report["notes"])
    assert "Running on the CPU (--allow-cpu)" in run.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_sh_without_cuda_says_so_and_exits_3(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(GPU_SH), str(tmp_path / "out"), "--data", str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3
    assert "CUDA requested" in run.stderr and "--allow-cpu" in run.stderr


def test_gpu_sh_refuses_bad_usage(tmp_path: Path) -> None:
    for args in ([], [str(tmp_path / "a"), str(tmp_path / "b")], [str(tmp_path), "--bogus"]):
        run = subprocess.run(
            ["bash", str(GPU_SH), *args], env=_env(), capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 2, args
        assert "OUT_DIR" in run.stderr


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_gpu_bench_without_cuda_provider_exits_3_with_a_json(tmp_path: Path) -> None:
    data = _beir(tmp_path / "scifact")
    code = gpu_bench.main(["--out", str(tmp_path / "out"), "--data", str(data)])
    assert code == gpu_bench.EXIT_NO_CUDA
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert report["ok"] is False
    assert "CUDAExecutionProvider" in report["error"] and "--allow-cpu" in report["error"]


@pytest.mark.slow
def test_gpu_bench_cuda_that_does_not_start_is_exit_3_or_the_cpu_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as on a GPU machine whose onnxruntime lists CUDA but cannot load it (libraries missing)
    monkeypatch.setattr(gpu_bench, "check_cuda", lambda allow_cpu: gpu_bench.CUDA)
    monkeypatch.setattr(gpu_bench, "gpu_info", lambda: {"name": "pretend GPU"})
    data = _beir(tmp_path / "scifact")
    work = tmp_path / "work"
    tiny = ["--data", str(data), "--work", str(work), "--skip-scorer-bench", "--queries", "1"]
    tiny += ["--window", "2", "--batch-sizes", "2", "--sweep-windows", "1"]
    assert gpu_bench.main(["--out", str(tmp_path / "a"), *tiny]) == gpu_bench.EXIT_NO_CUDA
    report = json.loads((tmp_path / "a" / "gpu.json").read_text())
    assert "did not start" in report["error"]
    assert gpu_bench.main(["--out", str(tmp_path / "b"), *tiny, "--allow-cpu"]) == 0
    report = json.loads((tmp_path / "b" / "gpu.json").read_text())
    assert report["ok"] and report["provider"] == "CPUExecutionProvider"
    assert report["device"] == {"name": "CPU", "gpu": {"name": "pretend GPU"}}


def test_gpu_bench_environment_flag_allows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_GPU_ALLOW_CPU", "1")
    assert gpu_bench.parse_args(["--out", "x"]).allow_cpu is True
    monkeypatch.setenv("RERANKER_GPU_ALLOW_CPU", "0")
    assert gpu_bench.parse_args(["--out", "x"]).allow_cpu is False


def test_percentiles_match_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 50, 95, 99, 100):
        assert gpu_bench.percentile(values, q) == pytest.approx(np.percentile(values, q))
    summary = gpu_bench.latency_summary([0.001, 0.002, 0.003], pairs=300)
    assert summary["p50_ms"] == pytest.approx(2.0)
    assert summary["pairs_per_s"] == pytest.approx(50_000.0)
    with pytest.raises(ValueError):
        gpu_bench.percentile([], 50)


def test_bench_scorer_no_torch_needs_a_model() -> None:
    from reranker.cli.bench import scorer_cmd

    result = CliRunner().invoke(scorer_cmd, ["--no-torch", "--dataset", str(REPO)])
    assert result.exit_code != 0


# --------------------------------------------------------------------------------------------
# IO binding and the fp16 variant


@pytest.mark.parametrize("model", [SHIPPED, AWARE], ids=["plain", "first-stage-aware"])
def test_io_binding_on_cpu_gives_the_plain_scores(model: Path) -> None:
    plain = Scorer(model, variant="int8", providers=["CPUExecutionProvider"], max_batch_size=2)
    bound = Scorer(
        model, variant="int8", providers=["CPUExecutionProvider"], max_batch_size=2, io_binding=True
    )
    assert bound.io_binding and not plain.io_binding
    features = None
    if plain.feature_names:
        features = np.random.default_rng(0).random((len(PAIRS), len(plain.feature_names)))
    want = plain.score(PAIRS, features=features)
    got = bound.score(PAIRS, features=features)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_fp16_from_int8_makes_a_loadable_folder_close_to_the_int8_model(tmp_path: Path) -> None:
    import onnx

    from export.dequantize import QUANTIZED_OPS, fp16_from_int8

    out = fp16_from_int8(SHIPPED, tmp_path / "fp16")
    card = json.loads((out / "reranker.json").read_text())
    assert set(card["variants"]) == {"fp32", "fp16"}
    assert card["variants"]["fp32"]["rewritten"]["matmuls"] == 38
    assert card["source"]["int8_model"] == str(SHIPPED)
    for name in ("model.onnx", "model.fp16.onnx"):
        ops = {n.op_type for n in onnx.load(str(out / name)).graph.node}
        assert not ops & QUANTIZED_OPS
    fused = {n.op_type for n in onnx.load(str(out / "model.fp16.onnx")).graph.node}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= fused
    int8 = Scorer(SHIPPED, variant="int8").score(PAIRS)
    fp32 = Scorer(out, variant="fp32").score(PAIRS)
    fp16 = Scorer(out, variant="fp16").score(PAIRS)
    # the fp32 graph drops only the activations' int8 rounding; fp16 only adds its own
    assert np.abs(fp32 - int8).max() < 0.5
    assert np.abs(fp16 - fp32).max() < 0.02


def test_a_per_token_int8_graph_dequantises_to_the_same_fp32_model(tmp_path: Path) -> None:
    """export/rowwise_int8.py changes only how activations are quantised: undoing the
    quantisation of either graph gives the same fp32 weights, hence the same scores."""
    import onnx
    import onnxruntime as ort

    from export.dequantize import QUANTIZED_OPS, dequantize_graph
    from export.rowwise_int8 import rowwise_int8

    per_tensor = per_tensor_int8(SHIPPED, tmp_path / "per-tensor.onnx")
    rowwise_int8(per_tensor, tmp_path / "rowwise.onnx")
    graphs = {}
    for name, source in (("per-tensor", per_tensor), ("per-token", tmp_path / "rowwise.onnx")):
        graph, counts = dequantize_graph(onnx.load(str(source)))
        assert counts["matmuls"] == 38
        assert not {n.op_type for n in graph.graph.node} & QUANTIZED_OPS
        onnx.save(graph, str(tmp_path / f"{name}.fp32.onnx"))
        graphs[name] = ort.InferenceSession(
            str(tmp_path / f"{name}.fp32.onnx"), providers=["CPUExecutionProvider"]
        )
    feed = {
        "input_ids": np.array([[101, 2054, 2003, 1037, 3231, 102, 2009, 102]], dtype=np.int64),
        "attention_mask": np.ones((1, 8), dtype=np.int64),
        "token_type_ids": np.array([[0, 0, 0, 0, 0, 0, 1, 1]], dtype=np.int64),
    }
    per_tensor, per_token = (graphs[k].run(None, feed)[0] for k in ("per-tensor", "per-token"))
    np.testing.assert_allclose(per_token, per_tensor, atol=1e-5)


def test_dequantize_refuses_a_graph_it_cannot_rewrite() -> None:
    from onnx import TensorProto, helper

    from export.dequantize import dequantize_graph
    from reranker.errors import ModelError

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.UINT8, [2, 2]) for n in ("a", "b")]
        + [helper.make_tensor_value_info(n, TensorProto.UINT8, []) for n in ("za", "zb")],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 2])],
    )
    with pytest.raises(ModelError, match="not dynamically quantised"):
        dequantize_graph(helper.make_model(graph))


# --------------------------------------------------------------------------------------------
# the runtime's packaging


def _fatbin(entries: list[tuple[int, bytes]]) -> bytes:
    """A fat binary: 16-byte header, then per entry a 64-byte header (arch at +28) + payload."""
    body = b""
    for arch, payload in entries:
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, 2, 0x101, 64, len(payload))
        struct.pack_into("<I", header, 28, arch)
        body += bytes(header) + payload
    return struct.pack("<IHHQ", gpu_runtime.FATBIN_MAGIC, 1, 16, len(body)) + body


def test_slim_fatbins_keeps_only_the_wanted_architecture() -> None:
    first = _fatbin([(80, b"A" * 32), (90, b"B" * 40), (120, b"C" * 24)])
    second = _fatbin([(75, b"D" * 16)])
    section = bytearray(first + bytes(8) + second)
    stats = gpu_runtime.slim_fatbins(memoryview(section), [90])
    assert stats["fatbins"] == 2 and stats["untouched"] == 1
    assert stats["dropped"] == 2 and stats["kept"] == 2
    assert len(section) == len(first) + 8 + len(second)  # nothing moves in the file
    (fat_size,) = struct.unpack_from("<Q", section, 8)
    assert fat_size == 64 + 40
    (arch,) = struct.unpack_from("<I", section, 16 + 28)
    assert arch == 90 and bytes(section[16 + 64 : 16 + 104]) == b"B" * 40
    assert not any(section[16 + 104 : len(first)])  # the dropped cubins are zeros
    assert bytes(section[len(first) + 8 :]) == second


def test_elf_section_reads_a_real_library() -> None:
    library = next((Path(ort.__file__).parent / "capi").glob("onnxruntime_pybind11_state*.so"))
    data = library.read_bytes()
    text = gpu_runtime.elf_section(data, ".text")
    assert text is not None and 0 < text[0] < len(data) and text[1] > 1000
    assert gpu_runtime.elf_section(data, ".nv_no_such_section") is None
    with pytest.raises(ValueError):
        gpu_runtime.elf_section(b"not an elf file at all..........", ".text")


def _fake_wheel(folder: Path) -> Path:
    wheel = folder / "onnxruntime_gpu-9.9.9-cp312-cp312-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("onnxruntime/__init__.py", "__version__ = '9.9.9'\n")
        zf.writestr("onnxruntime/capi/libonnxruntime.so.9.9.9", b"\0" * 1000)
        zf.writestr("onnxruntime/capi/libonnxruntime_providers_tensorrt.so", b"\0" * 100)
        zf.writestr("onnxruntime/capi/onnxruntime_pybind11_state.so", os.urandom(3000))
        zf.writestr("onnxruntime_gpu-9.9.9.dist-info/METADATA", "Name: onnxruntime-gpu\n")
    return wheel


def test_runtime_parts_round_trip_and_missing_parts_are_named(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path)
    parts = tmp_path / "parts"
    argv = ["prepare", "--out", str(parts), "--wheel", str(wheel), "--version", "9.9.9"]
    assert gpu_runtime.main([*argv, "--part-mb", str(1000 / (1 << 20))]) == 0
    manifest = json.loads((parts / "manifest.json").read_text())
    assert len(manifest["parts"]) >= 2
    assert sorted(manifest["dropped"]) == [
        "onnxruntime/capi/libonnxruntime.so.9.9.9",
        "onnxruntime/capi/libonnxruntime_providers_tensorrt.so",
    ]
    site = tmp_path / "site"
    assert gpu_runtime.main(["install", "--from", str(parts), "--target", str(site)]) == 0
    assert (site / "onnxruntime" / "__init__.py").read_text() == "__version__ = '9.9.9'\n"
    assert (site / "onnxruntime_gpu-9.9.9.dist-info" / "METADATA").is_file()
    assert not (site / "onnxruntime" / "capi" / "libonnxruntime.so.9.9.9").exists()
    with zipfile.ZipFile(wheel) as zf:
        kept = zf.read("onnxruntime/capi/onnxruntime_pybind11_state.so")
    assert (site / "onnxruntime" / "capi" / "onnxruntime_pybind11_state.so").read_bytes() == kept

    last = parts / manifest["parts"][-1]["file"]
    last.write_bytes(last.read_bytes()[:-1] + b"?")
    with pytest.raises(gpu_runtime.PartsError, match="damaged"):
        gpu_runtime.install(parts, tmp_path / "site2")
    last.unlink()
    with pytest.raises(gpu_runtime.PartsError, match=f"missing: {last.name}"):
        gpu_runtime.install(parts, tmp_path / "site3")
    code = gpu_runtime.main(["install", "--from", str(parts), "--target", str(tmp_path / "s")])
    assert code == gpu_runtime.EXIT_PARTS


def test_runtime_install_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(gpu_runtime.PartsError, match="holds no"):
        gpu_runtime.install(tmp_path, tmp_path / "site")

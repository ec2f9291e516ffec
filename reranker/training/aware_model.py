"""The first-stage-aware cross-encoder as a torch module: an encoder whose pooled output is
scored together with the first stage's features, optional signal heads; saving and loading it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from reranker.errors import ModelError
from reranker.rerank.features import (
    FEATURE_NAMES,
    NORMALIZATION,
)
from reranker.training.toolbox import (
    quiet_transformers,
)

AWARE_CONFIG_FILE = "first_stage_aware.json"
HEAD_FILE = "head.safetensors"


# --------------------------------------------------------------------------------------------
# the model


class FirstStageAwareModel(torch.nn.Module):
    """``first_stage · w + head(mean-pooled encoder output)``; see the module docstring.

    With ``signal_heads`` (names from :data:`~reranker.rerank.heads.SIGNAL_HEADS`) the same pooled
    output also feeds one linear head per signal, squashed into [0, 1] like the signal features
    the blend reads (:mod:`reranker.training.heads`): one shared encoder, one head per task."""

    def __init__(
        self, encoder: Any, *, initial_scale: float = 5.0, signal_heads: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        start = torch.zeros(len(FEATURE_NAMES))
        start[FEATURE_NAMES.index("fused")] = initial_scale
        self.feature_weights = torch.nn.Parameter(start)
        self.signal_heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden, 1) for name in signal_heads}
        )

    @property
    def signal_head_names(self) -> tuple[str, ...]:
        return tuple(self.signal_heads.keys())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        first_stage: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of shape ``(batch, 1)``."""
        return self.forward_heads(input_ids, attention_mask, token_type_ids, first_stage)[0]

    def forward_heads(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        first_stage: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Relevance logits ``(batch, 1)`` and each signal head's prediction ``(batch, 1)``."""
        if first_stage is None:
            raise ModelError("a first-stage-aware model needs the first_stage input")
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)).float()
        correction = self.head(pooled).squeeze(-1)
        # a Mul + ReduceSum, not a MatMul: dynamic int8 quantisation leaves it exact
        prior = (first_stage.float() * self.feature_weights).sum(dim=-1)
        logits: torch.Tensor = (prior + correction).unsqueeze(-1)
        signals = {name: torch.sigmoid(head(pooled)) for name, head in self.signal_heads.items()}
        return logits, signals


def is_aware_checkpoint(folder: Path) -> bool:
    return (Path(folder) / AWARE_CONFIG_FILE).is_file()


def save_aware(model: FirstStageAwareModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.encoder.save_pretrained(out)
        tokenizer.save_pretrained(out)
    save_file(
        {
            "head.weight": model.head.weight.detach().cpu().contiguous(),
            "head.bias": model.head.bias.detach().cpu().contiguous(),
            "feature_weights": model.feature_weights.detach().cpu().contiguous(),
            **{
                key: tensor.detach().cpu().contiguous()
                for key, tensor in model.signal_heads.state_dict(prefix="signal_heads.").items()
            },
        },
        str(out / HEAD_FILE),
    )
    (out / AWARE_CONFIG_FILE).write_text(
        json.dumps(
            {
                "kind": "first-stage-aware-cross-encoder",
                "features": list(FEATURE_NAMES),
                "normalization": NORMALIZATION,
                "pooling": "mean",
                "feature_weights": [float(v) for v in model.feature_weights.detach().cpu()],
                "signal_heads": list(model.signal_head_names),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )


def load_aware(
    folder: Path, *, attn_implementation: str | None = "eager"
) -> tuple[FirstStageAwareModel, PreTrainedTokenizerBase]:
    """A saved first-stage-aware model (encoder, tokenizer, head and feature weights)."""
    folder = Path(folder)
    if not is_aware_checkpoint(folder):
        raise ModelError(f"{folder}: not a first-stage-aware checkpoint ({AWARE_CONFIG_FILE})")
    config = json.loads((folder / AWARE_CONFIG_FILE).read_text(encoding="utf-8"))
    if tuple(config.get("features", ())) != FEATURE_NAMES:
        raise ModelError(
            f"{folder}: features {config.get('features')} differ from {list(FEATURE_NAMES)}"
        )
    heads = config.get("signal_heads", [])
    if not isinstance(heads, list) or not all(isinstance(h, str) for h in heads):
        raise ModelError(f"{folder}: signal_heads must be a list of names, got {heads!r}")
    tokenizer, encoder = load_pretrained_encoder(folder, attn_implementation)
    model = FirstStageAwareModel(encoder, signal_heads=heads)
    state = load_file(str(folder / HEAD_FILE))
    try:
        model.load_state_dict(state, strict=False)  # the encoder came with load_pretrained_encoder
        missing = {k for k, _ in model.named_parameters() if not k.startswith("encoder.")}
        if missing - set(state):
            raise KeyError(", ".join(sorted(missing - set(state))))
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"{folder}/{HEAD_FILE}: missing or misshapen head weights: {exc}") from exc
    return model, tokenizer


def load_pretrained_encoder(folder: Path, attn: str | None) -> tuple[PreTrainedTokenizerBase, Any]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        overrides: dict[str, Any] = {"attn_implementation": attn} if attn else {}
        with quiet_transformers():
            encoder = AutoModel.from_pretrained(
                str(folder), local_files_only=True, add_pooling_layer=False, **overrides
            )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(f"{folder}: cannot load the encoder: {exc}") from exc
    return tokenizer, encoder

"""Hugging Face checkpoints: `config.json` + `model.safetensors` in DeepseekV3 naming.

`save_hf` writes what transformers' DeepseekV3ForCausalLM loads (no remote code): expert
weights per expert (`mlp.experts.{i}.gate_proj.weight`, as DeepSeek's release stores them;
transformers fuses them on load) and MTP modules as extra layers
`model.layers.{num_hidden_layers + k}.*` with their own copies of the shared embedding and
head (`embed_tokens`, `shared_head.head`), the layout of DeepSeek-V3's release. transformers
ignores those extra layers; `load_hf` reads them back into our MTP modules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import DeepSeekV3

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def to_hf_state_dict(model: DeepSeekV3, dtype: torch.dtype | None = None,
                     keep: Callable[[str], bool] | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our parameter names -> HF DeepseekV3 names (detached, contiguous, unshared copies).
    `keep(our_name)` selects what to export (a pipeline rank exports the stage it owns; the
    MTP modules' copies of the embedding and head go with `mtp.{k}`); `state` replaces
    `model.state_dict()` (an expert-parallel rank's, with experts numbered globally)."""
    return {k: _export_tensor(k, v, dtype) for k, v in hf_tensors(model, keep, state).items()}


def hf_tensors(model: DeepSeekV3, keep: Callable[[str], bool] | None = None,
               state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's own tensors under their HF names, the MTP modules' copies of the shared
    embedding and head included (no copies made: also what a meta-device model's checkpoint
    would hold, names and shapes)."""
    n = model.config.num_hidden_layers
    wanted = keep or (lambda name: True)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in (model.state_dict() if state is None else state).items():
        if not wanted(name):
            continue
        if name.startswith("lm_head."):
            key = name
        elif name.startswith("mtp."):
            k, rest = name[len("mtp."):].split(".", 1)
            key = f"model.layers.{n + int(k)}.{rest}"
        else:
            key = f"model.{name}"
        out[key] = tensor
    for k, module in enumerate(model.mtp):
        built = next(module.parameters(), None) is not None  # not a pipeline rank's stand-in
        if built and wanted(f"mtp.{k}"):
            out[f"model.layers.{n + k}.embed_tokens.weight"] = model.embed_tokens.weight
            out[f"model.layers.{n + k}.shared_head.head.weight"] = model.lm_head.weight
    return out


def _export_tensor(key: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    # The router bias stays fp32 (transformers keeps it fp32 too): ±γ steps vanish in bf16.
    if dtype is not None and t.is_floating_point() and not key.endswith("e_score_correction_bias"):
        t = t.to(dtype)
    return t.detach().to("cpu").contiguous().clone()


def save_hf(model: DeepSeekV3, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors into `directory` (created if missing)."""
    directory = Path(directory)
    write_hf_config(model.config, directory, dtype)
    save_file(to_hf_state_dict(model, dtype), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def write_hf_config(config: ModelConfig, directory: Path, dtype: torch.dtype | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    hf = config.to_hf_dict()
    if dtype is not None:
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / CONFIG_NAME).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")


def save_hf_shard(model: DeepSeekV3, directory: Path, index: int, count: int, keep: Callable[[str], bool],
                  state: dict[str, torch.Tensor] | None = None) -> tuple[str, dict[str, int]]:
    """Write shard `index` of `count` (the parameters `keep` selects, see to_hf_state_dict)
    as `model-0000i-of-0000n.safetensors`; returns its file name and {HF key: bytes}."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
    tensors = to_hf_state_dict(model, keep=keep, state=state)
    save_file(tensors, str(directory / name), metadata={"format": "pt"})
    return name, {key: t.numel() * t.element_size() for key, t in tensors.items()}


def write_hf_index(directory: Path, shards: list[tuple[str, dict[str, int]]]) -> None:
    """The `model.safetensors.index.json` transformers reads to load a sharded checkpoint."""
    weight_map = {key: name for name, sizes in shards for key in sizes}
    total = sum(size for _, sizes in shards for size in sizes.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / f"{WEIGHTS_NAME}.index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_hf(directory: str | Path, *, device: torch.device | str = "cpu",
            dtype: torch.dtype | None = None) -> DeepSeekV3:
    """Build a DeepSeekV3 from a DeepseekV3 HF checkpoint directory (ours or transformers')."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: a HF checkpoint directory needs config.json.")
    hf = json.loads(config_path.read_text())
    if hf.get("model_type", "deepseek_v3") != "deepseek_v3":
        raise ValueError(f"{config_path}: model_type is {hf.get('model_type')!r}, expected 'deepseek_v3'.")
    config = ModelConfig.from_hf_dict(hf)
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}.")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(load_file(str(shard)))
    model = DeepSeekV3(config)
    state = from_hf_state_dict(tensors, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (showing up to 5 each).")
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def from_hf_state_dict(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names -> ours; splits transformers' fused expert tensors; drops shared-weight copies."""
    n = config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        m = _LAYER.match(key)
        if m is None:
            out[key.removeprefix("model.")] = t
            continue
        idx, rest = int(m.group(1)), m.group(2)
        if idx >= n + config.num_nextn_predict_layers:
            continue  # MTP layers beyond what this config uses
        if idx >= n and rest in ("embed_tokens.weight", "shared_head.head.weight"):
            continue  # copies of the shared embedding / head
        prefix = f"layers.{idx}" if idx < n else f"mtp.{idx - n}"
        out.update(_split_fused_experts(prefix, rest, t, config))
    return out


def _split_fused_experts(prefix: str, rest: str, t: torch.Tensor, config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' save_pretrained fuses experts: gate_up_proj (E, 2I, d), down_proj (E, d, I)."""
    inter = config.moe_intermediate_size
    if rest == "mlp.experts.gate_up_proj":
        return {f"{prefix}.mlp.experts.{i}.{name}.weight": w.contiguous()
                for i in range(t.shape[0]) for name, w in zip(("gate_proj", "up_proj"), t[i].split(inter))}
    if rest == "mlp.experts.down_proj":
        return {f"{prefix}.mlp.experts.{i}.down_proj.weight": t[i].contiguous() for i in range(t.shape[0])}
    return {f"{prefix}.{rest}": t}

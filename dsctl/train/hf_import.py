"""Import a Hugging Face DeepSeek-V3-architecture directory as a dsctl checkpoint.

    report = import_hf(Path("Moonlight-16B-A3B"), Path("out"))   # writes out/ as a checkpoint

The source is what transformers or DeepSeek publish: `config.json` with `model_type =
"deepseek_v3"`, safetensors weights (one file or shards with an index), and the
tokenizer's HF files. Weights are streamed tensor by tensor, one input shard at a time
into one output shard, so memory holds one shard, never two copies of the model:

- FP8 weights as DeepSeek ships them (E4M3 with a `weight_scale_inv` per 128×128 block,
  `quantization_config.quant_method = "fp8"`) are dequantized with the project's FP8
  reference (`fp8.reference.weight_dequant`: value × its block's scale) into the
  checkpoint's dtype;
- transformers' fused expert tensors (`mlp.experts.gate_up_proj`, `down_proj`) are split
  into the per-expert layout dsctl writes (`mlp.experts.{i}.gate_proj.weight`, …);
- everything else keeps its name (dsctl's checkpoints use the HF DeepseekV3 names).

The result is checked against the model the config describes (built on the meta device:
names and shapes, no memory) before anything is published. Config fields the model does
not implement are refused with the field and its value (`refusals`); fields that do not
change the network (`IGNORED_KEYS`) are dropped and listed in the report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsctl.errors import UserError
from dsctl.train.artifacts import HF_TOKENIZER_FILES

SCALE_SUFFIX = "_scale_inv"
IGNORED_KEYS = ("quantization_config", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache",
                "_name_or_path", "aux_loss_alpha", "seq_aux", "ep_size", "pretraining_tp", "output_router_logits",
                "return_dict", "output_hidden_states", "output_attentions", "id2label", "label2id", "problem_type",
                "chunk_size_feed_forward", "is_encoder_decoder", "head_dim", "qk_head_dim")
"""config.json keys that do not shape the network dsctl builds (runtime switches,
bookkeeping, the quantization that import undoes, remote-code pointers dsctl never runs)."""
REQUIRED_VALUES = {"moe_layer_freq": 1}
"""Keys whose other values would describe a network dsctl's model does not build."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ImportReport:
    config: Any
    """The ModelConfig the checkpoint was read as."""
    tensors: int = 0
    dequantized: int = 0
    """FP8 weights dequantized with their block scales."""
    split_fused: int = 0
    """transformers' fused expert tensors split per expert."""
    ignored_keys: list[str] = field(default_factory=list)
    dtype: str = "float32"

    def summary(self) -> dict[str, Any]:
        total, active = self.config.num_parameters()
        return {"params": total, "active_params": active, "tensors": self.tensors, "dequantized_fp8": self.dequantized,
                "split_fused_experts": self.split_fused, "dtype": self.dtype,
                "layers": self.config.num_hidden_layers, "vocab_size": self.config.vocab_size}


def read_config(src: Path) -> tuple[Any, dict[str, Any], list[str]]:
    """(ModelConfig, the quantization config or {}, ignored keys) of `src`/config.json;
    UserError naming the field and value the model does not implement."""
    from dsctl.model.config import ModelConfig

    path = src / "config.json"
    if not path.is_file():
        raise UserError(f"{src}: no config.json — `dsctl import` takes a Hugging Face model directory")
    hf = json.loads(path.read_text())
    if hf.get("model_type") != "deepseek_v3":
        raise UserError(f"{path}: model_type is {hf.get('model_type')!r}; "
                        "dsctl imports the deepseek_v3 architecture only")
    for key, expected in REQUIRED_VALUES.items():
        if key in hf and hf[key] != expected:
            raise UserError(f"{path}: {key} = {hf[key]!r} is not implemented "
                            f"(dsctl's model builds {key} = {expected!r})")
    quant = hf.get("quantization_config") or {}
    if quant:
        block = quant.get("weight_block_size")
        if (quant.get("quant_method") != "fp8" or quant.get("fmt", "e4m3") != "e4m3"
                or (block and list(block) != [128, 128])):
            raise UserError(f"{path}: quantization_config {quant} is not implemented: dsctl dequantizes DeepSeek's "
                            "FP8 (quant_method 'fp8', fmt 'e4m3', weight_block_size [128, 128]) only")
    ignored = sorted(k for k in hf if k in IGNORED_KEYS)
    shaping = {k: v for k, v in hf.items() if k not in IGNORED_KEYS}
    try:
        config = ModelConfig.from_hf_dict(shaping)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: {exc}") from None
    if config.extra:
        # carried through to the exported config.json, never read by the model: say so
        ignored += sorted(config.extra)
    return config, quant, ignored


def import_hf(src: Path, out: Path, dtype: str = "auto", progress: Any = None) -> ImportReport:
    """Write `src` (a HF DeepseekV3 directory) into `out` as a dsctl checkpoint: config.json,
    safetensors shards (+ index), tokenizer files. `dtype` "auto" keeps the checkpoint's
    own (`torch_dtype`; FP8 weights are dequantized into it, bfloat16 if it names none)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dsctl.model.hf import write_hf_config, write_hf_index

    config, quant, ignored = read_config(src)
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src}: no tokenizer.json — dsctl uses an imported model's own (fast) tokenizer")
    target = _target_dtype(src, dtype, bool(quant))
    inputs = sorted(src.glob("*.safetensors"))
    if not inputs:
        raise UserError(f"{src}: no *.safetensors weights (convert .bin checkpoints with transformers first)")
    if config.num_nextn_predict_layers and not _has_layer(inputs, config.num_hidden_layers):
        # transformers saves no MTP modules (it does not run them): import the main model alone
        config = dataclasses.replace(config, num_nextn_predict_layers=0)
    expected = _expected_shapes(config)
    report = ImportReport(config, ignored_keys=ignored, dtype=str(target).removeprefix("torch."))
    out.mkdir(parents=True, exist_ok=True)
    shards, seen = [], {}
    for i, path in enumerate(inputs):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith(SCALE_SUFFIX):
                    continue  # read with its weight
                for name, t in _converted(f, key, config, report).items():
                    cast = t.is_floating_point() and not name.endswith("e_score_correction_bias")
                    tensors[name] = t.to(target) if cast else t
        _check_against(tensors, expected, seen, path)
        name = f"model-{i + 1:05d}-of-{len(inputs):05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        shards.append((name, {k: t.numel() * t.element_size() for k, t in tensors.items()}))
        report.tensors += len(tensors)
        del tensors
        if progress is not None:
            progress(i + 1, len(inputs))
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise UserError(f"{src}: weights missing for the model its config describes: {missing[:5]}"
                        f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    write_hf_index(out, shards)
    write_hf_config(config, out, target)
    # only the fast tokenizer's files: a sentencepiece tokenizer.model beside them is the
    # model's own, not dsctl's, and would be read as dsctl's
    for name in HF_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    return report


def _has_layer(files: list[Path], index: int) -> bool:
    from safetensors import safe_open

    prefix = f"model.layers.{index}."
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            if any(k.startswith(prefix) for k in f.keys()):
                return True
    return False


def _target_dtype(src: Path, dtype: str, quantized: bool) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise UserError(f"dtype must be auto or one of {', '.join(DTYPES)}; got {dtype!r}")
        return DTYPES[dtype]
    hf = json.loads((src / "config.json").read_text())
    named = hf.get("torch_dtype") or hf.get("dtype")
    if named in DTYPES:
        return DTYPES[named]
    return torch.bfloat16 if quantized else torch.float32


def _converted(f: Any, key: str, config: Any, report: ImportReport) -> dict[str, torch.Tensor]:
    """One stored tensor as the tensors dsctl's checkpoint holds for it."""
    from dsctl.fp8.reference import weight_dequant
    from dsctl.model.hf import _LAYER, _split_fused_experts

    t = f.get_tensor(key)
    if t.dtype == torch.float8_e4m3fn:
        scale_key = key + SCALE_SUFFIX
        if scale_key not in f.keys():
            raise UserError(f"{key} is FP8 but its block scales ({scale_key}) are not in the same file")
        scales = f.get_tensor(scale_key).float()
        # a fused expert tensor (E, N, K) carries one (N/128, K/128) scale grid per expert
        t = (torch.stack([weight_dequant(w, s) for w, s in zip(t, scales)]) if t.dim() == 3
             else weight_dequant(t, scales))
        report.dequantized += 1
    m = _LAYER.match(key)
    if m is None or m.group(2) not in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
        return {key: t}
    report.split_fused += 1
    return _split_fused_experts(f"model.layers.{m.group(1)}", m.group(2), t, config)


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor the config's model has (built on the meta device)."""
    from dsctl.model import DeepSeekV3
    from dsctl.model.hf import hf_tensors

    with torch.device("meta"):
        model = DeepSeekV3(config)
    return {k: tuple(v.shape) for k, v in hf_tensors(model).items()}


def _check_against(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], seen: dict[str, Path],
                   path: Path) -> None:
    for name, t in tensors.items():
        if name not in expected:
            raise UserError(f"{path.name}: {name} is not a weight of the model config.json describes "
                            "(a different architecture, or a config that does not match its weights)")
        if tuple(t.shape) != expected[name]:
            raise UserError(f"{path.name}: {name} has shape {tuple(t.shape)}, the config says {expected[name]}")
        if name in seen:
            raise UserError(f"{name} is stored twice ({seen[name].name} and {path.name})")
        seen[name] = path

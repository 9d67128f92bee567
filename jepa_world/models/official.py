"""Load official V-JEPA 2 / V-JEPA / I-JEPA and Hugging Face VJEPA2 weights, strictly.

Supported inputs (all read without unpickling arbitrary objects):

* official ``torch.save`` dicts with ``encoder`` / ``target_encoder`` / ``predictor`` entries
  whose keys carry ``module.`` and ``backbone.`` prefixes (DDP / wrapper leftovers);
* bare state dicts of one part (hub-style files);
* the Hugging Face ``VJEPA2Model`` layout (``encoder.layer.N.attention.{query,key,value}``,
  ``encoder.embeddings.patch_embeddings.``, ``encoder.layernorm.``, ``predictor.layer.N.``,
  stacked ``predictor.embeddings.mask_tokens``), as ``.safetensors`` or ``.bin``/``.pt``;
* this library's own flat ``model.safetensors`` (``encoder.*``, ``target_encoder.*``, ``predictor.*``).

``checkpoint_filter_fn`` (in timm's spirit) turns any of these into our key layout for a given
model: split q/k/v are fused, stacked mask tokens unstacked, released predictors' 10 mask tokens
trimmed to the model's count, fixed sincos tables dropped (we compute them), and every shape is
checked. ``load_official_checkpoint`` then loads strictly, listing missing/unexpected keys.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from jepa_world.models.predictor import MaskedPredictor, PredictorConfig
from jepa_world.models.vit import VIT_SIZES, ViTConfig, VisionTransformer, sincos_table

log = logging.getLogger(__name__)

Part = Literal["target_encoder", "encoder", "predictor"]
PARTS: tuple[str, ...] = ("target_encoder", "encoder", "predictor")
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "_orig_mod.", "vjepa2.")
HF_MARKERS: tuple[str, ...] = ("encoder.layer.", "encoder.embeddings.", "predictor.layer.", "predictor.embeddings.")
OFFICIAL_PREDICTOR_HEADS = 12  # every released V-JEPA / V-JEPA 2 predictor: 384 wide, 12 heads


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: wrong shapes, missing or unexpected keys."""


# --------------------------------------------------------------------------- key layouts


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor],
                           prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, Tensor]:
    """Remove leading wrapper prefixes (default ``module.`` / ``backbone.`` / ``_orig_mod.`` / ``vjepa2.``),
    in any combination."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def is_hf_layout(state_dict: Mapping[str, Tensor]) -> bool:
    return any(key.startswith(HF_MARKERS) for key in state_dict)


def _fuse_hf_attention(state_dict: dict[str, Tensor], block_prefix: str, origins: Mapping[str, str]) -> dict[str, Tensor]:
    """``{block}.N.attention.{query,key,value,proj}`` -> ``{block}.N.attn.{qkv,proj}``; ``origins``
    maps a renamed key back to the file's own, so errors name what the file calls the tensor."""
    out: dict[str, Tensor] = {}
    pieces: dict[str, dict[str, Tensor]] = {}
    pattern = re.compile(rf"^({re.escape(block_prefix)}\.\d+)\.attention\.(query|key|value|proj)\.(weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match is None:
            out[key] = value
            continue
        block, name, kind = match.groups()
        if name == "proj":
            out[f"{block}.attn.proj.{kind}"] = value
        else:
            pieces.setdefault(f"{block}.attn.qkv.{kind}", {})[name] = (origins[key], value)
    for key, parts in pieces.items():
        missing = [name for name in ("query", "key", "value") if name not in parts]
        if missing:
            raise CheckpointMismatchError(f"HF checkpoint has no {missing} projection(s) for {key}")
        shapes = {parts[name][0]: tuple(parts[name][1].shape) for name in ("query", "key", "value")}
        if len(set(shapes.values())) != 1:
            raise CheckpointMismatchError(f"HF query/key/value projections differ in shape: "
                                          + ", ".join(f"'{k}' {s}" for k, s in shapes.items()))
        out[key] = torch.cat([parts[name][1] for name in ("query", "key", "value")], dim=0)
    return out


def _rename_hf(state_dict: Mapping[str, Tensor], part: str) -> dict[str, Tensor]:
    """Select one part of an HF ``VJEPA2Model`` state dict and rename it to the official layout."""
    section = "predictor." if part == "predictor" else "encoder."
    block_prefix = "predictor_blocks" if part == "predictor" else "blocks"
    renames = (
        [("embeddings.predictor_embeddings.", "predictor_embed."), ("embeddings.position_embeddings", "predictor_pos_embed"),
         ("layernorm.", "predictor_norm."), ("proj.", "predictor_proj."), ("layer.", "predictor_blocks.")]
        if part == "predictor"
        else [("embeddings.patch_embeddings.", "patch_embed."), ("embeddings.position_embeddings", "pos_embed"),
              ("layernorm.", "norm."), ("layer.", "blocks.")]
    )
    out: dict[str, Tensor] = {}
    origins: dict[str, str] = {}
    for original, value in state_dict.items():
        key = original
        if not key.startswith(section):
            continue  # the other part of the full model (or a classification head)
        key = key[len(section):].replace("attention.attention.", "attention.")  # early HF releases nest it
        if part == "predictor" and key == "embeddings.mask_tokens":  # (n, 1, 1, d) stacked
            for index, token in enumerate(value.reshape(value.shape[0], 1, 1, -1)):
                out[f"mask_tokens.{index}"] = token
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
        origins[key] = original
    return _fuse_hf_attention(out, block_prefix, origins)


def to_official_keys(state_dict: Mapping[str, Tensor], part: str) -> dict[str, Tensor]:
    """Any supported layout of one part -> official V-JEPA 2 key names (model independent)."""
    state_dict = strip_wrapper_prefixes(state_dict)
    if is_hf_layout(state_dict):
        state_dict = _rename_hf(state_dict, part)
    if "mask_token" in state_dict:  # I-JEPA predictors have a single, unnumbered mask token
        state_dict["mask_tokens.0"] = state_dict.pop("mask_token")
    return state_dict


def _trim_mask_tokens(state_dict: dict[str, Tensor], wanted: int) -> None:
    indices = sorted(int(key.split(".")[1]) for key in state_dict if re.fullmatch(r"mask_tokens\.\d+", key))
    if len(indices) > wanted:
        for index in indices[wanted:]:
            del state_dict[f"mask_tokens.{index}"]
        log.info("checkpoint has %d mask tokens, the model has %d: keeping mask_tokens.0-%d",
                 len(indices), wanted, wanted - 1)


def _drop_position_table(state_dict: dict[str, Tensor], key: str, model: nn.Module) -> None:
    """Our position tables are computed, not stored. A stored table is dropped only when it is
    the fixed sincos table we would compute (or RoPE makes it unused); anything else is refused."""
    table = state_dict.pop(key, None)
    if table is None:
        return
    cfg = model.cfg
    if cfg.pos_embed == "rope":
        log.info("dropping %s from the checkpoint: the model uses RoPE", key)
        return
    if isinstance(model, VisionTransformer):
        grid = (max(cfg.num_frames // model.patch_embed.tubelet_size, 1), cfg.img_size // cfg.patch_size,
                cfg.img_size // cfg.patch_size)
        if cfg.patch_embed == "2d":
            grid = (1, *grid[1:])
        expected = sincos_table(grid, cfg.embed_dim)
        stored = table.reshape(-1, table.shape[-1]).float()
        if stored.shape != expected.shape:
            raise CheckpointMismatchError(
                f"key '{key}': stored position table has shape {tuple(table.shape)}, but img_size={cfg.img_size}, "
                f"num_frames={cfg.num_frames}, patch_size={cfg.patch_size} give {tuple(expected.shape)}; "
                "pass the checkpoint's img_size/num_frames"
            )
        if not torch.allclose(stored, expected, atol=1e-4):
            raise CheckpointMismatchError(
                f"key '{key}' is not the fixed sincos table this library computes (learned position embeddings "
                "are not supported)"
            )
    log.info("dropping %s from the checkpoint: the model computes its sincos positions", key)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map an official / HF / I-JEPA state dict of one part onto ``model``'s keys.

    Raises ``CheckpointMismatchError`` naming every key whose shape differs from the model's.
    Missing and unexpected keys are left for the strict load to report.
    """
    part = "predictor" if isinstance(model, MaskedPredictor) else "encoder"
    converted = to_official_keys(state_dict, part)
    if isinstance(model, MaskedPredictor):
        _trim_mask_tokens(converted, model.cfg.num_mask_tokens)
        _drop_position_table(converted, "predictor_pos_embed", model)
    else:
        _drop_position_table(converted, "pos_embed", model)
    expected = model.state_dict()
    wrong = [
        f"'{key}': checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if wrong:
        raise CheckpointMismatchError(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong))
    return converted


def load_converted(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint", assign: bool = False
) -> nn.Module:
    """``checkpoint_filter_fn`` + strict load with a readable list of missing/unexpected keys.

    ``assign=True`` adopts the checkpoint tensors instead of copying them, so a model built on the
    ``meta`` device loads with no second copy of the weights (giant: 1B params).
    """
    converted = checkpoint_filter_fn(state_dict, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source} does not match {type(model).__name__}: missing keys {_preview(missing)}; "
            f"unexpected keys {_preview(unexpected)}"
        )
    if assign:  # adopt tensors, but in the model's dtype (half-precision files stay loadable as fp32)
        converted = {key: value.to(expected[key].dtype) for key, value in converted.items()}
    model.load_state_dict(converted, strict=True, assign=assign)
    return model


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"


# --------------------------------------------------------------------------- config inference


def _block_count(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    return len({key.split(".")[1] for key in state_dict if key.startswith(prefix + ".") and key.endswith("norm1.weight")})


def infer_encoder_config(state_dict: Mapping[str, Tensor], **overrides) -> ViTConfig:
    """Rebuild a ``ViTConfig`` from official-layout weights; ``overrides`` win (e.g. ``num_heads``)."""
    if "patch_embed.proj.weight" not in state_dict:
        raise CheckpointMismatchError(
            f"cannot infer an encoder: no 'patch_embed.proj.weight' among keys {_preview(sorted(state_dict))}"
        )
    weight = state_dict["patch_embed.proj.weight"]  # (D, C, tubelet, P, P) or (D, C, P, P)
    embed_dim, depth = weight.shape[0], _block_count(state_dict, "blocks")
    inferred: dict = dict(
        embed_dim=embed_dim,
        depth=depth,
        in_chans=weight.shape[1],
        patch_size=weight.shape[-1],
        patch_embed="3d" if weight.dim() == 5 else "2d",
        mlp_hidden_dim=state_dict["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        pos_embed="sincos" if "pos_embed" in state_dict else "rope",
    )
    if weight.dim() == 5:
        inferred["tubelet_size"] = weight.shape[2]
    if "pos_embed" in state_dict:  # a fixed table fixes the nominal grid
        tokens = state_dict["pos_embed"].reshape(-1, embed_dim).shape[0]
        frames = overrides.get("num_frames", 16) if weight.dim() == 5 else 1
        per_frame = tokens // max(frames // inferred.get("tubelet_size", 1), 1)
        inferred["img_size"] = math.isqrt(per_frame) * inferred["patch_size"]
    size = next((name for name, s in VIT_SIZES.items() if (s.embed_dim, s.depth) == (embed_dim, depth)), None)
    size = size or next((name for name, s in VIT_SIZES.items() if s.embed_dim == embed_dim), None)
    if size is None and "num_heads" not in overrides:
        raise CheckpointMismatchError(
            f"embed_dim {embed_dim} matches no size in VIT_SIZES ({', '.join(VIT_SIZES)}); pass num_heads=..."
        )
    inferred["size"] = size or "tiny"
    inferred["num_heads"] = VIT_SIZES[size].num_heads if size else None
    if "size" in overrides and "num_heads" not in overrides:
        if overrides["size"] not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {overrides['size']!r}; available sizes: {', '.join(VIT_SIZES)}")
        inferred["num_heads"] = VIT_SIZES[overrides["size"]].num_heads
    inferred.update(overrides)
    return ViTConfig(**inferred)


def infer_predictor_config(state_dict: Mapping[str, Tensor], **overrides) -> PredictorConfig:
    """Rebuild a ``PredictorConfig``; heads default to the released 12 (weights cannot tell)."""
    if "predictor_embed.weight" not in state_dict:
        raise CheckpointMismatchError(
            f"cannot infer a predictor: no 'predictor_embed.weight' among keys {_preview(sorted(state_dict))}"
        )
    dim, encoder_dim = state_dict["predictor_embed.weight"].shape
    depth = _block_count(state_dict, "predictor_blocks")
    tokens = sum(1 for key in state_dict if re.fullmatch(r"mask_tokens\.\d+", key))
    inferred: dict = dict(
        encoder_dim=encoder_dim,
        dim=dim,
        depth=depth,
        num_heads=OFFICIAL_PREDICTOR_HEADS,
        mlp_ratio=state_dict["predictor_blocks.0.mlp.fc1.weight"].shape[0] / dim if depth else 4.0,
        num_mask_tokens=max(tokens, 1),
        qkv_bias="predictor_blocks.0.attn.qkv.bias" in state_dict,
    )
    inferred.update(overrides)
    return PredictorConfig(**inferred)


# --------------------------------------------------------------------------- files


def read_weights_file(path: str | os.PathLike) -> dict:
    """Read a ``.safetensors`` file, or a torch.save file with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True); it holds objects other than tensors "
            f"and plain containers, and untrusted files are never unpickled: {err}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:  # torch raises all three for truncated zip archives
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}; expected a dict of tensors or of state dicts")
    return dict(obj)


def select_part(checkpoint: Mapping, which: str, source: str = "checkpoint") -> dict[str, Tensor]:
    """Pick one part's flat state dict out of any supported checkpoint layout."""
    if which not in PARTS:
        raise ValueError(f"which={which!r} is not one of {PARTS}")
    nested = {key: value for key, value in checkpoint.items() if isinstance(value, Mapping)}
    if nested:
        if which not in nested:
            raise KeyError(f"{source} has no '{which}' state dict; it has {sorted(nested)}")
        return dict(nested[which])
    tensors = {key: value for key, value in checkpoint.items() if isinstance(value, Tensor)}
    if is_hf_layout(strip_wrapper_prefixes(tensors)):
        return tensors  # the HF renamer picks encoder.* or predictor.* itself
    prefix = f"{which}."
    own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    if own:
        return own
    if any(key.startswith(f"{part}.") for key in tensors for part in PARTS):
        raise KeyError(f"{source} has no '{which}.*' tensors; it has parts "
                       f"{sorted({key.split('.')[0] for key in tensors})}")
    return tensors


# HF VJEPA2Config keys -> ours, per part: what the weights cannot tell (head counts) and image geometry.
HF_CONFIG_KEYS = {
    "encoder": {"num_attention_heads": "num_heads", "crop_size": "img_size", "frames_per_clip": "num_frames"},
    "predictor": {"pred_num_attention_heads": "num_heads"},
}


def _sibling_config(path: Path, which: str) -> dict:
    """The config.json beside the weights: ours keeps the exact configs (incl. num_heads); an HF
    ``VJEPA2Config`` (``model_type`` "vjepa2") gives the head counts the weights cannot."""
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    if config.get("model_type") == "vjepa2":
        keys = HF_CONFIG_KEYS["predictor" if which == "predictor" else "encoder"]
        return {ours: config[theirs] for theirs, ours in keys.items() if theirs in config}
    config_class = PredictorConfig if which == "predictor" else ViTConfig
    section = config.get("predictor" if which == "predictor" else "encoder")
    if not isinstance(section, Mapping):
        return {}
    names = {field.name for field in fields(config_class)}
    return {key: value for key, value in section.items() if key in names}


def load_official_checkpoint(
    path: str | os.PathLike,
    which: Part = "target_encoder",
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    **overrides,
) -> nn.Module:
    """Load one part of a checkpoint strictly and return the model.

    Without ``model``, a ``VisionTransformer`` or ``MaskedPredictor`` is built from the weights'
    shapes (plus ``config.json`` beside our own files); ``overrides`` set what weights cannot tell,
    such as ``num_heads`` for non-standard widths or ``pos_embed="sincos"`` for I-JEPA predictors.
    A model built here is created on the meta device and adopts the file's tensors (no double
    memory, no random init), then moves to ``map_location``.
    """
    path = Path(path)
    checkpoint = read_weights_file(path)
    part_dict = select_part(checkpoint, which, str(path))
    if model is None:
        official = to_official_keys(part_dict, "predictor" if which == "predictor" else "encoder")
        settings = {**_sibling_config(path, which), **overrides}
        model = _build_on_meta(which, official, settings)
        loaded = load_converted(model, part_dict, f"{path} [{which}]", assign=True)
        return loaded.to(map_location)
    log.info("loading %s from %s into %s", which, path, type(model).__name__)
    return load_converted(model, part_dict, f"{path} [{which}]")


def _build_on_meta(part: str, official: Mapping[str, Tensor], settings: Mapping) -> nn.Module:
    with torch.device("meta"):
        if part == "predictor":
            return MaskedPredictor(infer_predictor_config(official, **settings))
        return VisionTransformer(infer_encoder_config(official, **settings))


def available_parts(checkpoint: Mapping) -> list[str]:
    """Parts a checkpoint holds, in ``PARTS`` order (HF files hold an encoder and a predictor)."""
    nested = [part for part in PARTS if isinstance(checkpoint.get(part), Mapping)]
    if nested:
        return nested
    keys = strip_wrapper_prefixes({key: None for key in checkpoint})
    if is_hf_layout(keys):
        return [part for part, marker in (("encoder", "encoder."), ("predictor", "predictor.")) if
                any(key.startswith(marker) for key in keys)]
    own = [part for part in PARTS if any(key.startswith(f"{part}.") for key in keys)]
    return own or ["encoder"]


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    which: str = "all",
    encoder_overrides: Mapping | None = None,
    predictor_overrides: Mapping | None = None,
) -> Path:
    """Write ``output_dir/model.safetensors`` (``<part>.*`` keys) and ``config.json`` atomically.

    ``which="all"`` converts every part the checkpoint holds.
    """
    from jepa_world.model_format import module_tensors, save_checkpoint

    source = Path(source)
    checkpoint = read_weights_file(source)
    parts = available_parts(checkpoint) if which == "all" else [which]
    modules: dict[str, nn.Module] = {}
    for part in parts:
        overrides = dict(predictor_overrides or {}) if part == "predictor" else dict(encoder_overrides or {})
        part_dict = select_part(checkpoint, part, str(source))
        official = to_official_keys(part_dict, "predictor" if part == "predictor" else "encoder")
        settings = {**_sibling_config(source, part), **overrides}
        model = _build_on_meta(part, official, settings)
        modules[part] = load_converted(model, part_dict, f"{source} [{part}]", assign=True)
    config: dict = {"converted_from": str(source), "parts": list(modules)}
    encoder = next((modules[p] for p in ("target_encoder", "encoder") if p in modules), None)
    if encoder is not None:
        config["encoder"] = encoder.cfg.to_dict()
    if "predictor" in modules:
        config["predictor"] = modules["predictor"].cfg.to_dict()
    out = save_checkpoint(output_dir, module_tensors(modules), config)
    log.info("wrote %s (%s) from %s", out, ", ".join(modules), source)
    return out

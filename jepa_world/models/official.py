"""Load official V-JEPA 2 / V-JEPA 2-AC / I-JEPA and Hugging Face VJEPA2 weights, strictly.

Supported inputs (all read without unpickling arbitrary objects):

* official ``torch.save`` dicts with ``encoder`` / ``target_encoder`` / ``predictor`` entries
  whose keys carry ``module.`` and ``backbone.`` prefixes (DDP / wrapper leftovers); the
  ``predictor`` may be the masked pretraining predictor or the V-JEPA 2-AC action-conditioned one
  (``action_encoder``, ``state_encoder``, ``extrinsics_encoder``, ``predictor_blocks.N``), which
  loads into ``ACPredictor``;
* bare state dicts of one part (hub-style files);
* the Hugging Face ``VJEPA2Model`` layout (``encoder.layer.N.attention.{query,key,value}``,
  ``encoder.embeddings.patch_embeddings.``, ``encoder.layernorm.``, ``predictor.layer.N.``,
  stacked ``predictor.embeddings.mask_tokens``), as ``.safetensors`` or ``.bin``/``.pt``;
* this library's own flat ``model.safetensors`` (``encoder.*``, ``target_encoder.*``, ``predictor.*``).

``checkpoint_filter_fn`` (in timm's spirit) turns any of these into our key layout for a given
model: split q/k/v are fused, stacked mask tokens unstacked, released predictors' 10 mask tokens
trimmed to the model's count, stored position tables dropped (we compute ours), and every dtype,
value and shape is checked; errors name the file's own key where ours differs. ``load_official_checkpoint``
then loads strictly, listing missing/unexpected keys.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from jepa_world.models.predictor import MaskedPredictor, PredictorConfig
from jepa_world.models.vit import VIT_SIZES, ViTConfig, VisionTransformer, sincos_table

if TYPE_CHECKING:  # ac_predictor imports this module, so it is imported where used
    from jepa_world.models.ac_predictor import ACPredictorConfig

log = logging.getLogger(__name__)

Part = Literal["target_encoder", "encoder", "predictor"]
PARTS: tuple[str, ...] = ("target_encoder", "encoder", "predictor")
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "_orig_mod.", "vjepa2.")
HF_MARKERS: tuple[str, ...] = ("encoder.layer.", "encoder.embeddings.", "predictor.layer.", "predictor.embeddings.")
OFFICIAL_PREDICTOR_HEADS = 12  # every released V-JEPA / V-JEPA 2 predictor: 384 wide, 12 heads
OFFICIAL_PREDICTOR_DIM = 384
# The released V-JEPA 2-AC predictor reads 256 px frames in 16 px patches; its weights do not fix the grid.
OFFICIAL_AC_GRID_HW: tuple[int, int] = (16, 16)
AC_LAYOUT_MARKER = "action_encoder.weight"  # only the action-conditioned predictor embeds actions
# Our key -> the file's own key(s) it was renamed or fused from (HF layout); absent when only
# wrapper prefixes differ, so official-layout errors keep naming the familiar stripped key.
KeyOrigins = dict[str, tuple[str, ...]]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: wrong shapes, dtypes or values, missing or unexpected keys."""


# --------------------------------------------------------------------------- key layouts


def _strip_key(key: str, prefixes: tuple[str, ...]) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor],
                           prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, Tensor]:
    """Remove leading wrapper prefixes (default ``module.`` / ``backbone.`` / ``_orig_mod.`` / ``vjepa2.``),
    in any combination."""
    return {_strip_key(key, prefixes): value for key, value in state_dict.items()}


def is_hf_layout(state_dict: Mapping[str, Tensor]) -> bool:
    return any(key.startswith(HF_MARKERS) for key in state_dict)


def is_ac_predictor_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """True for a V-JEPA 2-AC (action-conditioned) predictor in official key names."""
    return AC_LAYOUT_MARKER in state_dict


def _value_problem(value: Tensor) -> str | None:
    """What makes a stored weight unusable, or None: a non-float dtype or non-finite entries."""
    if not value.is_floating_point():
        return f"has dtype {value.dtype}, expected a floating-point tensor"
    bad = value.numel() - int(torch.isfinite(value).sum())
    return f"holds {bad} non-finite value(s) (NaN/inf)" if bad else None


@contextmanager
def _errors_name(source: str) -> Iterator[None]:
    """Prefix a ``CheckpointMismatchError`` with the file (and part) it is about, once."""
    try:
        yield
    except CheckpointMismatchError as err:
        if str(err).startswith(source):
            raise
        raise CheckpointMismatchError(f"{source}: {err}") from err


def _name(key: str, origins: Mapping[str, tuple[str, ...]]) -> str:
    """``key`` as an error names it: with the file's own key(s) when the file calls it otherwise."""
    if key not in origins:
        return f"'{key}'"
    return f"'{key}' (the file's " + ", ".join(f"'{origin}'" for origin in origins[key]) + ")"


def _fuse_hf_attention(state_dict: dict[str, Tensor], block_prefix: str,
                       origins: KeyOrigins) -> tuple[dict[str, Tensor], KeyOrigins]:
    """``{block}.N.attention.{query,key,value,proj}`` -> ``{block}.N.attn.{qkv,proj}``.

    Every check happens before the fusion, on the file's own keys (``origins``): once fused, a bad
    piece would only be visible under our ``attn.qkv`` key, which the file does not have."""
    out: dict[str, Tensor] = {}
    out_origins = {key: origin for key, origin in origins.items() if key in state_dict}
    pieces: dict[str, dict[str, dict[str, tuple[str, Tensor]]]] = {}  # block -> kind -> name -> (file key, tensor)
    file_heads: dict[str, str] = {}  # block -> "<...>.attention" as the file spells it
    pattern = re.compile(rf"^({re.escape(block_prefix)}\.\d+)\.attention\.(query|key|value|proj)\.(weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match is None:
            out[key] = value
            continue
        block, name, kind = match.groups()
        del out_origins[key]
        if name == "proj":
            out[f"{block}.attn.proj.{kind}"] = value
            out_origins[f"{block}.attn.proj.{kind}"] = origins[key]
        else:
            pieces.setdefault(block, {}).setdefault(kind, {})[name] = (origins[key][0], value)
            file_heads[block] = origins[key][0].rsplit(".", 2)[0]
    kinds_in_file = {kind for block in pieces.values() for kind in block}  # a bias in one layer means in all
    for block, kinds in pieces.items():
        for kind in sorted(kinds_in_file):
            present = kinds.get(kind, {})
            missing = [f"'{file_heads[block]}.{name}.{kind}'" for name in ("query", "key", "value") if name not in present]
            if missing:
                raise CheckpointMismatchError(
                    f"HF checkpoint lacks {', '.join(missing)}: the query/key/value {kind}es of a layer are fused, "
                    f"so all three are needed (other layers in the file have them)")
            shapes = {present[name][0]: tuple(present[name][1].shape) for name in ("query", "key", "value")}
            if len(set(shapes.values())) != 1:
                raise CheckpointMismatchError(f"HF query/key/value projections differ in shape: "
                                              + ", ".join(f"'{k}' {s}" for k, s in shapes.items()))
            dtypes = {present[name][0]: present[name][1].dtype for name in ("query", "key", "value")}
            if len(set(dtypes.values())) != 1:
                raise CheckpointMismatchError(f"HF query/key/value projections differ in dtype: "
                                              + ", ".join(f"'{k}' {d}" for k, d in dtypes.items()))
            for file_key, value in (present[name] for name in ("query", "key", "value")):
                problem = _value_problem(value)
                if problem:
                    raise CheckpointMismatchError(f"'{file_key}' {problem}")
            fused = f"{block}.attn.qkv.{kind}"
            out[fused] = torch.cat([present[name][1] for name in ("query", "key", "value")], dim=0)
            out_origins[fused] = tuple(present[name][0] for name in ("query", "key", "value"))
    return out, out_origins


def _rename_hf(state_dict: Mapping[str, Tensor], part: str) -> tuple[dict[str, Tensor], KeyOrigins]:
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
    origins: KeyOrigins = {}
    for original, value in state_dict.items():
        key = original
        if not key.startswith(section):
            continue  # the other part of the full model (or a classification head)
        key = key[len(section):].replace("attention.attention.", "attention.")  # early HF releases nest it
        if part == "predictor" and key == "embeddings.mask_tokens":  # (n, 1, 1, d) stacked
            for index, token in enumerate(value.reshape(value.shape[0], 1, 1, -1)):
                out[f"mask_tokens.{index}"] = token
                origins[f"mask_tokens.{index}"] = (f"{original}[{index}]",)
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
        origins[key] = (original,)
    return _fuse_hf_attention(out, block_prefix, origins)


def to_official_keys(state_dict: Mapping[str, Tensor], part: str) -> tuple[dict[str, Tensor], KeyOrigins]:
    """Any supported layout of one part -> official V-JEPA 2 key names (model independent), and
    the file's own key(s) for every key that the file names otherwise (beyond wrapper prefixes)."""
    state_dict = strip_wrapper_prefixes(state_dict)
    origins: KeyOrigins = {}
    if is_hf_layout(state_dict):
        state_dict, origins = _rename_hf(state_dict, part)
    if "mask_token" in state_dict:  # I-JEPA predictors have a single, unnumbered mask token
        state_dict["mask_tokens.0"] = state_dict.pop("mask_token")
        origins["mask_tokens.0"] = origins.pop("mask_token", ("mask_token",))
    return state_dict, origins


def check_values(state_dict: Mapping[str, Tensor], origins: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse non-float or non-finite weights, naming the key as the file spells it: a NaN weight
    loads without complaint and only shows later as NaN (or zero) outputs."""
    for key, value in state_dict.items():
        problem = _value_problem(value)
        if problem:
            raise CheckpointMismatchError(f"{_name(key, origins)} {problem}")


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
        log.info("dropping %s from the checkpoint: the model uses RoPE, which needs no table "
                 "(as the official V-JEPA 2 hub loader ignores it)", key)
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

    Raises ``CheckpointMismatchError`` naming every key whose shape differs from the model's, and
    the first non-float or non-finite tensor. Missing and unexpected keys are left for the strict
    load to report.
    """
    part = "predictor" if isinstance(model, MaskedPredictor) else "encoder"
    converted, origins = to_official_keys(state_dict, part)
    if isinstance(model, MaskedPredictor):
        _trim_mask_tokens(converted, model.cfg.num_mask_tokens)
        _drop_position_table(converted, "predictor_pos_embed", model)
    else:
        _drop_position_table(converted, "pos_embed", model)
    check_values(converted, origins)
    expected = model.state_dict()
    wrong = [
        f"{_name(key, origins)}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
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
    with _errors_name(source):
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


def _require_key(state_dict: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state_dict:
        raise CheckpointMismatchError(f"cannot infer {what}: no '{key}' among keys {_preview(sorted(state_dict))}")
    return state_dict[key]


def _head_count_hint(width: int) -> str:
    """The head counts a width allows at common head widths: what the user chooses between."""
    counts = [f"{width // head_dim} (head_dim {head_dim})" for head_dim in (16, 32, 64, 80, 128) if width % head_dim == 0]
    return f"it splits into {' or '.join(counts)} heads, among others" if counts else "no common head width divides it"


def _encoder_position_encoding(state_dict: Mapping[str, Tensor], patch_embed: str) -> str:
    """RoPE or sincos, from what the weights say, as the official loaders decide.

    A stored table does not mean the encoder adds it: the official V-JEPA 2 hub loader builds
    every video (tubelet) encoder with RoPE and loads with ``strict=False`` because the released
    files still carry a ``pos_embed`` table ("state_dict has pos_embed but we use RoPE"), and HF's
    ``VJEPA2Model`` has only RoPE. I-JEPA (per-frame 2-D patches) has no RoPE variant, so there
    the table is the encoding. A sincos video encoder (V-JEPA 1 style) must say so explicitly.
    """
    if "pos_embed" not in state_dict:
        return "rope"
    if patch_embed == "2d":
        return "sincos"
    log.info("the checkpoint stores a 'pos_embed' table, but a video (tubelet) encoder is read as RoPE, as the "
             "official V-JEPA 2 hub loader does; pass pos_embed='sincos' (CLI: --pos-embed sincos) for a sincos one")
    return "rope"


def infer_encoder_config(state_dict: Mapping[str, Tensor], **overrides) -> ViTConfig:
    """Rebuild a ``ViTConfig`` from official-layout weights; ``overrides`` win (e.g. ``num_heads``,
    ``pos_embed``). A width outside ``VIT_SIZES`` has no head count the weights can tell, so it
    needs ``num_heads`` instead of a guess."""
    weight = _require_key(state_dict, "patch_embed.proj.weight", "an encoder")  # (D, C, tubelet, P, P) or (D, C, P, P)
    embed_dim, depth = weight.shape[0], _block_count(state_dict, "blocks")
    patch_embed = "3d" if weight.dim() == 5 else "2d"
    inferred: dict = dict(
        embed_dim=embed_dim,
        depth=depth,
        in_chans=weight.shape[1],
        patch_size=weight.shape[-1],
        patch_embed=patch_embed,
        mlp_hidden_dim=state_dict["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        pos_embed=overrides.get("pos_embed") or _encoder_position_encoding(state_dict, patch_embed),
    )
    if weight.dim() == 5:
        inferred["tubelet_size"] = weight.shape[2]
    if inferred["pos_embed"] == "sincos" and "pos_embed" in state_dict:  # the added table fixes the nominal grid
        tokens = state_dict["pos_embed"].reshape(-1, embed_dim).shape[0]
        frames = overrides.get("num_frames", 16) if weight.dim() == 5 else 1
        per_frame = tokens // max(frames // inferred.get("tubelet_size", 1), 1)
        inferred["img_size"] = math.isqrt(per_frame) * inferred["patch_size"]
    size = next((name for name, s in VIT_SIZES.items() if (s.embed_dim, s.depth) == (embed_dim, depth)), None)
    size = size or next((name for name, s in VIT_SIZES.items() if s.embed_dim == embed_dim), None)
    if size is None and "num_heads" not in overrides:
        raise CheckpointMismatchError(
            f"cannot tell the head count of a {embed_dim}-wide encoder: the weights do not store it, {embed_dim} is no "
            f"width in VIT_SIZES ({', '.join(f'{n} {s.embed_dim}' for n, s in VIT_SIZES.items())}) and "
            f"{_head_count_hint(embed_dim)}; pass num_heads=... (CLI: --num-heads N)"
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
    """Rebuild a ``PredictorConfig``. Heads: the released 12 at the released width 384; any other
    width needs ``num_heads`` (weights cannot tell, and a wrong count loads without error)."""
    dim, encoder_dim = _require_key(state_dict, "predictor_embed.weight", "a predictor").shape
    depth = _block_count(state_dict, "predictor_blocks")
    tokens = sum(1 for key in state_dict if re.fullmatch(r"mask_tokens\.\d+", key))
    if dim != OFFICIAL_PREDICTOR_DIM and "num_heads" not in overrides:
        raise CheckpointMismatchError(
            f"cannot tell the head count of a {dim}-wide predictor: the weights do not store it, released predictors "
            f"are {OFFICIAL_PREDICTOR_DIM} wide with {OFFICIAL_PREDICTOR_HEADS} heads and {_head_count_hint(dim)}; "
            "pass num_heads=... (CLI: --predictor-num-heads N)"
        )
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


def infer_ac_predictor_config(state_dict: Mapping[str, Tensor], **overrides) -> ACPredictorConfig:
    """Rebuild an ``ACPredictorConfig`` from a V-JEPA 2-AC predictor's weights.

    The action, state and extrinsics widths come from their projections (a file without a state
    projection gets ``state_dim=0``); heads from ``AC_PREDICTOR_SIZES`` by width (the release: 1024
    wide, 16 heads), else ``num_heads`` is required; the frame grid, which no weight fixes, defaults
    to the release's ``OFFICIAL_AC_GRID_HW``. The official predictor is absolute (no residual head).
    """
    from jepa_world.models.ac_predictor import AC_PREDICTOR_SIZES, ACPredictorConfig  # it imports this module

    dim, encoder_dim = _require_key(state_dict, "predictor_embed.weight", "an AC predictor").shape
    depth = _block_count(state_dict, "predictor_blocks")

    def input_width(key: str) -> int:
        return state_dict[key].shape[1] if key in state_dict else 0

    heads = next((h for d, _, h in AC_PREDICTOR_SIZES.values() if d == dim), None)
    if heads is None and "num_heads" not in overrides and "size" not in overrides:
        raise CheckpointMismatchError(
            f"cannot tell the head count of a {dim}-wide AC predictor: the weights do not store it, {dim} is no width "
            f"in AC_PREDICTOR_SIZES ({', '.join(f'{n} {d}' for n, (d, _, _) in AC_PREDICTOR_SIZES.items())}) and "
            f"{_head_count_hint(dim)}; pass num_heads=... (CLI: --predictor-num-heads N)"
        )
    inferred: dict = dict(
        encoder_dim=encoder_dim,
        dim=dim,
        depth=depth,
        num_heads=heads,
        action_dim=input_width(AC_LAYOUT_MARKER),
        state_dim=input_width("state_encoder.weight"),
        extrinsics_dim=input_width("extrinsics_encoder.weight"),
        mlp_ratio=state_dict["predictor_blocks.0.mlp.fc1.weight"].shape[0] / dim if depth else 4.0,
        grid_hw=OFFICIAL_AC_GRID_HW,
        predict_residual=False,
    )
    inferred.update(overrides)
    return ACPredictorConfig(**inferred)


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


def _sibling_config(path: Path, section: str, config_class: type) -> dict:
    """The config.json beside the weights: ours keeps the exact configs (incl. num_heads) under
    ``section`` ("encoder" / "predictor"); an HF ``VJEPA2Config`` (``model_type`` "vjepa2") gives the
    head counts the weights cannot."""
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    if config.get("model_type") == "vjepa2":
        return {ours: config[theirs] for theirs, ours in HF_CONFIG_KEYS[section].items() if theirs in config}
    values = config.get(section)
    if not isinstance(values, Mapping):
        return {}
    names = {field.name for field in fields(config_class)}
    return {key: value for key, value in values.items() if key in names}


def _load_part(checkpoint: Mapping, path: Path, which: str, overrides: Mapping,
               model: nn.Module | None = None) -> nn.Module:
    """One part of a read checkpoint, loaded strictly into ``model``, or into a model built from the
    weights' shapes, the ``config.json`` beside them and ``overrides`` (which win). A V-JEPA 2-AC
    predictor becomes an ``ACPredictor``, loaded by its own official-layout loader."""
    from jepa_world.models.ac_predictor import ACPredictor, ACPredictorConfig, load_official_state_dict  # it imports us

    source = f"{path} [{which}]"
    part_dict = select_part(checkpoint, which, str(path))
    section = "predictor" if which == "predictor" else "encoder"
    with _errors_name(source):
        official, origins = to_official_keys(part_dict, section)
        if isinstance(model, ACPredictor) or (model is None and is_ac_predictor_layout(official)):
            check_values(official, origins)
            if model is None:
                settings = {**_sibling_config(path, section, ACPredictorConfig), **overrides}
                # Built on the CPU, not on meta: its RoPE step template is a plain tensor made at construction.
                model = ACPredictor(infer_ac_predictor_config(official, **settings))
            load_official_state_dict(model, official, source)
            return model
        if model is not None:
            log.info("loading %s from %s into %s", which, path, type(model).__name__)
            return load_converted(model, part_dict, source)
        # Built on meta, the model adopts the file's tensors: no random init, no second copy (giant: 1B params).
        if section == "predictor":
            settings = {**_sibling_config(path, section, PredictorConfig), **overrides}
            with torch.device("meta"):
                model = MaskedPredictor(infer_predictor_config(official, **settings))
        else:
            settings = {**_sibling_config(path, section, ViTConfig), **overrides}
            with torch.device("meta"):
                model = VisionTransformer(infer_encoder_config(official, **settings))
        return load_converted(model, part_dict, source, assign=True)


def load_official_checkpoint(
    path: str | os.PathLike,
    which: Part = "target_encoder",
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    **overrides,
) -> nn.Module:
    """Load one part of a checkpoint strictly and return the model.

    Without ``model``, a ``VisionTransformer``, ``MaskedPredictor`` or (for a V-JEPA 2-AC file)
    ``ACPredictor`` is built from the weights' shapes (plus ``config.json`` beside the weights, ours
    or HF's); ``overrides`` set what weights cannot tell, such as ``num_heads`` for widths outside the
    size tables, ``pos_embed="sincos"`` for I-JEPA predictors and sincos video encoders, or an AC
    predictor's ``grid_hw``. Encoders and masked predictors are created on the meta device and adopt
    the file's tensors (no double memory, no random init); every built model then moves to
    ``map_location``.
    """
    path = Path(path)
    checkpoint = read_weights_file(path)
    if model is not None:
        return _load_part(checkpoint, path, which, overrides, model)
    return _load_part(checkpoint, path, which, overrides).to(map_location)


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

    ``which="all"`` converts every part the checkpoint holds. ``config.json`` records each part's
    full config (``encoder``: ViTConfig; ``predictor``: PredictorConfig, or ACPredictorConfig for a
    V-JEPA 2-AC predictor), so ``load_official_checkpoint(output_dir, part)`` rebuilds it exactly.
    """
    from jepa_world.model_format import module_tensors, save_checkpoint

    source = Path(source)
    checkpoint = read_weights_file(source)
    parts = available_parts(checkpoint) if which == "all" else [which]
    modules = {
        part: _load_part(checkpoint, source, part,
                         dict((predictor_overrides if part == "predictor" else encoder_overrides) or {}))
        for part in parts
    }
    config: dict = {"converted_from": str(source), "parts": list(modules)}
    encoder = next((modules[p] for p in ("target_encoder", "encoder") if p in modules), None)
    if encoder is not None:
        config["encoder"] = encoder.cfg.to_dict()
    if "predictor" in modules:
        predictor = modules["predictor"]
        # ACPredictor keeps its dataclass config as .config; our masked predictor as .cfg
        config["predictor"] = asdict(predictor.cfg if isinstance(predictor, MaskedPredictor) else predictor.config)
    out = save_checkpoint(output_dir, module_tensors(modules), config)
    log.info("wrote %s (%s) from %s", out, ", ".join(modules), source)
    return out

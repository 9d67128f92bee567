"""Official V-JEPA 2 / I-JEPA / HF VJEPA2 key layouts load strictly and reproduce outputs.

The official-layout files are produced here from our models with hand-written renames (the
inverse of what the loader does), saved in the official container format, and loaded back.
"""
import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jepa_world.models.ac_predictor import ACPredictor, ACPredictorConfig
from jepa_world.models.official import (
    OFFICIAL_AC_GRID_HW,
    CheckpointMismatchError,
    convert_checkpoint,
    load_official_checkpoint,
)
from jepa_world.models.predictor import MaskedPredictor, PredictorConfig
from jepa_world.models.vit import ViTConfig, VisionTransformer, sincos_table

torch.set_num_threads(1)  # tiny ops: OpenMP sync costs dominate on the shared 2-core box
REPO = Path(__file__).resolve().parents[1]
TINY = dict(size="tiny", img_size=32, patch_size=8, num_frames=4)


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def random_weights(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Fill a meta-built module with random weights; much faster than trunc-normal init on a
    loaded 2-core machine, and LayerNorm/bias values are random too, so every key matters."""
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, std, generator=generator)
    return module.eval()


def tiny_encoder(seed: int, **overrides) -> VisionTransformer:
    with torch.device("meta"):
        model = VisionTransformer(ViTConfig(**{**TINY, **overrides}))
    return random_weights(model, seed)


def small_predictor(seed: int, num_mask_tokens: int = 2, **overrides) -> MaskedPredictor:
    cfg = dict(encoder_dim=192, dim=48, depth=2, num_heads=4, num_mask_tokens=num_mask_tokens)
    with torch.device("meta"):
        model = MaskedPredictor(PredictorConfig(**{**cfg, **overrides}))
    return random_weights(model, seed)


def official_layout(module: torch.nn.Module, prefix: str = "module.backbone.") -> dict:
    return {prefix + key: value.clone() for key, value in module.state_dict().items()}


def split_qkv(key: str, value: torch.Tensor, out: dict) -> None:
    base, kind = key.rsplit(".qkv.", 1)
    for name, piece in zip(("query", "key", "value"), value.chunk(3, dim=0)):
        out[f"{base}.{name}.{kind}"] = piece.clone()


def hf_encoder_layout(encoder: VisionTransformer, nested_attention: bool = False) -> dict:
    attention = "attention.attention." if nested_attention else "attention."
    out = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("patch_embed."):
            out["encoder.embeddings.patch_embeddings." + key[len("patch_embed."):]] = value.clone()
        elif key.startswith("norm."):
            out["encoder.layernorm." + key[len("norm."):]] = value.clone()
        else:
            key = "encoder.layer." + key[len("blocks."):].replace("attn.", attention)
            split_qkv(key, value, out) if ".qkv." in key else out.__setitem__(key, value.clone())
    return out


def hf_predictor_layout(predictor: MaskedPredictor) -> dict:
    out = {"predictor.embeddings.mask_tokens": torch.stack([t.detach().clone() for t in predictor.mask_tokens])}
    for key, value in predictor.state_dict().items():
        if key.startswith("mask_tokens."):
            continue
        for ours, theirs in (("predictor_embed.", "predictor.embeddings.predictor_embeddings."),
                             ("predictor_norm.", "predictor.layernorm."), ("predictor_proj.", "predictor.proj.")):
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value.clone()
                break
        else:
            key = "predictor.layer." + key[len("predictor_blocks."):].replace("attn.", "attention.")
            split_qkv(key, value, out) if ".qkv." in key else out.__setitem__(key, value.clone())
    return out


@pytest.fixture(scope="module")
def sources():
    video = torch.randn(2, 3, 4, 32, 32)
    ids = torch.stack([torch.randperm(32) for _ in range(2)])
    return {
        "encoder": tiny_encoder(1),
        "target_encoder": tiny_encoder(2),
        "predictor": small_predictor(3, num_mask_tokens=10),
        "video": video,
        "context_ids": ids[:, :20],
        "target_ids": ids[:, 20:],
    }


@pytest.fixture(scope="module")
def official_file(sources, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "vitt.pt"
    checkpoint = {
        "encoder": official_layout(sources["encoder"]),
        "target_encoder": official_layout(sources["target_encoder"]),
        "predictor": official_layout(sources["predictor"]),
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "scaler": None, "epoch": 3, "loss": 0.42, "batch_size": 4, "world_size": 8, "lr": 1e-4,
    }
    torch.save(checkpoint, path)
    return path


def encode(model, sources, masks=None):
    with torch.no_grad():
        return model(sources["video"], masks=masks)


def predict(model, sources, mask_index=0):
    ctx = sources["context_ids"]
    with torch.no_grad():
        context = encode(sources["encoder"], sources, ctx)
        return model(context, ctx, sources["target_ids"], (2, 4, 4), mask_index=mask_index)


@pytest.mark.parametrize("which", ["target_encoder", "encoder"])
def test_official_file_loads_strictly_and_reproduces_outputs(official_file, sources, which):
    into = load_official_checkpoint(official_file, which, model=tiny_encoder(seed=99))
    torch.testing.assert_close(encode(into, sources), encode(sources[which], sources), rtol=0, atol=0)
    built = load_official_checkpoint(official_file, which)  # config inferred from the weights
    assert (built.cfg.size, built.cfg.embed_dim, built.cfg.depth, built.cfg.patch_size) == ("tiny", 192, 12, 8)
    torch.testing.assert_close(encode(built, sources), encode(sources[which], sources))


def test_ten_released_mask_tokens_load_into_two(official_file, sources, caplog):
    with caplog.at_level(logging.INFO, logger="jepa_world.models.official"):
        into = load_official_checkpoint(official_file, "predictor", model=small_predictor(seed=7))
    assert "10 mask tokens, the model has 2" in caplog.text
    for index in (0, 1):
        torch.testing.assert_close(into.mask_tokens[index], sources["predictor"].mask_tokens[index])
        torch.testing.assert_close(predict(into, sources, index), predict(sources["predictor"], sources, index))
    built = load_official_checkpoint(official_file, "predictor", num_heads=4)
    assert built.cfg.num_mask_tokens == 10 and built.cfg.encoder_dim == 192
    torch.testing.assert_close(predict(built, sources, 7), predict(sources["predictor"], sources, 7))


@pytest.mark.parametrize("prefix", ["", "module.", "backbone.", "module.backbone."])
def test_wrapper_prefixes_are_stripped(tmp_path, sources, prefix):
    path = tmp_path / "bare.pth"
    torch.save(official_layout(sources["encoder"], prefix), path)  # a bare state dict, hub style
    loaded = load_official_checkpoint(path, "encoder", model=tiny_encoder(seed=5))
    torch.testing.assert_close(encode(loaded, sources), encode(sources["encoder"], sources), rtol=0, atol=0)


@pytest.mark.parametrize("nested_attention", [False, True])
def test_hf_vjepa2_layout_loads_encoder_and_predictor(tmp_path, sources, nested_attention):
    pred2 = small_predictor(11, num_mask_tokens=2)
    tensors = {**hf_encoder_layout(sources["target_encoder"], nested_attention), **hf_predictor_layout(pred2)}
    assert "encoder.layer.3.attention.query.weight" in tensors or nested_attention
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    encoder = load_official_checkpoint(path, "encoder", model=tiny_encoder(seed=8))
    torch.testing.assert_close(encode(encoder, sources), encode(sources["target_encoder"], sources))
    predictor = load_official_checkpoint(path, "predictor", model=small_predictor(seed=9))
    for index in (0, 1):
        torch.testing.assert_close(predict(predictor, sources, index), predict(pred2, sources, index))
    out = convert_checkpoint(path, tmp_path / "converted", "all", predictor_overrides={"num_heads": 4})
    assert json.loads((out / "config.json").read_text())["parts"] == ["encoder", "predictor"]
    torch.testing.assert_close(load_file(str(out / "model.safetensors"))["predictor.mask_tokens.1"], pred2.mask_tokens[1])


def test_wrong_shapes_name_the_key(official_file, sources, tmp_path):
    with pytest.raises(CheckpointMismatchError, match=r"'patch_embed.proj.weight': checkpoint \(192, 3, 2, 8, 8\) "
                                                      r"vs model \(192, 3, 2, 16, 16\)"):
        load_official_checkpoint(official_file, "encoder", model=tiny_encoder(seed=0, patch_size=16))
    state = official_layout(sources["encoder"])
    state["module.backbone.blocks.4.mlp.fc1.weight"] = torch.zeros(700, 192)
    path = tmp_path / "bad.pt"
    torch.save({"encoder": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"'blocks.4.mlp.fc1.weight': checkpoint \(700, 192\)"):
        load_official_checkpoint(path, "encoder", model=tiny_encoder(seed=0))


def test_missing_and_unexpected_keys_are_listed(sources, tmp_path):
    state = official_layout(sources["encoder"], "module.")
    del state["module.blocks.2.norm1.bias"]
    state["module.head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save({"target_encoder": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[blocks.2.norm1.bias\].*unexpected keys \[head.weight\]"):
        load_official_checkpoint(path, "target_encoder", model=tiny_encoder(seed=0))


def test_bad_files_and_parts_are_named(official_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_official_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(KeyError, match=r"no 'predictor' state dict; it has \['encoder'\]"):
        path = tmp_path / "enc_only.pt"
        torch.save({"encoder": {"patch_embed.proj.weight": torch.zeros(1)}}, path)
        load_official_checkpoint(path, "predictor")
    with pytest.raises(ValueError, match="which='decoder'"):
        load_official_checkpoint(official_file, "decoder")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(official_file.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pt is not a readable torch checkpoint"):
        load_official_checkpoint(truncated)

    pickled = tmp_path / "pickled.pt"
    torch.save({"encoder": Payload()}, pickled)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_official_checkpoint(pickled, "encoder")


def test_ijepa_layout_with_sincos_table_and_single_mask_token(tmp_path):
    enc = tiny_encoder(3, patch_embed="2d", pos_embed="sincos")
    pred = small_predictor(4, num_mask_tokens=1, pos_embed="sincos")
    enc_state = official_layout(enc, "module.")
    enc_state["module.pos_embed"] = sincos_table((1, 4, 4), 192).unsqueeze(0)  # I-JEPA stores the fixed table
    pred_state = official_layout(pred, "module.")
    pred_state["module.mask_token"] = pred_state.pop("module.mask_tokens.0")
    pred_state["module.predictor_pos_embed"] = sincos_table((1, 4, 4), 48).unsqueeze(0)
    path = tmp_path / "ijepa.pth.tar"
    torch.save({"encoder": enc_state, "target_encoder": enc_state, "predictor": pred_state}, path)
    image = torch.randn(2, 3, 32, 32)
    loaded = load_official_checkpoint(path, "target_encoder", img_size=32)
    assert loaded.cfg.pos_embed == "sincos" and loaded.cfg.patch_embed == "2d"
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), enc(image))
    loaded_pred = load_official_checkpoint(path, "predictor", num_heads=4, pos_embed="sincos")
    torch.testing.assert_close(loaded_pred.mask_tokens[0], pred.mask_tokens[0])
    # An explicit pos_embed decides: told RoPE, the same file drops its table and rotates instead.
    told_rope = load_official_checkpoint(path, "target_encoder", pos_embed="rope")
    assert told_rope.cfg.pos_embed == "rope"
    with torch.no_grad():
        torch.testing.assert_close(told_rope(image), tiny_encoder(3, patch_embed="2d")(image))
    # A learned (non-sincos) table would silently change outputs if dropped: refuse it.
    enc_state["module.pos_embed"] = torch.randn(1, 16, 192)
    torch.save({"encoder": enc_state}, path)
    with pytest.raises(CheckpointMismatchError, match="key 'pos_embed' is not the fixed sincos table"):
        load_official_checkpoint(path, "encoder", img_size=32)


def test_convert_script_writes_our_format(official_file, sources, tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"), str(official_file), str(out),
         "--which", "all", "--predictor-num-heads", "4", "--img-size", "32", "--num-frames", "4"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["parts"] == ["target_encoder", "encoder", "predictor"]
    assert config["encoder"]["size"] == "tiny" and config["predictor"]["num_mask_tokens"] == 10
    tensors = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(tensors["target_encoder.norm.weight"], sources["target_encoder"].norm.weight)
    assert "predictor.mask_tokens.9" in tensors
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp directory
    # our own format loads back (heads come from config.json, not from a guess)
    reloaded = load_official_checkpoint(out, "predictor")
    assert reloaded.cfg.num_heads == 4
    torch.testing.assert_close(predict(reloaded, sources, 3), predict(sources["predictor"], sources, 3))
    encoder = load_official_checkpoint(out, "target_encoder")
    torch.testing.assert_close(encode(encoder, sources), encode(sources["target_encoder"], sources))


def random_large_encoder() -> VisionTransformer:
    with torch.device("meta"):
        model = VisionTransformer(ViTConfig(size="large", img_size=32, patch_size=16, num_frames=2))
    return random_weights(model, seed=0)


@pytest.mark.slow
def test_large_official_and_hf_layouts_load_strictly(tmp_path):
    source = random_large_encoder()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = source(image)
    path = tmp_path / "vitl.pt"
    torch.save({"target_encoder": official_layout(source)}, path)
    loaded = load_official_checkpoint(path, "target_encoder")
    assert (loaded.cfg.size, loaded.cfg.depth, loaded.cfg.num_heads, loaded.cfg.patch_size) == ("large", 24, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), expected)
    del loaded
    hf_path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf_encoder_layout(source).items()}, str(hf_path))
    hf_loaded = load_official_checkpoint(hf_path, "encoder")
    with torch.no_grad():
        torch.testing.assert_close(hf_loaded(image), expected)
    with torch.device("meta"):  # shapes are checked before any tensor is touched
        narrow = VisionTransformer(ViTConfig(size="large", patch_size=16, mlp_hidden_dim=2048))
    with pytest.raises(CheckpointMismatchError, match=r"'blocks.0.mlp.fc1.weight': checkpoint \(4096, 1024\) "
                                                      r"vs model \(2048, 1024\)"):
        load_official_checkpoint(path, "target_encoder", model=narrow)


def test_convert_all_when_encoder_and_target_share_storage(sources, tmp_path):
    """torch.save writes an encoder and a target encoder that are the same tensors (an EMA target at
    step 0, or a file saved from one module twice) as shared storage; safetensors refuses shared
    tensors, so the writer must copy them."""
    shared = official_layout(sources["encoder"])
    path = tmp_path / "shared.pt"
    torch.save({"encoder": shared, "target_encoder": shared, "predictor": official_layout(sources["predictor"])}, path)
    out = convert_checkpoint(path, tmp_path / "ours", which="all", predictor_overrides={"num_heads": 4})
    for part in ("encoder", "target_encoder"):
        torch.testing.assert_close(encode(load_official_checkpoint(out, which=part), sources),
                                   encode(sources["encoder"], sources), rtol=0, atol=1e-6)


def test_a_stored_pos_embed_keeps_a_video_encoder_rope_unless_told(tmp_path, sources, caplog):
    """Released V-JEPA 2 files carry a pos_embed table their RoPE encoders never add; the official hub
    loader builds RoPE and ignores it. So do we, and an explicit pos_embed='sincos' decides otherwise."""
    rope = tiny_encoder(21)
    state = official_layout(rope)
    state["module.backbone.pos_embed"] = sincos_table((2, 4, 4), 192).unsqueeze(0)
    path = tmp_path / "vitt-rope-with-table.pt"
    torch.save({"encoder": state}, path)
    with caplog.at_level(logging.INFO, logger="jepa_world.models.official"):
        loaded = load_official_checkpoint(path, "encoder")
    assert loaded.cfg.pos_embed == "rope"
    assert "--pos-embed sincos" in caplog.text and "dropping pos_embed from the checkpoint: the model uses RoPE" in caplog.text
    torch.testing.assert_close(encode(loaded, sources), encode(rope, sources), rtol=0, atol=0)
    told = load_official_checkpoint(path, "encoder", pos_embed="sincos", num_frames=4)
    assert (told.cfg.pos_embed, told.cfg.img_size) == ("sincos", 32)  # the table fixes the nominal grid
    sincos = tiny_encoder(21, pos_embed="sincos")  # the same weights, positions added from the table
    torch.testing.assert_close(encode(told, sources), encode(sincos, sources))
    assert not torch.allclose(encode(told, sources), encode(rope, sources), atol=1e-3)
    out = convert_checkpoint(path, tmp_path / "sincos", "encoder", encoder_overrides={"pos_embed": "sincos", "num_frames": 4})
    assert json.loads((out / "config.json").read_text())["encoder"]["pos_embed"] == "sincos"
    torch.testing.assert_close(encode(load_official_checkpoint(out, "encoder"), sources), encode(sincos, sources))


def test_a_width_outside_the_size_tables_needs_its_head_count(tmp_path, sources):
    odd = tiny_encoder(31, embed_dim=160, depth=2, num_heads=5, mlp_hidden_dim=320)
    path = tmp_path / "odd.pt"
    torch.save({"encoder": official_layout(odd), "predictor": official_layout(sources["predictor"])}, path)
    with pytest.raises(CheckpointMismatchError, match=r"odd.pt \[encoder\]: cannot tell the head count of a 160-wide "
                                                      r"encoder.*10 \(head_dim 16\) or 5 \(head_dim 32\) or 2 "
                                                      r"\(head_dim 80\).*--num-heads"):
        load_official_checkpoint(path, "encoder")
    torch.testing.assert_close(encode(load_official_checkpoint(path, "encoder", num_heads=5), sources), encode(odd, sources))
    with pytest.raises(CheckpointMismatchError, match=r"48-wide predictor.*--predictor-num-heads"):
        convert_checkpoint(path, tmp_path / "out", "predictor")
    # The released predictor width keeps its 12 heads; registry encoder widths keep theirs (tests above).
    released = small_predictor(32, dim=384, depth=1, num_heads=12)
    torch.save({"predictor": official_layout(released)}, path)
    built = load_official_checkpoint(path, "predictor")
    assert built.cfg.num_heads == 12
    torch.testing.assert_close(predict(built, sources, 1), predict(released, sources, 1))


def test_non_finite_and_integer_weights_are_refused_by_key(tmp_path, sources):
    state = official_layout(sources["encoder"])
    state["module.backbone.blocks.3.attn.proj.weight"][0, 0] = float("inf")
    path = tmp_path / "inf.pt"
    torch.save({"encoder": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"inf.pt \[encoder\]: 'blocks.3.attn.proj.weight' holds 1 non-finite"):
        load_official_checkpoint(path, "encoder")
    state = official_layout(sources["encoder"])
    state["module.backbone.norm.bias"] = state["module.backbone.norm.bias"].long()
    torch.save({"encoder": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"'norm.bias' has dtype torch.int64"):
        load_official_checkpoint(path, "encoder", model=tiny_encoder(seed=0))


# --------------------------------------------------------------------------- V-JEPA 2-AC predictors

AC_FIELDS = dict(encoder_dim=192, action_dim=7, state_dim=7, extrinsics_dim=6, grid_hw=(4, 4), dim=96, depth=2, num_heads=4)


# At std 0.05 the LayerNorm gains are so small that attention barely moves the output (a wrong RoPE
# layout changes it by 3e-6 relative); at 0.3 it changes it by 5e-2, so outputs test every part.
AC_WEIGHT_STD = 0.3


def ac_predictor(seed: int, **overrides) -> ACPredictor:
    # Built on the CPU: ACPredictor computes its RoPE step template at construction.
    return random_weights(ACPredictor(ACPredictorConfig(**{**AC_FIELDS, **overrides})), seed, AC_WEIGHT_STD)


def ac_inputs(steps: int = 3):
    generator = torch.Generator().manual_seed(5)
    return (torch.randn(2, steps, 16, 192, generator=generator), torch.randn(2, steps, 7, generator=generator),
            torch.randn(2, steps, 7, generator=generator))


@pytest.fixture(scope="module")
def ac_file(sources, tmp_path_factory):
    """An official vjepa2_ac training checkpoint: RoPE encoders that still store a pos_embed table, and
    the action-conditioned predictor (action, state and unused extrinsics projections)."""
    encoder = official_layout(sources["encoder"])
    encoder["module.backbone.pos_embed"] = sincos_table((2, 4, 4), 192).unsqueeze(0)
    predictor = ac_predictor(41)
    path = tmp_path_factory.mktemp("ac") / "vjepa2-ac-vitt.pt"
    torch.save({"encoder": encoder, "target_encoder": encoder, "predictor": official_layout(predictor),
                "opt": {"state": {}, "param_groups": []}, "epoch": 1}, path)
    return path, predictor


@torch.no_grad()
def test_official_ac_predictor_loads_into_ac_predictor(ac_file):
    path, source = ac_file
    loaded = load_official_checkpoint(path, "predictor", grid_hw=(4, 4)).eval()
    assert isinstance(loaded, ACPredictor)
    cfg = loaded.config
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.action_dim, cfg.state_dim, cfg.extrinsics_dim) == (96, 2, 4, 7, 7, 6)
    assert not cfg.predict_residual  # the official predictor is absolute
    z, actions, states = ac_inputs()
    torch.testing.assert_close(loaded(z, actions, states), source(z, actions, states), rtol=0, atol=0)
    assert load_official_checkpoint(path, "predictor").config.grid_hw == OFFICIAL_AC_GRID_HW  # weights cannot tell
    into = ac_predictor(0)
    load_official_checkpoint(path, "predictor", model=into)
    torch.testing.assert_close(into.eval()(z, actions, states), source(z, actions, states), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"action_dim=7.*action_dim=3"):  # the AC loader's own check
        load_official_checkpoint(path, "predictor", model=ac_predictor(0, action_dim=3))


@torch.no_grad()
def test_convert_all_writes_an_ac_directory_our_loaders_read(ac_file, sources, tmp_path):
    path, source = ac_file
    out = convert_checkpoint(path, tmp_path / "ours", "all", predictor_overrides={"grid_hw": (4, 4)})
    config = json.loads((out / "config.json").read_text())
    assert config["parts"] == ["target_encoder", "encoder", "predictor"]
    assert config["encoder"]["pos_embed"] == "rope"
    assert config["predictor"]["grid_hw"] == [4, 4] and config["predictor"]["action_dim"] == 7
    assert "predictor.action_encoder.weight" in load_file(str(out / "model.safetensors"))
    predictor = load_official_checkpoint(out, "predictor").eval()  # exact config from config.json
    z, actions, states = ac_inputs()
    torch.testing.assert_close(predictor(z, actions, states), source(z, actions, states), rtol=0, atol=0)
    torch.testing.assert_close(encode(load_official_checkpoint(out, "encoder"), sources), encode(sources["encoder"], sources))


def test_convert_script_converts_an_ac_predictor(ac_file, tmp_path):
    path, source = ac_file
    out = tmp_path / "ac"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"), str(path), str(out), "--which", "predictor",
         "--ac-grid-hw", "4", "4"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["predictor"]["grid_hw"] == [4, 4]
    tensors = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(tensors["predictor.extrinsics_encoder.weight"], source.extrinsics_encoder.weight)


VJEPA2_SRC = os.environ.get("VJEPA2_SRC")


@pytest.mark.skipif(not VJEPA2_SRC, reason="set VJEPA2_SRC to a checkout of facebookresearch/vjepa2 to compare "
                                           "with the official AC predictor's forward")
@torch.no_grad()
def test_converted_ac_predictor_matches_the_official_forward(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(VJEPA2_SRC)
    official = importlib.import_module("src.models.ac_predictor")
    reference = official.vit_ac_predictor(img_size=(32, 32), patch_size=8, num_frames=6, tubelet_size=2, embed_dim=192,
                                          predictor_embed_dim=96, depth=2, num_heads=4)
    reference = random_weights(reference, 44, AC_WEIGHT_STD)
    path = tmp_path / "vjepa2-ac.pt"
    torch.save({"predictor": official_layout(reference)}, path)
    z, actions, states = ac_inputs()
    expected = reference(z.flatten(1, 2), actions, states)  # (B, T*N, D)

    def relative_error(**overrides) -> float:
        ours = load_official_checkpoint(path, "predictor", grid_hw=(4, 4), **overrides).eval()
        return ((ours(z, actions, states).flatten(1, 2) - expected).norm() / expected.norm()).item()

    assert relative_error() < 1e-6  # measured: 0 (bit-identical)
    assert relative_error(rope_layout="interleaved") > 1e-2  # the comparison sees a wrong rotation


def test_ac_predictor_errors_name_the_width_and_the_key(tmp_path):
    path = tmp_path / "ac.pt"
    odd = ac_predictor(43, dim=80)
    torch.save({"predictor": official_layout(odd)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"80-wide AC predictor.*--predictor-num-heads"):
        load_official_checkpoint(path, "predictor")
    assert load_official_checkpoint(path, "predictor", num_heads=4).config.num_heads == 4
    state = official_layout(odd)
    state["module.backbone.action_encoder.bias"][3] = float("nan")
    torch.save({"predictor": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"\[predictor\]: 'action_encoder.bias' holds 1 non-finite"):
        load_official_checkpoint(path, "predictor", num_heads=4)

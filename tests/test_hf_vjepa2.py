"""A real (small, random) Hugging Face ``VJEPA2Model`` with non-default head counts converts exactly:
the head counts come from its config.json, not from a guess on the width (issue #13, class 4)."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason='needs transformers (the language extra): pip install -e ".[language]"')

from jepa_world.models.official import convert_checkpoint, load_official_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    # 6 heads at width 192 (our "tiny" size has 3) and a 96-wide predictor with 4 heads (released: 12).
    config = transformers.VJEPA2Config(hidden_size=192, num_attention_heads=6, num_hidden_layers=2,
                                       pred_hidden_size=96, pred_num_attention_heads=4, pred_num_hidden_layers=2,
                                       crop_size=32, frames_per_clip=4, patch_size=8, tubelet_size=2,
                                       pred_num_mask_tokens=2)
    model = transformers.VJEPA2Model(config).eval()
    with torch.no_grad():
        for token in model.predictor.embeddings.mask_tokens:
            token.normal_()  # distinct mask tokens, so picking the wrong one shows
    directory = tmp_path_factory.mktemp("hf") / "vjepa2"
    model.save_pretrained(directory)
    return directory, model


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_encoder_and_predictor_match_the_hf_model(hf_dir):
    directory, hf = hf_dir
    encoder = load_official_checkpoint(directory, which="encoder").eval()
    predictor = load_official_checkpoint(directory, which="predictor").eval()
    assert (encoder.cfg.num_heads, predictor.cfg.num_heads) == (6, 4)
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # (B, T, C, H, W), HF layout
    context, target = torch.arange(20)[None].expand(2, -1), torch.arange(20, 32)[None].expand(2, -1)
    with torch.no_grad():
        theirs = hf.encoder(pixel_values_videos=video).last_hidden_state  # (B, N, D)
        ours = encoder(video.permute(0, 2, 1, 3, 4))
        assert relative(ours, theirs) < 1e-5
        predicted = hf.predictor(theirs, [context], [target]).last_hidden_state
        ours_predicted = predictor(theirs[:, :20], context, target, (2, 4, 4), mask_index=1)
        assert relative(ours_predicted, predicted) < 1e-5
        # HF (like the official code at inference) uses mask token 1; ours defaults to 0, the token of
        # the first mask generator in training (docs/pretraining.md): pass mask_index=1 to match.
        assert relative(predictor(theirs[:, :20], context, target, (2, 4, 4)), predicted) > 1e-3


def test_convert_checkpoint_keeps_the_hf_head_counts(hf_dir, tmp_path):
    directory, _ = hf_dir
    out = convert_checkpoint(directory / "model.safetensors", tmp_path / "ours")
    converted = load_official_checkpoint(out, which="encoder")
    assert converted.cfg.num_heads == 6 and load_official_checkpoint(out, which="predictor").cfg.num_heads == 4


def truncate(rows: int):
    return lambda tensor: tensor[:rows]


def poison(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("nan")
    return tensor


LAYER1 = "encoder.layer.1.attention"
QKV = ("query", "key", "value")
# (which part, {file key: edit, None deletes it}, what the error must say). Every case is a
# tensor that looks fine in one place (the right name, or the right shape) but cannot be fused or
# used; each must be reported under the file's own key, not under our fused 'attn.qkv'.
BAD_HF_TENSORS = {
    "truncated key": ("encoder", {f"{LAYER1}.key.weight": truncate(184)}, rf"'{LAYER1}\.key\.weight' \(184, 192\)"),
    "missing key bias": ("encoder", {f"{LAYER1}.key.bias": None}, rf"lacks '{LAYER1}\.key\.bias'"),
    "a layer without biases": ("encoder", {f"encoder.layer.0.attention.{n}.bias": None for n in QKV},
                               r"lacks 'encoder\.layer\.0\.attention\.query\.bias', 'encoder\.layer\.0\.attention\."
                               r"key\.bias', 'encoder\.layer\.0\.attention\.value\.bias'"),
    "half-precision key": ("encoder", {f"{LAYER1}.key.weight": lambda t: t.half()},
                           rf"differ in dtype: .*'{LAYER1}\.key\.weight' torch\.float16"),
    "integer projections": ("encoder", {f"{LAYER1}.{n}.weight": lambda t: t.to(torch.int32) for n in QKV},
                            rf"'{LAYER1}\.query\.weight' has dtype torch\.int32, expected a floating-point tensor"),
    "NaN in value": ("encoder", {f"{LAYER1}.value.weight": poison}, rf"'{LAYER1}\.value\.weight' holds 1 non-finite"),
    "NaN in a predictor query bias": ("predictor", {"predictor.layer.0.attention.query.bias": poison},
                                      r"'predictor\.layer\.0\.attention\.query\.bias' holds 1 non-finite"),
    "NaN in an MLP": ("encoder", {"encoder.layer.0.mlp.fc1.weight": poison},
                      r"'blocks\.0\.mlp\.fc1\.weight' \(the file's 'encoder\.layer\.0\.mlp\.fc1\.weight'\) holds 1 non-finite"),
    # consistent among themselves, wrong for the model: the fused key is named with the file's three
    "all three truncated": ("encoder", {f"{LAYER1}.{n}.{kind}": truncate(184) for n in QKV for kind in ("weight", "bias")},
                            rf"'blocks\.1\.attn\.qkv\.weight' \(the file's '{LAYER1}\.query\.weight', '{LAYER1}\.key\."
                            rf"weight', '{LAYER1}\.value\.weight'\): checkpoint \(552, 192\) vs model \(576, 192\)"),
}


@pytest.mark.parametrize("case", list(BAD_HF_TENSORS))
def test_a_bad_hf_tensor_is_named_by_the_files_own_key(hf_dir, tmp_path, case):
    from safetensors.torch import load_file, save_file

    from jepa_world.models.official import CheckpointMismatchError

    directory, _ = hf_dir
    which, edits, message = BAD_HF_TENSORS[case]
    tensors = load_file(str(directory / "model.safetensors"))
    for key, edit in edits.items():
        if edit is None:
            del tensors[key]
        else:
            tensors[key] = edit(tensors[key]).contiguous()
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(tensors, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((directory / "config.json").read_text())  # the real head counts
    with pytest.raises(CheckpointMismatchError, match=message) as raised:
        load_official_checkpoint(bad, which=which)
    if case != "all three truncated":
        assert "qkv" not in str(raised.value)

"""Convert an official V-JEPA 2 / V-JEPA 2-AC / I-JEPA / HF VJEPA2 checkpoint into jepa_world's format.

    python scripts/convert_checkpoint.py vitl.pt outputs/vjepa2-vitl --which all
    python scripts/convert_checkpoint.py hf/model.safetensors outputs/vitl-target --which encoder
    python scripts/convert_checkpoint.py vjepa2-ac-vitg.pt outputs/vjepa2-ac --which all

Writes OUT_DIR/model.safetensors (keys "<part>.*") and OUT_DIR/config.json atomically; files are
read with safetensors or torch.load(weights_only=True), never unpickled. A V-JEPA 2-AC predictor
(the file's predictor has an action_encoder) is written as our ACPredictor, and
load_official_checkpoint(OUT_DIR, "predictor") reads it back. Where the weights cannot tell the
head count (a width outside the size tables), pass --num-heads / --predictor-num-heads.
"""
import argparse
import logging

from jepa_world.models.official import PARTS, convert_checkpoint
from jepa_world.models.vit import POS_EMBEDS, VIT_SIZES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="official .pt/.pth/.tar, HF .safetensors/.bin, or a jepa_world checkpoint dir")
    parser.add_argument("output_dir")
    parser.add_argument("--which", default="all", choices=("all", *PARTS))
    parser.add_argument("--size", choices=tuple(VIT_SIZES), help="encoder size name (sets num_heads)")
    parser.add_argument("--num-heads", type=int, help="encoder heads, for widths not in VIT_SIZES")
    parser.add_argument("--pos-embed", choices=POS_EMBEDS,
                        help="encoder positions; default: RoPE for video encoders even when the file stores a "
                             "pos_embed table (as the official V-JEPA 2 loader), sincos for I-JEPA's 2-D ones")
    parser.add_argument("--img-size", type=int, help="nominal input size recorded in config.json")
    parser.add_argument("--num-frames", type=int, help="nominal frames per clip recorded in config.json")
    parser.add_argument("--predictor-num-heads", type=int,
                        help="predictor heads, for widths other than the released 384 (12 heads) / AC 1024 (16 heads)")
    parser.add_argument("--predictor-pos-embed", choices=POS_EMBEDS, help="sincos for I-JEPA / V-JEPA 1")
    parser.add_argument("--ac-grid-hw", type=int, nargs=2, metavar=("H", "W"),
                        help="V-JEPA 2-AC predictor frame token grid (default 16 16: 256 px frames, 16 px patches)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    encoder = {"size": args.size, "num_heads": args.num_heads, "pos_embed": args.pos_embed, "img_size": args.img_size,
               "num_frames": args.num_frames}
    predictor = {"num_heads": args.predictor_num_heads, "pos_embed": args.predictor_pos_embed,
                 "grid_hw": tuple(args.ac_grid_hw) if args.ac_grid_hw else None}
    out = convert_checkpoint(
        args.source,
        args.output_dir,
        args.which,
        encoder_overrides={k: v for k, v in encoder.items() if v is not None},
        predictor_overrides={k: v for k, v in predictor.items() if v is not None},
    )
    print(f"wrote {out}/model.safetensors and {out}/config.json")


if __name__ == "__main__":
    main()

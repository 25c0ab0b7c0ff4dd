"""Tiny random CLIP models of the real transformers classes, saved in the real on-disk formats.

The vocabulary is OpenAI's real BPE vocabulary (from open_clip), so token ids
are the real ones; only the weights are random and the widths tiny.
"""

from __future__ import annotations

from pathlib import Path

TINY_IMAGE_SIZE = 32
TINY_DIM = 16


def write_tiny_clip(out: Path, *, seed: int = 0, image_size: int = TINY_IMAGE_SIZE) -> Path:
    """A transformers-format CLIP directory (config, safetensors, tokenizer files, preprocessor config)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from helpers.clip_vocab import write_clip_vocab

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            # The ids of openai/clip-vit-base-patch32's config.json: eos_token_id=2 makes
            # transformers pool at argmax(input_ids) (its legacy rule), as for the real checkpoint.
            max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=TINY_DIM,
    )
    model = CLIPModel(cfg).eval()
    # Random init leaves LayerNorms at identity and biases at 0: perturb them so
    # that every parameter matters to the parity checks.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    write_clip_vocab(out)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def write_tiny_st_clip(hf_dir: Path, out: Path) -> Path:
    """The same model as a sentence-transformers `clip-ViT-*` directory, saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import CLIPModel as STCLIP

    st = SentenceTransformer(modules=[STCLIP(str(hf_dir))], device="cpu")
    st.save(str(out))
    return out

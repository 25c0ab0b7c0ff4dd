"""The bench fixture that makes random-weight full-size CLIP checkpoints (issue 15's ViT-L/14 export figures)."""

from __future__ import annotations

import json

import pytest

from crossmodal.bench import fixtures


def test_vit_l14_sizes_are_openai_clip_vit_large_patch14():
    cfg = fixtures.clip_config("ViT-L/14")
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (1024, 4096, 24, 16)
    assert (v.image_size, v.patch_size) == (224, 14)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (768, 12, 12)
    assert cfg.projection_dim == 768
    # Pooling at the first end-of-text token needs openai's token ids.
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (0, 2, 1)


def test_vit_b32_is_transformers_default_and_unknown_sizes_are_refused():
    cfg = fixtures.clip_config("ViT-B/32")
    assert (cfg.vision_config.hidden_size, cfg.vision_config.patch_size, cfg.projection_dim) == (768, 32, 512)
    with pytest.raises(ValueError, match="ViT-L/14"):
        fixtures.clip_config("ViT-H/14")


def test_command_line_saves_a_checkpoint_marked_random(tmp_path, capsys):
    out = tmp_path / "clip"
    assert fixtures.main([str(out), "--sizes", "tiny", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "config.json").is_file() and (out / "vocab.json").is_file()
    mark = json.loads((out / fixtures.RANDOM_MARK).read_text())
    assert mark == {"weights": "random", "made_by": "crossmodal bench", "seed": 3, "sizes": "tiny"}
    random_weights, description = fixtures.describe_checkpoint("DIR", out)
    assert random_weights is True and "random weights" in description

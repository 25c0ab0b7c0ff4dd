"""ALBEF torch side: checkpoint loading (both layouts), towers and re-ranker against the golden data."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossmodal.errors import ArtifactError
from crossmodal.export.albef_checkpoint import (
    card_names,
    interpolate_pos_embed,
    load_albef,
    logit_scale,
)
from helpers.albef import (
    TINY_CKPT,
    TINY_CONFIG,
    bicubic_resize_reference,
    full_size_keys,
    golden_arrays,
    meta_state_dict,
    require_golden,
    tiny_config,
    tiny_state_dict,
    to_retrieval_layout,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    require_golden()
    return {**golden_arrays("inputs.npz"), **golden_arrays("expected.npz")}


@pytest.fixture(scope="module")
def itm() -> dict[str, np.ndarray]:
    return golden_arrays("itm/expected_itm.npz")


def _outputs(model, g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        images = torch.from_numpy(g["images"])
        ids, mask = torch.from_numpy(g["input_ids"]), torch.from_numpy(g["attention_mask"])
        image_feat, image_tokens = model.image.encode(images)
        text_feat, text_tokens = model.text.encode(ids, mask)
        return {
            "image_feat": image_feat.numpy(),
            "image_embeds": image_tokens.numpy(),
            "image_hidden_states": torch.stack(model.image.hidden_states(images)).numpy(),
            "text_feat": text_feat.numpy(),
            "text_embeds": text_tokens.numpy(),
            "text_hidden_states": torch.stack(model.text.hidden_states(ids, mask)).numpy(),
            "sim_i2t": (image_feat @ text_feat.T).numpy(),
        }


def _assert_golden(model, g: dict[str, np.ndarray]) -> None:
    out = _outputs(model, g)
    for name, value in out.items():
        np.testing.assert_allclose(value, g[name], atol=ATOL, rtol=0, err_msg=name)
    # The tower outputs really are unit vectors (the manifest will say normalized=True).
    np.testing.assert_allclose(np.linalg.norm(out["image_feat"], axis=1), 1.0, atol=1e-6)


def test_tiny_checkpoint_reproduces_golden_unimodal(golden) -> None:
    model, report = load_albef(TINY_CKPT, TINY_CONFIG)
    assert report.layout == "pretrain" and not report.pos_embed_interpolated
    assert model.config.vision.num_heads == 2 and model.config.text.fusion_layer == 2 and model.config.embed_dim == 32
    _assert_golden(model, golden)


def test_tiny_checkpoint_reproduces_golden_itm(golden, itm) -> None:
    model, _ = load_albef(TINY_CKPT, TINY_CONFIG)
    ii, ti = torch.from_numpy(itm["image_idx"]), torch.from_numpy(itm["text_idx"])
    with torch.inference_mode():
        _, image_tokens = model.image.encode(torch.from_numpy(golden["images"]))
        mask = torch.from_numpy(golden["attention_mask"])
        _, text_tokens = model.text.encode(torch.from_numpy(golden["input_ids"]), mask)
        args = (text_tokens[ti], mask[ti], image_tokens[ii])
        np.testing.assert_allclose(model.rerank.fused_cls(*args).numpy(), itm["fused_cls"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(model.rerank.logits(*args).numpy(), itm["itm_logits"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(model.rerank(*args).numpy(), itm["itm_score"], atol=ATOL, rtol=0)
        # Padding to the longest caption instead of 30 only moves masked keys (README: <= ~7e-7).
        length = int(mask.sum(1).max())
        short = (text_tokens[ti][:, :length], mask[ti][:, :length], image_tokens[ii])
        np.testing.assert_allclose(model.rerank(*short).numpy(), itm["itm_score"], atol=ATOL, rtol=0)


def test_tiny_report_accounts_for_every_key() -> None:
    sd = tiny_state_dict()
    _, report = load_albef(sd, tiny_config())
    assert report.num_consumed == 72 + 54  # towers + fusion/itm (README, itm/README)
    assert set(report.ignored) == {"momentum", "queues", "mlm_head", "temperature"}
    assert len(report.ignored["mlm_head"]) == 7 and report.ignored["temperature"] == ["temp"]
    assert sorted(report.consumed + sum(report.ignored.values(), [])) == sorted(sd)
    assert report.temp == pytest.approx(0.07) and logit_scale(report.temp) == pytest.approx(1 / 0.07)
    _, unimodal = load_albef(sd, tiny_config(), with_rerank=False)
    assert unimodal.num_consumed == 72 and len(unimodal.ignored["fusion"]) == 54


def test_ignored_tensors_are_never_read(golden) -> None:
    """Scrambling momentum copies, queues, temp and the MLM head leaves every output bit-identical."""
    sd = tiny_state_dict()
    _, report = load_albef(sd, tiny_config())
    gen = torch.Generator().manual_seed(0)
    for category in ("momentum", "queues", "mlm_head", "temperature"):
        for key in report.ignored[category]:
            if key == "text_encoder.cls.predictions.decoder.weight":
                continue  # tied to the word embeddings (checked separately)
            t = sd[key]
            sd[key] = torch.randn(t.shape, generator=gen).to(t.dtype) if t.is_floating_point() else t + 7
    model, _ = load_albef(sd, tiny_config())
    _assert_golden(model, golden)
    # ...while reading the momentum copies instead is caught by the golden data.
    swapped = tiny_state_dict()
    for key in list(swapped):
        m = re.match(r"^(visual_encoder|text_encoder|vision_proj|text_proj)_m\.(.*)$", key)
        if m:
            swapped[f"{m.group(1)}.{m.group(2)}"] = swapped[key]
    swapped["text_encoder.cls.predictions.decoder.weight"] = swapped["text_encoder.bert.embeddings.word_embeddings.weight"]
    wrong, _ = load_albef(swapped, tiny_config())
    out = _outputs(wrong, golden)
    assert np.abs(out["image_feat"] - golden["image_feat"]).max() > 1e-2
    assert np.abs(out["text_feat"] - golden["text_feat"]).max() > 1e-2


def test_retrieval_layout_of_tiny_checkpoint(golden, itm) -> None:
    sd = to_retrieval_layout(tiny_state_dict())
    model, report = load_albef(sd, tiny_config())
    assert report.layout == "retrieval" and "mlm_head" not in report.ignored
    assert "idx_queue" in report.ignored["queues"] and report.num_consumed == 126
    _assert_golden(model, golden)


def test_missing_key_is_named(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    del sd["text_encoder.bert.encoder.layer.1.attention.self.key.bias"]
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ArtifactError, match=r"broken\.pth.*text_encoder\.bert\.encoder\.layer\.1\.attention\.self\.key\.bias"):
        load_albef(path, TINY_CONFIG)
    sd = tiny_state_dict()
    del sd["itm_head.bias"]
    load_albef(sd, tiny_config(), with_rerank=False)  # the towers alone do not need it
    with pytest.raises(ArtifactError, match=r"itm_head\.bias"):
        load_albef(sd, tiny_config())


def test_unknown_keys_wrong_config_and_edited_ties_are_errors() -> None:
    sd = tiny_state_dict()
    sd["text_encoder.bert.pooler.dense.weight"] = torch.zeros(16, 16)
    with pytest.raises(ArtifactError, match="pooler"):
        load_albef(sd, tiny_config())
    _, report = load_albef(sd, tiny_config(), strict=False)
    assert report.ignored["unknown"] == ["text_encoder.bert.pooler.dense.weight"]
    with pytest.raises(ArtifactError, match=r"declares vision.width=768 but .* imply 64"):
        load_albef(tiny_state_dict(), "albef_4m")
    sd = tiny_state_dict()
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(ArtifactError, match="tied"):
        load_albef(sd, tiny_config())
    with pytest.raises(ArtifactError, match="not an ALBEF checkpoint"):
        load_albef({"foo": torch.zeros(1)}, tiny_config())


def test_non_tensor_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pth"
    torch.save({"model": tiny_state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ArtifactError, match=r"with_args\.pth.*tensors only"):
        load_albef(path, TINY_CONFIG)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_albef(tmp_path / "nope.pth", TINY_CONFIG)


def test_yaml_config_in_original_vocabulary(tmp_path: Path, golden) -> None:
    cfg = tiny_config()
    (tmp_path / "configs").mkdir()
    import json

    (tmp_path / "configs" / "config_bert.json").write_text(json.dumps(cfg["bert_config"]))
    yaml_text = "bert_config: 'configs/config_bert.json'\nimage_res: 64\nvision_width: 64\nembed_dim: 32\ntemp: 0.07\n"
    (tmp_path / "configs" / "Tiny.yaml").write_text(yaml_text)
    # The vision heads are hard-coded in the original (12), the tiny model has 2: they must come from a vision_config.
    with pytest.raises(ArtifactError, match="vision width 64 is not divisible by 12"):
        load_albef(tiny_state_dict(), tmp_path / "configs" / "Tiny.yaml")
    (tmp_path / "configs" / "Tiny.yaml").write_text(yaml_text + "vision_config: {num_heads: 2}\n")
    model, report = load_albef(tiny_state_dict(), tmp_path / "configs" / "Tiny.yaml")
    assert report.config_sources["vision.num_heads"] == "config"
    _assert_golden(model, golden)


@pytest.mark.parametrize("layout,card", [("pretrain", "albef_4m"), ("pretrain", "albef_14m"),
                                         ("retrieval", "retrieval_coco"), ("retrieval", "retrieval_flickr")])
def test_full_size_keys_are_fully_accounted_for(layout: str, card: str) -> None:
    info = full_size_keys()[layout]
    sd = meta_state_dict(layout)
    prefix = "text_encoder.bert." if layout == "pretrain" else "text_encoder."
    fusion = {k for k in sd if re.match(rf"^{re.escape(prefix)}encoder\.layer\.([6-9]|1[01])\.", k)} | {"itm_head.weight", "itm_head.bias"}

    model, report = load_albef(sd, card, with_rerank=False)
    assert set(report.consumed) == set(info["unimodal_encoder_keys"]) and report.num_consumed == 256
    assert set(report.ignored["fusion"]) == fusion and len(fusion) == 6 * 26 + 2
    expected_queues = {"image_queue", "text_queue", "queue_ptr"} | ({"idx_queue"} if layout == "retrieval" else set())
    assert set(report.ignored["queues"]) == expected_queues
    assert all(re.match(r"^(visual_encoder|text_encoder|vision_proj|text_proj)_m\.", k) for k in report.ignored["momentum"])
    assert len(report.ignored["momentum"]) == 150 + (265 if layout == "pretrain" else 258) + 4  # vit, bert(+mlm), projs
    assert len(report.ignored.get("mlm_head", [])) == (7 if layout == "pretrain" else 0)
    assert "unknown" not in report.ignored
    assert report.num_consumed + sum(map(len, report.ignored.values())) == info["num_keys"]
    cfg = model.config
    assert (cfg.vision.width, cfg.vision.depth, cfg.text.hidden_size, cfg.text.fusion_layer, cfg.embed_dim) == (768, 12, 768, 6, 256)
    assert cfg.vision.image_res == (256 if layout == "pretrain" else 384) and not report.pos_embed_interpolated

    _, with_rerank = load_albef(sd, card)
    assert set(with_rerank.consumed) == set(info["unimodal_encoder_keys"]) | fusion and "fusion" not in with_rerank.ignored


def test_pretrain_checkpoint_at_retrieval_resolution() -> None:
    """ALBEF_4M.pth exported with a retrieval card gets its 257 positions resized to 577, as Retrieval.py does."""
    model, report = load_albef(meta_state_dict("pretrain"), "retrieval_coco", with_rerank=False)
    assert report.pos_embed_interpolated and (report.checkpoint_image_res, report.image_res) == (256, 384)
    assert tuple(model.image.pos_embed.shape) == (1, 577, 768)


def test_pos_embed_interpolation_matches_bicubic_resize(golden) -> None:
    """A checkpoint trained at 64 pixels exported at 96: the 4x4 grid becomes 6x6 by the original's bicubic resize."""
    sd = tiny_state_dict()
    pos = sd["visual_encoder.pos_embed"]
    model, report = load_albef(sd, tiny_config(), image_res=96)
    assert report.pos_embed_interpolated and report.image_res == 96
    got = model.image.pos_embed.detach()
    assert got.shape == (1, 37, 64)
    assert torch.equal(got[:, 0], pos[:, 0])  # [CLS] kept as is
    # 1. The same torch call as the original fine-tuning code, bit for bit.
    grid = pos[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    original = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    assert torch.equal(got[:, 1:], original)
    # 2. That call is the half-pixel, a=-0.75 bicubic resize, written independently.
    ref = bicubic_resize_reference(grid[0].numpy(), 6).transpose(1, 2, 0).reshape(36, 64)
    np.testing.assert_allclose(got[0, 1:].numpy(), ref, atol=1e-6, rtol=0)
    # The model runs at 96 pixels and only the position table differs from the 64-pixel model.
    with torch.inference_mode():
        feat, tokens = model.image.encode(torch.zeros(2, 3, 96, 96))
    assert feat.shape == (2, 32) and tokens.shape == (2, 37, 64)
    # Same resolution: the table is returned untouched.
    assert interpolate_pos_embed(pos, 4) is pos


def test_cards_are_complete() -> None:
    assert set(card_names()) == {"albef_4m", "albef_14m", "retrieval_coco", "retrieval_flickr"}
    from crossmodal.export.albef_checkpoint import read_config_file

    for name in card_names():
        card = read_config_file(name)
        assert card["checkpoint"]["url"].startswith("https://storage.googleapis.com/sfr-pcl-data-research/ALBEF/")
        assert card["embed_dim"] == 256 and card["tokenizer"] == "bert-base-uncased"
        assert card["yaml_config"]["image_res"] == card["preprocessing"]["image_res"]
    with pytest.raises(ArtifactError, match="neither a model card"):
        read_config_file("albef_999m")


def test_bare_state_dict_file_loads(tmp_path: Path, golden) -> None:
    """Some users re-save only the state dict; the tensors-only reader accepts it too."""
    path = tmp_path / "bare.pth"
    torch.save(tiny_state_dict(), path)
    model, report = load_albef(path, TINY_CONFIG, with_rerank=False)
    assert report.source == str(path) and report.num_consumed == 72
    _assert_golden(model, golden)

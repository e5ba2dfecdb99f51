"""Language encoders: the offline MiniLM (real weights), the open_clip text tower from a local file, the
clear error when CLIP weights are missing, and the cached instruction table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vpdd.models.language import (
    InstructionTable,
    LanguageError,
    build_text_encoder,
    encoder_identity,
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_gives_real_offline_sentence_embeddings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = SimpleNamespace(encoder="minilm", clip_model="RN50", clip_checkpoint="")
    enc = build_text_encoder(cfg)
    assert build_text_encoder(cfg) is enc  # loaded once per process
    v = enc.encode(["pick up the red block", "grasp the red cube", "the weather is nice today"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.2  # pretrained, not random
    ident = encoder_identity(cfg)
    assert ident["dim"] == 384 and len(ident["weights_sha256"]) == 64
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_instruction_table_encodes_unseen_strings_once_and_lazily():
    calls = []

    class Counting:
        dim = 3

        def encode(self, texts):
            calls.append(list(texts))
            return np.stack([np.full(3, len(t), np.float32) for t in texts])

    table = InstructionTable(3, ["a"], torch.ones(1, 3), encoder_factory=Counting)
    assert torch.equal(table.lookup(["a", "a"]), torch.ones(2, 3)) and calls == []  # cached: no encoder built
    out = table.lookup(["bbb", "a", "cc", "bbb"])
    assert out[:, 0].tolist() == [3.0, 1.0, 2.0, 3.0] and calls == [["bbb", "cc"]]
    assert len(table) == 3 and table.lookup(["cc"])[0, 0] == 2.0 and len(calls) == 1
    with pytest.raises(ValueError, match="2 strings"):
        InstructionTable(3, ["a", "b"], torch.zeros(1, 3))
    with pytest.raises(LanguageError, match="no text encoder"):
        InstructionTable(3).lookup(["x"])


def test_missing_clip_weights_say_where_to_put_them(tmp_path):
    for ckpt in ("", str(tmp_path / "models/clip/RN50.pt")):
        cfg = SimpleNamespace(encoder="clip", clip_model="RN50-quickgelu", clip_checkpoint=ckpt)
        with pytest.raises(LanguageError) as err:
            build_text_encoder(cfg)
        msg = str(err.value)
        assert "model.language.clip_checkpoint" in msg and "open_clip" in msg and "minilm" in msg
        if ckpt:
            assert ckpt in msg


def test_clip_text_tower_loads_local_weights(tmp_path):
    """A small open_clip architecture (registered like any open_clip config), random weights saved to a local
    file: the encoder loads the text tower from it, encodes, and refuses a file without the text keys."""
    import open_clip

    cfg_file = tmp_path / "vpdd-tiny-clip.json"
    cfg_file.write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(str(cfg_file))
    torch.manual_seed(0)
    model = open_clip.create_model("vpdd-tiny-clip", pretrained=None)
    text_only = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    torch.save(text_only, tmp_path / "clip.pt")
    cfg = SimpleNamespace(encoder="clip", clip_model="vpdd-tiny-clip", clip_checkpoint=str(tmp_path / "clip.pt"))
    enc = build_text_encoder(cfg)
    v = enc.encode(["open the drawer", "press the button"])
    assert v.shape == (2, 24) and enc.dim == 24 == encoder_identity(cfg)["dim"]
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer("vpdd-tiny-clip")(["open the drawer"]))
    np.testing.assert_allclose(v[0], ref[0].numpy(), rtol=1e-5, atol=1e-5)
    torch.save({"something": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(LanguageError, match="text tower keys"):
        build_text_encoder(SimpleNamespace(encoder="clip", clip_model="vpdd-tiny-clip",
                                           clip_checkpoint=str(tmp_path / "bad.pt")))

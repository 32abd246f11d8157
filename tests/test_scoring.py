"""Embedding and pair scoring shared by zero-shot, validation, retrieval and the linear probe."""

from __future__ import annotations

import numpy as np
import torch

from fgclep_plugin.model.scoring import (
    embed_ecgs,
    embed_texts,
    pair_cosines,
    pair_probability,
    similarity,
)


def _tiny():
    import open_clip

    import fgclep_plugin

    fgclep_plugin.register()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("FGCLEP-Tiny")
    return model.eval(), preprocess, open_clip.get_tokenizer("FGCLEP-Tiny")


def test_embeddings_match_direct_encoding_and_repeats_share_rows():
    model, preprocess, tok = _tiny()
    rng = np.random.default_rng(0)
    ecgs = torch.stack(
        [preprocess(torch.from_numpy(rng.normal(size=(12, 5000)).astype(np.float32))) for _ in range(5)]
    )
    emb = embed_ecgs(model, [ecgs[:3], ecgs[3:]])
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_image(ecgs), dim=-1)
    torch.testing.assert_close(emb, direct, atol=1e-5, rtol=1e-5)
    texts = ["sinus rhythm", "atrial fibrillation", "sinus rhythm", "wide QRS complex"]
    t = embed_texts(model, tok, texts, batch_size=2)
    with torch.no_grad():
        t_direct = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
    torch.testing.assert_close(t, t_direct, atol=1e-5, rtol=1e-5)
    assert torch.equal(t[0], t[2])

    cos = similarity(emb, t)
    assert cos.shape == (5, 4)
    ref = np.array([[float(np.dot(emb[i].numpy(), t[j].numpy())) for j in range(4)] for i in range(5)])
    np.testing.assert_allclose(cos.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(
        pair_cosines(emb, t, [4, 0, 2], [1, 3, 0]).numpy(), ref[[4, 0, 2], [1, 3, 0]], atol=1e-6
    )
    p = pair_probability(cos, 10.0, -10.0)
    np.testing.assert_allclose(p.numpy(), 1 / (1 + np.exp(-(10 * ref - 10))), atol=1e-6)
    np.testing.assert_allclose(pair_probability(ref, 10.0, -10.0), p.numpy(), atol=1e-6)


def test_hf_text_tower_encodes_trimmed_padding_to_the_same_embeddings():
    import open_clip

    import fgclep_plugin
    from fgclep_plugin.model.scoring import trim_padding

    fgclep_plugin.register()
    name = "FGCLEP-ResNet1d18-MiniLM"
    model = open_clip.create_model(name).eval()
    tok = open_clip.get_tokenizer(name)
    texts = ["sinus rhythm", "left bundle branch block with wide QRS complex", "T wave inversion in V1", "x"]
    full = tok(texts)
    trimmed = trim_padding(full, model)
    longest = int((full != 0).sum(1).max())  # BERT pads with 0; every sequence is shorter than the context
    assert trimmed.shape == (4, longest) < full.shape and torch.equal(trimmed, full[:, :longest])
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_text(full), dim=-1)
    torch.testing.assert_close(embed_texts(model, tok, texts, batch_size=3), direct, atol=1e-5, rtol=1e-5)
    # a tower that does not mask padding (open_clip's own transformer) gets its tokens unchanged
    tiny, _, tiny_tok = _tiny()
    assert torch.equal(trim_padding(tiny_tok(texts), tiny), tiny_tok(texts))

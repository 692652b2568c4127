"""The ALBEF-style backbone: paper parameter counts, official checkpoint layout, momentum model, objective, features."""

from __future__ import annotations

import pytest
import torch

from backbones import create_backbone
from backbones.albef import Attention, official_key
from common.errors import PelaBenchError
from common.params import count_params
from methods import create_method
from methods.lowrank import LowRankLinear, factorize, lowrank_modules

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def batch(model, b=4, length=10, seed=0, ids=None):
    g = torch.Generator().manual_seed(seed)
    size, vocab = model.cfg.img_size, model.cfg.text.vocab_size
    text_ids = torch.randint(5, vocab, (b, length), generator=g)
    text_ids[:, 0] = 2
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 7:] = 0  # one padded caption
    mlm_labels = torch.full_like(text_ids, -100)
    mlm_labels[:, 3] = text_ids[:, 3]
    mlm_ids = text_ids.clone()
    mlm_ids[:, 3] = 4
    return {"image": torch.randn(b, 3, size, size, generator=g), "text_ids": text_ids, "text_mask": mask,
            "mlm_ids": mlm_ids, "mlm_labels": mlm_labels,
            "image_id": torch.tensor(ids if ids is not None else list(range(b)))}


def test_albef_base_matches_the_papers_parameter_counts():
    with torch.device("meta"):
        model = create_backbone("albef_base", mlm=False)
    assert model.info.img_size == 384 and model.cfg.queue_size == 65536
    # Table 4: 419 M as a retrieval model (momentum copies counted), 173 M after PELA at ratio 3.
    assert count_params(model) / 1e6 == pytest.approx(419.1, abs=0.05)
    factorize(model)
    assert count_params(model) / 1e6 == pytest.approx(173.5, abs=0.05)
    layers = lowrank_modules(model)
    # Full rank: projections (online and momentum), the 2-way ITM head; factorised: the momentum copies.
    assert not any("proj" in n.split(".")[0] for n in layers) and "itm_head" not in layers
    assert "text_m.layers.11.cross_attn.q" in layers and layers["visual.blocks.0.attn.qkv"].rank == 192
    assert layers["text.layers.0.fc1"].rank == 204 and layers["text.layers.0.self_attn.q"].rank == 128


def test_vqa_model_with_a_six_layer_answer_decoder_matches_table5():
    with torch.device("meta"):
        model = create_backbone("albef_base").attach_answer_decoder()
    assert len(model.decoder.layers) == 6 and all(layer.cross_attn is not None for layer in model.decoder.layers)
    assert model.itm_head is None and model.vision_proj is None and not hasattr(model, "image_queue")
    # Table 5: 581 M dense (momentum copies counted), 259 M after PELA; the decoder's head stays full-rank.
    assert count_params(model) / 1e6 == pytest.approx(580.7, abs=0.05)
    factorize(model)
    assert count_params(model) / 1e6 == pytest.approx(259.4, abs=0.05)
    assert "decoder_head.dense" not in lowrank_modules(model) and "decoder_m.layers.5.cross_attn.v" in lowrank_modules(model)


def test_answer_decoder_starts_from_the_fusion_layers_as_albefs_vqa_script():
    model = create_backbone("albef_tiny")
    fusion_layer = {k: v.clone() for k, v in model.text.layers[2].state_dict().items()}
    embed, head = model.text.embed.word.weight.clone(), model.mlm_head.dense.weight.clone()
    model.attach_answer_decoder()
    assert all(torch.equal(model.decoder.layers[0].state_dict()[k], v) for k, v in fusion_layer.items())
    assert torch.equal(model.decoder.embed.word.weight, embed) and torch.equal(model.decoder_head.dense.weight, head)
    assert not any(p.requires_grad for p in model.decoder_m.parameters()) and model.decoder.layers[1].fc1.weight.requires_grad
    assert {n for n in model.ema_parameters() if n.startswith("decoder")}  # the EMA covers the decoder


def _to_official(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under salesforce/ALBEF's pre-training names, written out by hand."""
    layer = {"self_attn.q": "attention.self.query", "self_attn.k": "attention.self.key",
             "self_attn.v": "attention.self.value", "self_attn.out": "attention.output.dense",
             "norm1": "attention.output.LayerNorm", "cross_attn.q": "crossattention.self.query",
             "cross_attn.k": "crossattention.self.key", "cross_attn.v": "crossattention.self.value",
             "cross_attn.out": "crossattention.output.dense", "norm2": "crossattention.output.LayerNorm",
             "fc1": "intermediate.dense", "fc2": "output.dense", "norm3": "output.LayerNorm"}
    embed = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
             "norm": "LayerNorm"}
    out = {}
    for key, value in ours.items():
        top, _, rest = key.partition(".")
        if top in ("visual", "visual_m"):
            out[f"visual_encoder{top[6:]}.{rest}"] = value
        elif top in ("text", "text_m"):
            enc = f"text_encoder{top[4:]}.bert"
            parts = rest.split(".")
            if parts[0] == "embed":
                out[f"{enc}.embeddings.{embed[parts[1]]}.{parts[2]}"] = value
            else:
                out[f"{enc}.encoder.layer.{parts[1]}.{layer['.'.join(parts[2:-1])]}.{parts[-1]}"] = value
        elif top in ("mlm_head", "mlm_head_m"):
            cls = f"text_encoder{top[8:]}.cls.predictions"
            name = {"dense.weight": "transform.dense.weight", "dense.bias": "transform.dense.bias",
                    "norm.weight": "transform.LayerNorm.weight", "norm.bias": "transform.LayerNorm.bias",
                    "bias": "bias"}[rest]
            out[f"{cls}.{name}"] = value
            if rest == "bias":  # the official files also hold the decoder's tied copies
                out[f"{cls}.decoder.bias"] = value
                out[f"{cls}.decoder.weight"] = ours[f"text{top[8:]}.embed.word.weight"]
        else:
            out[key] = value
    out["text_encoder.bert.embeddings.position_ids"] = torch.arange(40)[None]
    return out


def test_official_albef_checkpoint_loads_with_weights_path(tmp_path):
    source = create_backbone("albef_tiny")
    official = _to_official(source.state_dict())
    assert "text_encoder.bert.encoder.layer.3.crossattention.self.query.weight" in official
    torch.save({"model": official}, tmp_path / "ALBEF_4M.pth")
    loaded = create_backbone("albef_tiny", weights=tmp_path / "ALBEF_4M.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # A fine-tuned retrieval checkpoint: no 'bert.' and no MLM head; a larger image grid resamples pos_embed.
    retrieval = {k.replace("bert.", ""): v for k, v in official.items() if ".cls." not in k}
    torch.save(retrieval, tmp_path / "flickr.pth")
    wide = create_backbone("albef_tiny", img_size=96, mlm=False, weights=tmp_path / "flickr.pth")
    assert wide.visual.pos_embed.shape == (1, 1 + 12 * 12, 64)
    assert torch.equal(wide.text.layers[2].cross_attn.k.weight, source.text.layers[2].cross_attn.k.weight)
    assert official_key("text_encoder.bert.pooler.dense.weight") is None
    with pytest.raises(PelaBenchError, match="unrecognised ALBEF checkpoint key 'text_encoder.bert.oddity'"):
        official_key("text_encoder.bert.oddity")
    # A checkpoint of another size is named as such, tensor by tensor.
    torch.save({"model": _to_official(create_backbone("albef_tiny", vocab_size=64).state_dict())},
               tmp_path / "small_vocab.pth")
    with pytest.raises(PelaBenchError, match=r"wrong shape.*text.embed.word.weight"):
        create_backbone("albef_tiny", weights=tmp_path / "small_vocab.pth")


def test_momentum_copies_never_train_and_follow_by_ema():
    model = create_backbone("albef_tiny")
    student = create_method("pela").build_student(model)  # a copy with gradients switched on
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and not any(n.split(".")[0].endswith("_m") for n in trainable)
    assert "temp" in trainable and "text.embed.word.weight" in trainable
    with torch.no_grad():
        model.text.layers[0].fc1.weight.add_(1.0)
    before = model.text_m.layers[0].fc1.weight.clone()
    model.momentum_update()
    step = model.text.layers[0].fc1.weight - before
    assert torch.allclose(model.text_m.layers[0].fc1.weight - before, (1 - model.cfg.momentum) * step, atol=1e-6)


def test_pretraining_objective_trains_online_encoders_and_fills_the_queue():
    torch.manual_seed(0)
    model = create_backbone("albef_tiny").train()
    b = batch(model)
    terms = model.objective_terms("vlp", b)
    assert set(terms) == {"itc", "itm", "mlm"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert model.text.layers[3].cross_attn.q.weight.grad is not None
    assert model.visual.blocks[0].attn.qkv.weight.grad is not None and model.temp.grad is not None
    assert all(p.grad is None for p in model.momentum_parameters())
    assert int(model.queue_ptr) == 4 and model.idx_queue[0, :4].tolist() == [0, 1, 2, 3]
    # Evaluation mode leaves the queue alone; retrieval's objective has no MLM term.
    model.eval()
    assert set(model.objective_terms("itc_itm", b)) == {"itc", "itm"} and int(model.queue_ptr) == 4
    # Every pair of one image: no negative in the batch, still a finite ITM loss.
    same = batch(model, ids=[7, 7, 7, 7])
    assert torch.isfinite(model.train().objective_terms("itc_itm", same)["itm"])
    with pytest.raises(PelaBenchError, match="no objective 'cls'"):
        model.objective_terms("cls", b)


def test_learnt_temperature_is_clamped_to_the_presets_floor():
    """ALBEF's floor is 0.001; the tiny preset keeps 0.05 (near-duplicate synthetic captions)."""
    for name, floor in (("albef_tiny", 0.05), ("albef_base", 0.001)):
        with torch.device("meta"):
            assert create_backbone(name).cfg.temp_min == floor
    model = create_backbone("albef_tiny").train()
    with torch.no_grad():
        model.temp.fill_(0.01)
    model.objective_terms("itc_itm", batch(model))
    assert float(model.temp.detach()) == pytest.approx(0.05)


def test_features_are_the_three_tapped_passes_of_pretraining():
    model = create_backbone("albef_tiny").eval()
    b = batch(model)
    feats = model.features(b)
    depth, text_depth, fusion_start = model.cfg.image_depth, model.cfg.text.depth, model.cfg.text.fusion_start
    assert {k: len(v) for k, v in feats.items()} == {"image": depth + 1, "text": fusion_start + 1,
                                                     "fusion": text_depth + 1}
    # The objective's own forward taps the same states (momentum and ITM passes are not captured).
    with model.capture_features() as during:
        model.objective_terms("vlp", b)
    for group, states in feats.items():
        assert len(during[group]) == len(states)
        for s, t in zip(during[group], states):
            assert torch.allclose(s, t, atol=1e-5)


def test_pela_on_albef_distils_three_groups_and_regularises_only_trained_layers():
    torch.manual_seed(0)
    teacher = create_backbone("albef_tiny").eval()
    method = create_method("pela")
    student = method.build_student(teacher).train()
    assert any(isinstance(m, LowRankLinear) for m in student.text_m.modules())  # momentum copies factorised too
    from common.objective import ModelObjective

    terms = method.loss(student, teacher, batch(teacher), ModelObjective("vlp"))
    assert {"loss", "base", "fd", "rwp"} <= set(terms) and terms["fd"] > 0
    assert method.settings(student.info).alpha == 0.1  # the official ALBEF weight, both recipes' alpha
    expected = terms["base"] + 0.1 * terms["fd"] + terms["rwp"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_unfused_attention_path_equals_the_fused_one():
    torch.manual_seed(0)
    attn = Attention(32, 4, kv_dim=16).eval()
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    fused = attn(x, ctx, mask)
    attn.keep_maps = True
    assert torch.allclose(attn(x, ctx, mask), fused, atol=1e-5)
    assert attn.maps.shape == (2, 4, 5, 7) and float(attn.maps.detach()[1, :, :, 4:].abs().max()) == 0.0


def test_paper_check_writes_albef_counts_beside_tables_4_and_5():
    from benchmark.paper_check import ENTRIES, measure

    rows = [measure(e) for e in ENTRIES if e.backbone == "albef_base"]
    got = {(r["table"], r["method"]): r["measured_params_m"] for r in rows}
    assert got == {("4", "dense"): 419.12, ("4", "pela"): 173.46, ("5", "dense"): 580.67, ("5", "pela"): 259.44,
                   ("4", "tinybert"): 234.83, ("5", "tinybert"): 339.67}
    assert all(abs(r["diff_m"]) < 0.5 and r["ratio"] == 3.0 for r in rows if r["method"] != "tinybert")


class _AccumulatingIndexPuts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts `index_put` calls that accumulate at a repeated index: indexing's backward, whose CPU kernel
    adds with atomics, so a multi-threaded run's sums come out in another order each time (a boolean
    mask's indices never repeat, so its backward is exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
                    torch.ops.aten._index_put_impl_.default):
            accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
            indices = [i for i in args[1] if i is not None]
            repeated = any(i.dtype != torch.bool and i.unique().numel() < i.numel() for i in indices)
            self.count += bool(accumulate and repeated)
        return func(*args, **kwargs)


def test_objectives_backpropagate_without_order_dependent_accumulation():
    """ALBEF's teacher trained twice from one seed on 2 threads used to differ (0.4-6 points on the smoke
    rows): its hard negatives and VQA's repeated questions were gathered by indexing."""
    torch.manual_seed(0)
    model = create_backbone("albef_tiny").train()
    b = batch(model, b=6, ids=[0, 0, 1, 1, 2, 2])  # captions sharing images: negatives drawn twice
    terms = model.objective_terms("vlp", b)
    with _AccumulatingIndexPuts() as mode:
        sum(terms.values()).backward()
    assert mode.count == 0
    vqa = create_backbone("albef_tiny").attach_answer_decoder().train()
    ids = torch.randint(5, 100, (6, 3, 4))
    ids[..., 0] = 2
    weight = torch.tensor([[0.7, 0.3, 0.0]] * 6)  # two answers per question: each question gathered twice
    loss = vqa.objective_terms("vqa", {**b, "answer_ids": ids, "answer_mask": torch.ones_like(ids),
                                       "answer_weight": weight})["vqa"]
    with _AccumulatingIndexPuts() as mode:
        loss.backward()
    assert mode.count == 0

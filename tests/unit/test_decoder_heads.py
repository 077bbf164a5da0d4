"""Decoder heads for new structures: the base's logits untouched, the merge rules, the store, training."""

from __future__ import annotations

import json

import pytest
import torch

from lib.heads.merge import MergedArgmax
from lib.heads.network import HeadedSegResNet, HeadTrainingNetwork, StructureHead, encoder_fingerprint
from lib.heads.store import HeadError, HeadRecord, HeadStore
from lib.inferers.streaming_argmax import StreamingArgmaxInferer
from lib.labels import wholebody_labels
from lib.networks import wholebody_segresnet

BASE = wholebody_labels()


def seeded_base(seed: int = 0):
    torch.manual_seed(seed)
    return wholebody_segresnet().eval()


def head_claiming_everything(base, n_structures: int = 1) -> StructureHead:
    """A head whose last structure wins every voxel: its final bias dwarfs any logit."""
    head = StructureHead.from_base(wholebody_segresnet, base, n_structures)
    with torch.no_grad():
        head.conv_final[-1].conv.bias.zero_()
        head.conv_final[-1].conv.bias[-1] = 1e4
    return head.eval()


def test_base_logits_are_bit_identical_with_heads():
    base = seeded_base()
    heads = [StructureHead.from_base(wholebody_segresnet, base, 2), StructureHead.from_base(wholebody_segresnet, base, 1)]
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        alone = base(x)
        combined = HeadedSegResNet(base, heads).eval()(x)
    assert combined.shape == (1, 105 + 3 + 2, 32, 32, 32)
    assert torch.equal(combined[:, :105], alone)


def test_a_head_starts_from_the_base_decoder():
    base = seeded_base()
    head = StructureHead.from_base(wholebody_segresnet, base, 1)
    assert torch.equal(head.up_layers[0][0].conv1.conv.weight, base.up_layers[0][0].conv1.conv.weight)
    assert head.conv_final[-1].out_channels == 2


def test_merge_rules():
    # base: 3 channels (0 background, 1, 2); one head with structures valued 7 and 9
    base = torch.tensor([[5.0, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 5]])  # argmax 0, 1, 2, 2
    head = torch.tensor([[0.0, 5, 0, 5], [5, 0, 0, 0], [0, 0, 5, 0]])  # argmax 1, 0, 2, 0 -> 7, -, 9, -
    logits = torch.cat([base, head])[..., None]
    new = MergedArgmax(3, [[7, 9]], "new")(logits)[:, 0].tolist()
    existing = MergedArgmax(3, [[7, 9]], "existing")(logits)[:, 0].tolist()
    assert new == [7, 1, 9, 2]
    assert existing == [7, 1, 2, 2]  # the head only fills what the base calls background
    with pytest.raises(ValueError, match="expected 7 channels"):
        MergedArgmax(3, [[7, 9, 11]], "new")(logits)


def test_streamed_merge_keeps_every_base_label():
    base = seeded_base()
    image = torch.randn(1, 1, 40, 36, 44)
    streamed = StreamingArgmaxInferer(roi_size=32, overlap=0.25)
    with torch.inference_mode():
        alone = streamed(image, base)[0, 0]
        headed = HeadedSegResNet(base, [head_claiming_everything(base)]).eval()
        existing = StreamingArgmaxInferer(roi_size=32, overlap=0.25, reduce=MergedArgmax(105, [[105]], "existing"))(image, headed)[0, 0]
        new = StreamingArgmaxInferer(roi_size=32, overlap=0.25, reduce=MergedArgmax(105, [[105]], "new"))(image, headed)[0, 0]
    assert (alone == 0).any() and (alone > 0).any()
    assert torch.equal(existing[alone > 0], alone[alone > 0])
    assert (existing[alone == 0] == 105).all()
    assert (new == 105).all()


def test_training_moves_only_the_head():
    base = seeded_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    network = HeadTrainingNetwork(base, StructureHead.from_base(wholebody_segresnet, base, 1)).train()
    assert not base.training and all(not p.requires_grad for p in base.parameters())
    optimizer = torch.optim.AdamW(network.head.parameters(), lr=1e-2)
    out = network(torch.randn(1, 1, 32, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.ones(1, 32, 32, 32, dtype=torch.long)).backward()
    optimizer.step()
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert encoder_fingerprint(after) == encoder_fingerprint(before)
    assert encoder_fingerprint(seeded_base(1).state_dict()) != encoder_fingerprint(after)


def record(name: str, structures: dict, highres=False, created="2026-01-01") -> HeadRecord:
    return HeadRecord(name=name, highres=highres, structures=structures, encoder="e", base_checkpoint="b", created=created)


def test_store_allocates_lists_and_removes(tmp_path):
    store = HeadStore(str(tmp_path))
    values = store.allocate("tumour", False, ["tumour"], BASE)
    assert values == {"tumour": 105}
    store.save(record("tumour", values, created="1"), {"w": torch.zeros(1)})
    # the JSON says what the head adds; the weights sit beside it
    assert json.loads((tmp_path / "lowres" / "tumour.json").read_text())["structures"] == {"tumour": 105}
    assert (tmp_path / "lowres" / "tumour.pt").exists()

    # a second head gets values above every value in use, in either resolution
    assert store.allocate("nodes", True, ["station_4R", "station_7"], BASE) == {"station_4R": 106, "station_7": 107}
    store.save(record("nodes", {"station_4R": 106, "station_7": 107}, highres=True, created="2"), {"w": torch.zeros(1)})
    # training a head again keeps its values and adds new ones on top
    assert store.allocate("tumour", False, ["tumour", "cyst"], BASE) == {"tumour": 105, "cyst": 108}
    assert [r.name for r in store.heads()] == ["tumour", "nodes"]
    assert store.labels(False) == {"tumour": 105}

    with pytest.raises(HeadError, match="structures of the 104"):
        store.allocate("x", False, ["Liver"], BASE)
    with pytest.raises(HeadError, match="already belong to head 'tumour'"):
        store.allocate("other", False, ["tumour"], BASE)
    with pytest.raises(HeadError, match="no new structure"):
        store.allocate("x", False, [], BASE)

    removed = store.remove("tumour")
    assert [r.name for r in removed] == ["tumour"] and not (tmp_path / "lowres" / "tumour.pt").exists()
    assert [r.name for r in store.heads()] == ["nodes"]
    # freed values are not handed out again while a later value is in use
    assert store.allocate("tumour", False, ["tumour"], BASE) == {"tumour": 108}
    with pytest.raises(LookupError, match="no head 'tumour'"):
        store.remove("tumour")
    with pytest.raises(HeadError, match="invalid head name"):
        store.remove("../nodes")
    with pytest.raises(HeadError, match="invalid head name") as refused:
        store.remove("x" * 2**20)  # a megabyte name is quoted cut, with its length
    assert len(str(refused.value)) < 300 and "1,048,576 characters" in str(refused.value)


def test_store_refuses_more_labels_than_uint8_holds(tmp_path):
    store = HeadStore(str(tmp_path))
    store.save(record("many", {f"s{i}": 105 + i for i in range(150)}), {"w": torch.zeros(1)})
    with pytest.raises(HeadError, match="no label value left"):
        store.allocate("more", False, ["a", "b"], BASE)

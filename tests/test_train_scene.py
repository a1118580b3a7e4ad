"""easy-vqa scene supervision: pixel labels, collate targets, the guided region loss."""

import math

import pytest
import torch
from PIL import Image, ImageDraw

from avl_lab.train import TrainConfig
from avl_lab.train.data import TrainStream, collate
from avl_lab.train.scene import COLOURS, SHAPES, scene_of
from tests.helpers import avl_tiny_processor, small_avl_tiny_config


def _scene_image(shape: str, colour: str, box: tuple[int, int, int, int]) -> Image.Image:
    img = Image.new("RGB", (64, 64), (236, 244, 250))  # a pale tint, like easy-vqa's
    draw = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    return img


@pytest.mark.parametrize(
    "shape,colour", [("rectangle", "teal"), ("circle", "black"), ("triangle", "yellow")]
)
def test_scene_of_hand_drawn_shapes(shape, colour):
    scene = scene_of(_scene_image(shape, colour, (16, 20, 47, 51)))  # 32 x 32 px
    assert SHAPES[scene.shape] == shape and list(COLOURS)[scene.colour] == colour
    rows = {p // 16 for p in scene.patches}
    cols = {p % 16 for p in scene.patches}
    assert rows <= set(range(5, 13)) and cols <= set(range(4, 12))  # pixels 16..47 x 20..51
    if shape == "rectangle":  # 4 px patches: rows 5..12 and cols 4..11 fully covered
        assert len(scene.patches) == 64
    # a shape smaller than a quarter patch still names its best-covered patch
    speck = scene_of(_scene_image("rectangle", "red", (40, 8, 40, 8)))
    assert speck.patches == (2 * 16 + 10,)
    assert scene_of(Image.new("RGB", (64, 64), (240, 240, 250))) is None
    with pytest.raises(ValueError, match="square image"):
        scene_of(Image.new("RGB", (64, 48)))


def test_scene_of_agrees_with_the_easy_vqa_answers():
    import easy_vqa

    _, answers, ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    checked, wrong = 0, 0
    for ans, i in list(zip(answers, ids))[:3000]:
        if ans in ("yes", "no"):
            continue
        scene = scene_of(Image.open(paths[int(i)]))
        got = SHAPES[scene.shape] if ans in SHAPES else list(COLOURS)[scene.colour]
        checked, wrong = checked + 1, wrong + (got != ans)
    assert checked > 500 and wrong / checked < 0.01, (wrong, checked)


def test_collate_points_the_region_at_the_shape_from_every_answer_position():
    proc = avl_tiny_processor()
    tok = proc.tokenizer
    items = [TrainStream(TrainConfig(task_weights=[1, 0, 0, 0, 1])).sample(i) for i in range(8)]
    batch = collate(proc, items)
    image_start = int((batch["input_ids"][0] == tok.image_token_id).nonzero()[0])
    seen = 0
    for b, item in enumerate(items):
        keys, queries = batch["region_keys"][b], batch["region_queries"][b]
        if item["scene"] is None:  # docvqa: no scene
            assert not keys.any() and not queries.any()
            assert (batch["scene_labels"][b] == -100).all()
            continue
        seen += 1
        s = item["scene"]
        assert batch["scene_labels"][b].tolist() == [s.colour, s.shape]
        assert (keys.nonzero().flatten() - image_start).tolist() == list(s.patches)
        assert batch["scene_patches"][b].nonzero().flatten().tolist() == list(s.patches)
        # each query's logits predict an answer token; all answer tokens are covered
        q = queries.nonzero().flatten()
        predicted = batch["input_ids"][b, q + 1]
        assert tok.decode(predicted).strip() == item["target"]
        assert batch["labels"][b, q[-1] + 2] == tok.eos_token_id
    assert 0 < seen < len(items)


def test_region_loss_is_the_heads_eager_attention_mass_on_the_region():
    from avl_lab.models.avl_tiny import build_avl_tiny
    from avl_lab.train.guided import ReadAttention

    mcfg = small_avl_tiny_config()
    model, _ = build_avl_tiny(mcfg, seed=2)
    model.eval()
    ids = torch.randint(5, 300, (2, 24))
    queries = torch.zeros(2, 24, dtype=torch.bool)
    keys = torch.zeros(2, 24, dtype=torch.bool)
    queries[0, [20, 22]], queries[1, 23] = True, True
    keys[0, [3, 4, 9]], keys[1, [0, 10]] = True, True
    layer = model.model.language_model.layers[0].self_attn
    with torch.no_grad(), ReadAttention(layer, head=1) as probe:
        model.model.language_model(input_ids=ids)
        got = probe.region_loss(queries, keys)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        a = model.model.language_model(input_ids=ids, output_attentions=True).attentions[0][:, 1]
    mass = [a[0, 20, [3, 4, 9]].sum(), a[0, 22, [3, 4, 9]].sum(), a[1, 23, [0, 10]].sum()]
    want = -sum(math.log(float(m)) for m in mass) / 3
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_scene_loss_is_the_probes_cross_entropy_on_the_pooled_shape_tokens():
    from avl_lab.models.avl_tiny import build_avl_tiny
    from avl_lab.train.module import AvlTinyModule

    mcfg = small_avl_tiny_config()
    model, _ = build_avl_tiny(mcfg, seed=0)
    module = AvlTinyModule(model, TrainConfig())
    torch.manual_seed(0)
    features = torch.randn(2, 16, 64) * 5
    patches = torch.zeros(2, 16, dtype=torch.bool)
    patches[0, [1, 2]], patches[1, 7] = True, True
    labels = torch.tensor([[3, 2], [6, 0]])
    got = module.scene_loss(features, labels, patches)

    def unit(b, p):
        return features[b, p] / features[b, p].norm() * 8  # RMS 1 over the 64 features

    pooled = torch.stack([(unit(0, 1) + unit(0, 2)) / 2, unit(1, 7)])
    logits = module.scene_head(pooled)
    colour = torch.nn.functional.cross_entropy(logits[:, :8], torch.tensor([3, 6]))
    shape = torch.nn.functional.cross_entropy(logits[:, 8:], torch.tensor([2, 0]))
    torch.testing.assert_close(got, colour + shape)
    with pytest.raises(ValueError, match="scene_loss_weight=0"):
        module.scene_loss(features, labels, patches[:, :9])


def test_easy_vqa_templates_answer_the_packages_own_questions():
    import easy_vqa

    from avl_lab.train.easy_questions import _template, answer, templates

    assert len(templates()) == 24
    assert {t.kind for t in templates()} == {"yes/no", "colour", "shape"}
    questions, answers, ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    scenes, wrong = {}, 0
    for q, a, i in list(zip(questions, answers, ids))[:2000]:
        t = _template(q, a)
        value = next((v for v in (*COLOURS, *SHAPES) if f" {v}" in f" {q}"), None)
        scene = scenes.setdefault(int(i), scene_of(Image.open(paths[int(i)])))
        wrong += answer(t, value, scene) != a
    assert wrong / 2000 < 0.01, wrong


def test_generated_questions_are_balanced_and_follow_the_image():
    import random

    from avl_lab.train.easy_questions import generate

    scene = scene_of(_scene_image("circle", "teal", (10, 10, 41, 41)))
    rng = random.Random(0)
    got = [generate(scene, rng) for _ in range(800)]
    yes = sum(a == "yes" for _, a in got)
    no = sum(a == "no" for _, a in got)
    assert abs(yes - no) < 60 and yes + no > 300
    assert all(a == "teal" for q, a in got if q.startswith(("what color", "what is the color")))
    assert all(a == "circle" for q, a in got if q.startswith("what shape"))
    assert ("is there a teal shape?", "yes") in got and ("is there a red shape?", "no") in got
    assert ("is no circle present?", "no") in got and ("is no triangle present?", "yes") in got


def test_collate_slot_targets_are_the_questions_word_and_whether_the_image_shows_it():
    proc = avl_tiny_processor()
    tok = proc.tokenizer
    cfg = TrainConfig(task_weights=[1, 0, 0, 0, 1], easy_vqa_generated=1.0)
    items = [TrainStream(cfg).sample(i) for i in range(16)]
    scene = next(it["scene"] for it in items if it["scene"] is not None)
    shape = SHAPES[scene.shape]
    other = next(s for s in SHAPES if s != shape)
    for word in (shape, other):  # "rectangle" spans 4 tokens
        items.append({**items[-1], "prompt": f"is there not a {word} in the image?",
                      "target": "no" if word == shape else "yes", "scene": scene})  # fmt: skip
    batch = collate(proc, items)
    words = {*COLOURS, *SHAPES}
    named = 0
    for b, item in enumerate(items):
        keys = batch["slot_keys"][b]
        asked = [w for w in item["prompt"].replace("?", " ").split() if w in words]
        if item["scene"] is None or not asked:
            assert not keys.any() and not batch["slot_match"][b]
            continue
        named += 1
        assert tok.decode(batch["input_ids"][b, keys]).strip() == asked[0]
        first = int(keys.nonzero()[0])  # the word lies in the question, after the image
        assert (batch["input_ids"][b, :first] == tok.image_token_id).sum() == 256
        s = item["scene"]
        shown = asked[0] in (list(COLOURS)[s.colour], SHAPES[s.shape])
        assert bool(batch["slot_match"][b]) == shown
    assert named >= 4
    assert batch["slot_match"][-2:].tolist() == [True, False]


def test_slot_loss_is_the_heads_eager_attention_mass_on_the_word_plus_the_match_probe():
    from avl_lab.models.avl_tiny import AvlTinyConfig, build_avl_tiny
    from avl_lab.train.module import AvlTinyModule

    model, _ = build_avl_tiny(AvlTinyConfig(), seed=3)
    cfg = TrainConfig(slot_attention_layer=2, slot_attention_head=4)
    module = AvlTinyModule(model, cfg)
    stream = TrainStream(TrainConfig(task_weights=[0, 0, 0, 0, 1], easy_vqa_generated=1.0))
    items = [s for s in (stream.sample(i) for i in range(60)) if s["target"] in ("yes", "no")]
    batch = collate(avl_tiny_processor(), items[:6])
    queries, keys, match = batch["region_queries"], batch["slot_keys"], batch["slot_match"]
    assert keys.any(1).all() and 0 < match.sum() < len(match)
    with torch.no_grad():
        got = module.training_step(dict(batch), 0)["slot_loss"]
    model.set_attn_implementation("eager")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        result = model(**inputs, output_attentions=True, output_hidden_states=True)
        att = result.attentions[2][:, 4]
        hidden = result.hidden_states[3]  # the output of layer 2
    logs, bce = [], []
    for b, q in queries.nonzero().tolist():
        mass = float(att[b, q][keys[b]].sum())
        logs.append(math.log(mass if match[b] else 1 - mass))
        x = hidden[b, q] / hidden[b, q].pow(2).mean().sqrt()  # RMS 1
        p = float(torch.sigmoid(module.match_head(x)))
        bce.append(-math.log(p if match[b] else 1 - p))
    want = -sum(logs) / len(logs) + sum(bce) / len(bce)
    assert float(got) == pytest.approx(want, rel=1e-4)
    cfg = TrainConfig(slot_attention_weight=0)
    with torch.no_grad():
        assert "slot_loss" not in AvlTinyModule(model, cfg).training_step(dict(batch), 0)

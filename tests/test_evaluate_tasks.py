"""Task builders: splits by author, the hashtag task, TweetEval files, the task config."""

from collections import Counter

import numpy as np
import pytest

from ntulm.errors import ConfigError, InputError
from ntulm.evaluate import (
    EvalConfig,
    build_tasks,
    classification_task,
    hashtag_task,
    remove_hashtag,
    retrieval_task,
    tweeteval_tasks,
)
from ntulm.evaluate.splits import _allocate, author_key
from ntulm.posts import Post, extract_ntus
from ntulm.posts.formats import parse_jsonl
from ntulm.synthetic import generate_posts


@pytest.fixture(scope="module")
def corpus():
    return [parse_jsonl(r) for r in generate_posts(n_posts=600, users_per_community=8, seed=1)]


def _authors(posts):
    return {author_key(p) for p in posts}


def test_author_split_is_author_disjoint_and_drops_authorless_posts(corpus, caplog):
    extra = [
        Post(id=f"x{i}", text="no author", labels={"community": "community_0"}) for i in range(7)
    ]
    task = classification_task(corpus + extra, "community", split_by="author", seed=3)
    train, val, test = _authors(task.train), _authors(task.val), _authors(task.test)
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)
    assert None not in train | val | test
    assert task.info["posts_dropped_in_split"] == 7 and "without an author" in caplog.text
    assert len(task.train) + len(task.val) + len(task.test) == len(corpus)
    assert set(task.y_test.tolist()) == {0, 1, 2, 3}  # stratified: every class is tested
    assert task.classes == [f"community_{c}" for c in range(4)]
    assert [task.classes[y] for y in task.y_train[:5]] == [
        p.labels["community"] for p in task.train[:5]
    ]


def test_allocation_of_whole_authors_lands_near_the_targets():
    sizes = [50] + [5] * 20  # one big author, twenty small ones: 150 posts
    out = _allocate(sizes, val_frac=0.1, test_frac=0.2)
    filled = [sum(s for s, k in zip(sizes, out, strict=True) if k == split) for split in range(3)]
    assert filled == [105, 15, 30]
    assert sorted(_allocate([9, 1], 0.1, 0.2)) == [0, 2]  # two authors: one trains, one tests
    assert _allocate([3], 0.1, 0.2) == [0]


def test_post_split_is_stratified_and_deterministic(corpus):
    a = classification_task(corpus, "stance", split_by="post", val_frac=0.1, test_frac=0.2, seed=5)
    b = classification_task(corpus, "stance", split_by="post", val_frac=0.1, test_frac=0.2, seed=5)
    assert [p.id for p in a.test] == [p.id for p in b.test]
    assert len(a.test) == pytest.approx(0.2 * len(corpus), abs=2)
    ids = [p.id for p in a.train + a.val + a.test]
    assert len(ids) == len(set(ids)) == len(corpus)
    assert a.metrics[0] == "macro_f1" and a.exclude_from_graph == []


def test_small_classes_dropped_and_capped(corpus):
    posts = corpus + [Post(id="rare", text="x", labels={"stance": "rare"})]
    task = classification_task(posts, "stance", min_class_count=2, max_per_class=50, seed=0)
    assert task.classes == ["negative", "positive"] and task.info["classes_dropped"] == ["rare"]
    assert len(task.train) + len(task.val) + len(task.test) == 100
    with pytest.raises(ValueError, match="no post has the label"):
        classification_task(corpus, "missing")


def test_remove_hashtag_is_case_insensitive_and_spares_urls():
    text = "Love #MAGA and #maga2 http://x.com/#maga #Maga!"
    assert remove_hashtag(text, "maga") == "Love and #maga2 http://x.com/#maga!"
    assert remove_hashtag("#Tag only", "tag") == "only"


def test_hashtag_task_balanced_removed_and_test_ids_excluded(corpus):
    before = {p.id: (p.text, list(p.hashtags)) for p in corpus}
    task = hashtag_task(corpus, top_k=6, per_class=12, seed=2, val_frac=0.25, test_frac=0.25)
    # balanced: every class the same number of posts, in every split
    counts = Counter(task.y_train.tolist() + task.y_val.tolist() + task.y_test.tolist())
    assert set(counts.values()) == {12} and len(counts) == len(task.classes) >= 2
    assert set(Counter(task.y_test.tolist()).values()) == {3}
    assert task.metrics[0] == "recall@10"
    for split, ys in ((task.train, task.y_train), (task.test, task.y_test)):
        for post, y in zip(split, ys, strict=True):
            tag = task.classes[y]
            assert tag in before[post.id][1]  # the label was one of the post's hashtags
            assert tag not in post.hashtags
            assert tag not in extract_ntus(post.text)[0]  # gone from the text, any casing
            assert post.text.strip()
    ids = [p.id for p in task.train + task.val + task.test]
    assert len(ids) == len(set(ids))  # a post serves one class, one split
    # validation and test posts leave the graph (the paper's protocol), training posts stay
    assert task.exclude_from_graph == [p.id for p in task.val + task.test]
    assert not set(task.exclude_from_graph) & {p.id for p in task.train}
    assert task.exclude_edges == [] and task.info["graph_exclusion"] == "posts"
    assert {p.id: (p.text, p.hashtags) for p in corpus} == before  # inputs untouched


def test_hashtag_task_drops_classes_short_of_per_class(corpus, caplog):
    # 17 of the top 48 hashtags have 12 usable posts: below the default floor (half of top_k)
    with pytest.raises(ValueError, match="only 17 of the top 48.*min_classes=24.*brife29"):
        hashtag_task(corpus, top_k=48, per_class=12, seed=0)
    with caplog.at_level("WARNING"):
        task = hashtag_task(corpus, top_k=48, per_class=12, seed=0, min_classes=10)
    assert task.info["hashtags_dropped"] == 31 and len(task.classes) == 17
    assert "brife29" in task.info["hashtags_dropped_names"] and "brife29" in caplog.text
    with pytest.raises(ValueError, match="per_class"):
        hashtag_task(corpus, top_k=5, per_class=10_000)


def test_retrieval_task_by_author(corpus):
    task = retrieval_task(corpus, "community", split_by="author", seed=0, max_test=50)
    assert task.kind == "retrieval" and task.metrics == ["map"] and len(task.test) == 50
    assert task.exclude_same_author
    assert not _authors(task.train) & _authors(task.test)


def _write(folder, split, texts, labels):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_text.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    (folder / f"{split}_labels.txt").write_text("".join(f"{y}\n" for y in labels))


def test_tweeteval_reader_including_stance_layout(tmp_path):
    irony = tmp_path / "irony"
    _write(irony, "train", ["Great, rain #NotAgain ", "so fun &amp; @user", "ok"], [1, 0, 0])
    _write(irony, "val", ["yes #Sure", "  "], [1, 0])  # an empty tweet is kept (as in hate)
    _write(irony, "test", ["a #B c", "d"], [0, 1])
    (irony / "mapping.txt").write_text("0\tnon_irony\n1\tirony\n")
    (tmp_path / "stance").mkdir()
    (tmp_path / "stance" / "mapping.txt").write_text("0\tnone\n1\tagainst\n2\tfavor\n")
    for topic in ("abortion", "climate"):
        for split in ("train", "val", "test"):
            _write(tmp_path / "stance" / topic, split, [f"{topic} #SemST", "x"], [2, 0])

    (task,) = tweeteval_tasks(tmp_path, ["irony"])
    assert task.name == "irony" and task.classes == ["non_irony", "irony"]
    assert task.y_train.tolist() == [1, 0, 0] and len(task.val) == 2 and len(task.test) == 2
    first = task.train[0]
    assert first.id == "irony:train:1" and first.author is None
    assert first.text == "Great, rain #NotAgain" and first.hashtags == ["notagain"]
    assert task.train[1].text == "so fun & @user" and task.train[1].mentions == []
    assert first.labels == {"label": "irony"}
    assert task.val[1].text == "" and task.y_val.tolist() == [1, 0]

    stance = tweeteval_tasks(tmp_path, ["stance"])
    assert [t.name for t in stance] == ["stance_abortion", "stance_climate"]
    assert stance[0].classes == ["none", "against", "favor"]
    assert stance[1].test[0].hashtags == ["semst"] and stance[1].y_test.tolist() == [2, 0]
    assert [t.name for t in tweeteval_tasks(tmp_path, ["stance_climate"])] == ["stance_climate"]


def test_tweeteval_reader_errors(tmp_path):
    folder = tmp_path / "hate"
    for split in ("train", "val", "test"):
        _write(folder, split, ["a", "b"], [0, 1])
    (folder / "mapping.txt").write_text("0\tnot-hate\n1\thate\n")
    (folder / "val_labels.txt").write_text("0\n")
    with pytest.raises(InputError, match="1 labels for 2 texts"):
        tweeteval_tasks(tmp_path, ["hate"])
    (folder / "val_labels.txt").write_text("0\n7\n")
    with pytest.raises(InputError, match="val_labels.txt:2"):
        tweeteval_tasks(tmp_path, ["hate"])
    with pytest.raises(InputError, match="no TweetEval task"):
        tweeteval_tasks(tmp_path, ["emoji"])


def test_eval_config_and_build_tasks(corpus):
    cfg = EvalConfig.from_sources(
        overrides=["mlp.lr=0.01", "tasks=[{type: classification, label: stance}]"]
    )
    assert cfg.mlp.lr == 0.01 and cfg.mlp.hidden == 0
    (task,) = build_tasks(cfg.tasks[0], corpus, seed=cfg.seed)
    assert task.name == "stance" and task.kind == "classification"
    with pytest.raises(ConfigError, match="label"):
        EvalConfig.build({"tasks": [{"type": "retrieval"}]})
    with pytest.raises(ConfigError, match="mlp.patience"):
        EvalConfig.build({"mlp": {"patience": 0}})
    assert np.isclose(cfg.tasks[0].test_frac, 0.2)


def test_validation_task_designs_on_validation_posts_only(corpus):
    from ntulm.evaluate.protocol import validation_task

    task = classification_task(corpus, "community", split_by="author", seed=3, val_frac=0.3)
    design = validation_task(task, seed=1)
    val_ids, test_ids = {p.id for p in task.val}, {p.id for p in task.test}
    early, scored = {p.id for p in design.val}, {p.id for p in design.test}
    assert early and scored and early | scored <= val_ids and not early & scored
    assert not (early | scored) & test_ids  # the test split is never read
    assert design.train is task.train
    assert not _authors(design.val) & _authors(design.test)  # still split by author
    assert [design.classes[y] for y in design.y_test] == [
        p.labels["community"] for p in design.test
    ]
    ret = retrieval_task(corpus, "community", split_by="author", seed=0, max_test=40)
    rd = validation_task(ret, seed=1)
    assert len(rd.test) == 40 and {p.id for p in rd.test} <= {p.id for p in ret.train}


EMOJI_MAPPING = "0\t❤\t_red_heart_\t\n1\t😍\t_smiling_face_with_hearteyes_\t\n2\t😂\t_face_with_tears_of_joy_\t\n"  # noqa: E501  (as published: three columns, a trailing tab)


def test_tweeteval_reads_the_published_layouts(tmp_path, caplog):
    emoji = tmp_path / "emoji"
    labels = [0, 1, 2, 0, 1, 2, 0, 0, 0, 0, 1, 1]
    for split in ("train", "val", "test"):
        _write(emoji, split, [f"tweet {i} #x" for i in range(len(labels))], labels)
    (emoji / "mapping.txt").write_text(EMOJI_MAPPING, encoding="utf-8")
    (emoji / "test_labels.txt").write_text("".join(f"{y}\r\n" for y in labels))  # CRLF
    (task,) = tweeteval_tasks(tmp_path, ["emoji"])
    assert task.classes == ["red_heart", "smiling_face_with_hearteyes", "face_with_tears_of_joy"]
    assert task.info["class_symbols"]["red_heart"] == "❤"
    assert task.y_test.tolist() == labels
    # offensive's mapping has no final line break; a stray partial stance folder is skipped
    off = tmp_path / "offensive"
    for split in ("train", "val", "test"):
        _write(off, split, ["a", "b"], [0, 1])
    (off / "mapping.txt").write_text("0\toffensive\n1\tnot-offensive")
    assert tweeteval_tasks(tmp_path, ["offensive"])[0].classes == ["offensive", "not-offensive"]
    (tmp_path / "stance").mkdir()
    (tmp_path / "stance" / "mapping.txt").write_text("0\tnone\n1\tagainst\n2\tfavor\n")
    _write(tmp_path / "stance" / "hillary", "train", ["a", "b", "c"], [0, 1, 2])
    for split in ("val", "test"):
        _write(tmp_path / "stance" / "hillary", split, ["a", "b", "c"], [0, 1, 2])
    _write(tmp_path / "stance" / "hilary", "train", ["a"], [0])  # only some files
    with caplog.at_level("WARNING"):
        assert [t.name for t in tweeteval_tasks(tmp_path, ["stance"])] == ["stance_hillary"]
    assert "hilary: skipped" in caplog.text


def test_tweeteval_subsampling_and_classes(tmp_path, caplog):
    emoji = tmp_path / "emoji"
    labels = [0, 1, 2] * 10
    for split in ("train", "val", "test"):
        _write(emoji, split, [f"t{i}" for i in range(30)], labels)
    (emoji / "mapping.txt").write_text(EMOJI_MAPPING, encoding="utf-8")
    (task,) = tweeteval_tasks(tmp_path, ["emoji"], max_per_class=4, seed=1)
    assert Counter(task.y_train.tolist()) == {0: 4, 1: 4, 2: 4} and len(task.test) == 12
    assert task.info["train_published"] == 30
    again = tweeteval_tasks(tmp_path, ["emoji"], max_per_class=4, seed=1)[0]
    assert [p.id for p in again.train] == [p.id for p in task.train]  # seeded
    (kept,) = tweeteval_tasks(tmp_path, ["emoji"], classes=["face_with_tears_of_joy", "red_heart"])
    assert kept.classes == ["face_with_tears_of_joy", "red_heart"]
    assert Counter(kept.y_test.tolist()) == {0: 10, 1: 10}
    published = tweeteval_tasks(tmp_path, ["emoji"])[0].classes
    for p, y in zip(kept.test, kept.y_test, strict=True):  # renumbered, each post its own class
        assert kept.classes[y] == published[labels[int(p.id.split(":")[-1]) - 1]]
    with pytest.raises(InputError, match="not in emoji's classes"):
        tweeteval_tasks(tmp_path, ["emoji"], classes=["fire", "red_heart"])
    # a class absent from a split is named
    (emoji / "val_labels.txt").write_text("".join("0\n" if y == 2 else f"{y}\n" for y in labels))
    with caplog.at_level("WARNING"):
        (task,) = tweeteval_tasks(tmp_path, ["emoji"])
    assert task.info["classes_missing"] == {"val": ["face_with_tears_of_joy"]}
    assert "no post in the val split" in caplog.text


def test_task_options_are_validated_per_type():
    with pytest.raises(ConfigError, match="'split_by' is not an option of a tweeteval task"):
        EvalConfig.build(
            {"tasks": [{"type": "tweeteval", "root": "r", "names": ["x"], "split_by": "author"}]}
        )  # noqa: E501
    with pytest.raises(ConfigError, match="did you mean 'max_per_class'"):
        EvalConfig.build({"tasks": [{"type": "classification", "label": "x", "max_per_clas": 3}]})
    with pytest.raises(ConfigError, match="'top_k' is not an option of a classification task"):
        EvalConfig.build({"tasks": [{"type": "classification", "label": "x", "top_k": 3}]})
    with pytest.raises(ConfigError, match="split_by"):
        EvalConfig.build(
            {"tasks": [{"type": "classification", "label": "x", "split_by": "thread"}]}
        )  # noqa: E501
    cfg = EvalConfig.build(
        {"tasks": [
            {"type": "tweeteval", "root": "r", "names": ["emoji"], "max_per_class": 100},
            {"type": "classification", "label": "x", "min_class_count": 3, "split_by": "label:split"},
            {"type": "hashtag", "top_k": 20, "min_classes": 5},
        ]}
    )  # fmt: skip
    assert cfg.tasks[1].min_class_posts == 3
    assert EvalConfig.build(cfg.model_dump(mode="json")) == cfg  # a saved config validates again


def _relabel(corpus, fn):
    out = []
    for i, p in enumerate(corpus):
        q = Post(id=p.id, text=p.text, author=p.author, hashtags=list(p.hashtags))
        q.labels = {**p.labels, **fn(i, p)}
        out.append(q)
    return out


def test_classes_kept_min_class_authors_and_missing_class_warning(corpus, caplog):
    task = classification_task(corpus, "community", classes=["community_2", "community_0"])
    assert task.classes == ["community_2", "community_0"]  # the order asked for
    assert {p.labels["community"] for p in task.test} == {"community_0", "community_2"}
    assert task.info["classes_not_kept"] == {"community_1": 161, "community_3": 145}
    with pytest.raises(ValueError, match="asked for are on no post"):
        classification_task(corpus, "community", classes=["community_9", "community_0"])
    # two "independent" authors: a third class with 2 authors, dropped by min_class_authors=3
    indep = {author_key(p) for p in corpus[:40]}
    indep = set(sorted(indep)[:2])
    posts = _relabel(
        corpus, lambda i, p: {"party": "ind" if author_key(p) in indep else p.labels["stance"]}
    )
    task = classification_task(posts, "party", split_by="author", min_class_authors=3)
    assert task.classes == ["negative", "positive"]
    assert task.info["classes_dropped_few_authors"] == ["ind"]
    with pytest.raises(ValueError, match=r"\['ind'\] asked for have fewer"):
        classification_task(
            posts, "party", classes=["ind", "positive"], split_by="author", min_class_authors=3
        )
    # kept without the filter: the class is missing from a split, and that is said
    with caplog.at_level("WARNING"):
        task = classification_task(posts, "party", split_by="author", min_class_count=1, seed=2)
    assert "ind" in task.classes and task.info.get("classes_missing")
    assert "have no post in the" in caplog.text


def test_split_from_a_label_and_kept_out_of_the_finetuning_sample(corpus):
    from ntulm.pipeline.config import PipelineConfig
    from ntulm.pipeline.run import finetune_sample

    names = ["train", "Validation", "TEST", "", "train"]
    posts = _relabel(corpus, lambda i, p: {"split": names[i % 5]} if names[i % 5] else {})
    spec = EvalConfig.build(
        {"tasks": [{"type": "classification", "label": "stance", "split_by": "label:split"}]}
    ).tasks[0]
    (task,) = build_tasks(spec, posts, seed=0)
    assert {p.labels["split"] for p in task.train} == {"train"}
    assert {p.labels["split"] for p in task.val} == {"Validation"}
    assert {p.labels["split"] for p in task.test} == {"TEST"}
    assert len(task.train) == 240 and task.info["posts_dropped_in_split"] == 120
    assert task.info["split_by"] == "label:split"
    cfg = PipelineConfig.build({"posts": ["x"], "lm_posts": 10_000, "eval": {"tasks": [spec]}})
    sample = {p.id for p in finetune_sample(posts, [(spec, task)], cfg)}
    assert not sample & {p.id for p in (*task.val, *task.test)}
    assert len(sample) == 600 - len(task.val) - len(task.test)
    from ntulm.evaluate.protocol import validation_task

    design = validation_task(task, seed=1)  # design halves the label's validation split
    assert {p.id for p in (*design.val, *design.test)} == {p.id for p in task.val}
    bad = _relabel(corpus, lambda i, p: {"split": "holdout"})
    with pytest.raises(ValueError, match="'holdout' is not train"):
        classification_task(bad, "stance", split_by="label:split")

"""TweetEval (Barbieri et al., 2020) from its released files (paper §4.1).

Layout: ``<root>/<task>/{train,val,test}_text.txt`` (one tweet a line) and
``{train,val,test}_labels.txt`` (one integer a line), ``<root>/<task>/mapping.txt``
(``id<TAB>name``). Stance has one folder per topic (``stance/abortion`` ...) sharing
``stance/mapping.txt``; it is read as **one task per topic** (``stance_abortion`` ...), as the
paper's Table 5 lists them, and a report averages them into one stance figure.

Posts have no author (the texts are anonymised, mentions are ``@user``), so hashtags are their
only NTUs. Ids are ``<task>:<split>:<line>``.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

from ntulm.errors import InputError
from ntulm.evaluate.tasks import CLASSIFICATION, Task
from ntulm.posts import Post, extract_ntus

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_mapping(path: Path) -> list[str]:
    """Class names in id order from ``mapping.txt`` (``0<TAB>negative`` ...)."""
    names: dict[int, str] = {}
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2 or not parts[0].strip().lstrip("-").isdigit():
            raise InputError(str(path), n, f"expected 'id<TAB>name', got {line!r}")
        names[int(parts[0])] = parts[1].strip()
    if sorted(names) != list(range(len(names))):
        raise InputError(str(path), None, f"class ids must be 0..n-1, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def read_split(
    folder: Path, split: str, task: str, classes: list[str]
) -> tuple[list[Post], np.ndarray]:
    """Posts and int labels of one split; hashtags extracted from the text."""
    texts = _read_lines(folder / f"{split}_text.txt")
    label_path = folder / f"{split}_labels.txt"
    raw = _read_lines(label_path)
    if len(raw) != len(texts):
        raise InputError(str(label_path), None, f"{len(raw)} labels for {len(texts)} texts")
    labels = []
    for n, value in enumerate(raw, 1):
        value = value.strip()
        if not value.isdigit() or int(value) >= len(classes):
            raise InputError(
                str(label_path), n, f"label {value!r} is not a class id of mapping.txt"
            )
        labels.append(int(value))
    posts, empty = [], 0
    for n, (line, y) in enumerate(zip(texts, labels, strict=True), 1):
        text = html.unescape(line.rstrip("\r").strip())
        empty += not text
        tags = extract_ntus(text)[0]
        posts.append(
            Post(id=f"{task}:{split}:{n}", text=text, hashtags=tags, labels={"label": classes[y]})
        )
    if empty:  # kept, so the official splits stay whole (hate has a few)
        log.warning("%s: %d empty texts kept", folder / f"{split}_text.txt", empty)
    return posts, np.asarray(labels, dtype=np.int64)


def _task(root: Path, folder: Path, name: str, mapping: Path) -> Task:
    classes = read_mapping(mapping)
    parts = {split: read_split(folder, split, name, classes) for split in SPLITS}
    return Task(
        name=name,
        kind="classification",
        train=parts["train"][0],
        val=parts["val"][0],
        test=parts["test"][0],
        y_train=parts["train"][1],
        y_val=parts["val"][1],
        y_test=parts["test"][1],
        classes=classes,
        metrics=list(CLASSIFICATION),
        info={"source": str(folder.relative_to(root)), "dataset": "tweeteval"},
    )


def stance_topics(root: str | Path) -> list[str]:
    """Topic folders under ``<root>/stance`` (those holding a ``train_text.txt``)."""
    stance = Path(root) / "stance"
    return sorted(d.name for d in stance.iterdir() if (d / "train_text.txt").is_file())


def tweeteval_tasks(root: str | Path, names: list[str]) -> list[Task]:
    """Tasks named in ``names``: ``irony``, ``hate`` ...; ``stance`` expands to one task per
    topic; ``stance_abortion`` (or ``stance/abortion``) picks one topic."""
    root = Path(root)
    tasks = []
    for name in names:
        if name == "stance":
            for topic in stance_topics(root):
                tasks.append(_stance(root, topic))
        elif name.startswith(("stance_", "stance/")):
            tasks.append(_stance(root, name[len("stance_") :]))
        else:
            folder = root / name
            if not folder.is_dir():
                raise InputError(str(folder), None, f"no TweetEval task folder {name!r}")
            tasks.append(_task(root, folder, name, folder / "mapping.txt"))
    return tasks


def _stance(root: Path, topic: str) -> Task:
    folder = root / "stance" / topic
    if not folder.is_dir():
        raise InputError(str(folder), None, f"no stance topic {topic!r}")
    mapping = folder / "mapping.txt"
    mapping = mapping if mapping.is_file() else root / "stance" / "mapping.txt"
    return _task(root, folder, f"stance_{topic}", mapping)

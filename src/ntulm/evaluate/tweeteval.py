"""TweetEval (Barbieri et al., 2020) from its released files (paper §4.1).

Layout, exactly as ``cardiffnlp/tweeteval`` publishes it: ``<root>/<task>/{train,val,test}_text.txt``
(one tweet a line) and ``{train,val,test}_labels.txt`` (one integer a line),
``<root>/<task>/mapping.txt``: ``id<TAB>name``, or ``id<TAB>emoji<TAB>name<TAB>`` (emoji: three
columns and a trailing tab), last line with or without a line break, ``\r\n`` or ``\n``. Stance
has one folder per topic (``stance/abortion`` ...) sharing ``stance/mapping.txt``; it is read as
**one task per topic** (``stance_abortion`` ...), as the paper's Table 5 lists them, and a report
averages them into one stance figure. A topic folder without its six files (the published repo
once held a stray ``stance/hilary`` beside ``stance/hillary``) is skipped with a warning.

``max_per_class`` subsamples every split per class (seeded; the 100k-tweet emoji task), and
``classes`` keeps only the classes named; either makes the figures those of a sample, not of
the published benchmark (recorded in the task's ``info``).

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


def read_mapping(path: Path) -> tuple[list[str], list[str]]:
    """Class names in id order from ``mapping.txt`` (``0<TAB>negative`` ...), and for the
    three-column emoji layout (``0<TAB>❤<TAB>_red_heart_<TAB>``) the symbols (else empty);
    names lose the underscores around them (``red_heart``)."""
    names: dict[int, str] = {}
    symbols: dict[int, str] = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.rstrip("\r").split("\t")
        while parts and not parts[-1].strip():  # the emoji file's trailing tab
            parts.pop()
        if not parts:
            continue
        if len(parts) not in (2, 3) or not parts[0].strip().isdigit():
            raise InputError(
                str(path), n, f"expected 'id<TAB>name' or 'id<TAB>symbol<TAB>name', got {line!r}"
            )
        k = int(parts[0])
        if k in names:
            raise InputError(str(path), n, f"class id {k} given twice")
        names[k] = parts[-1].strip().strip("_") or parts[-1].strip()
        if len(parts) == 3:
            symbols[k] = parts[1].strip()
    if sorted(names) != list(range(len(names))):
        raise InputError(str(path), None, f"class ids must be 0..n-1, got {sorted(names)}")
    if len(set(names.values())) != len(names):
        raise InputError(str(path), None, "class names must be distinct")
    order = range(len(names))
    return [names[i] for i in order], [symbols[i] for i in order] if symbols else []


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
        value = value.strip()  # "\r", trailing blanks
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


def _subsample(
    posts: list[Post], y: np.ndarray, keep: list[int] | None, cap: int, rng: np.random.Generator
) -> tuple[list[Post], np.ndarray]:
    """Only the class ids in ``keep`` (renumbered in that order), at most ``cap`` posts a class
    (sampled, kept in file order)."""
    idx = np.arange(len(y))
    if keep is not None:
        idx = idx[np.isin(y, keep)]
    if cap:
        picked = []
        for c in np.unique(y[idx]):
            members = idx[y[idx] == c]
            picked.append(
                rng.choice(members, cap, replace=False) if len(members) > cap else members
            )
        idx = np.sort(np.concatenate(picked)) if picked else idx[:0]
    y_new = y[idx]
    if keep is not None:
        new_id = {old: new for new, old in enumerate(keep)}
        y_new = np.array([new_id[int(v)] for v in y_new], dtype=np.int64)
    return [posts[int(i)] for i in idx], np.asarray(y_new, dtype=np.int64)


def _task(
    root: Path,
    folder: Path,
    name: str,
    mapping: Path,
    max_per_class: int = 0,
    keep: list[str] | None = None,
    seed: int = 13,
) -> Task:
    from ntulm.evaluate.tasks import missing_classes

    classes, symbols = read_mapping(mapping)
    parts = {split: read_split(folder, split, name, classes) for split in SPLITS}
    info = {"source": str(folder.relative_to(root)), "dataset": "tweeteval"}
    if symbols:
        info["class_symbols"] = dict(zip(classes, symbols, strict=True))
    if keep or max_per_class:
        ids = None
        if keep:
            unknown = [c for c in keep if c not in classes]
            if unknown:
                raise InputError(
                    str(mapping), None, f"classes {unknown} not in {name}'s classes {classes}"
                )
            ids = [classes.index(c) for c in keep]
            classes = list(keep)
        rng = np.random.default_rng([seed, len(name)])
        for split in SPLITS:
            n = len(parts[split][0])
            parts[split] = _subsample(*parts[split], ids, max_per_class, rng)
            info[f"{split}_published"] = n
        info["subsample"] = {"max_per_class": max_per_class, "classes": list(keep or [])}
        log.info(
            "%s: sampled %s of the published %s posts",
            name,
            [len(parts[s][0]) for s in SPLITS],
            [info[f"{s}_published"] for s in SPLITS],
        )
    task = Task(
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
        info=info,
    )
    absent = missing_classes(task)
    if absent:
        task.info["classes_missing"] = absent
    return task


_FILES = tuple(f"{s}_{kind}.txt" for s in SPLITS for kind in ("text", "labels"))


def stance_topics(root: str | Path) -> list[str]:
    """Topic folders under ``<root>/stance`` holding all six split files; a folder with only
    some of them is skipped with a warning."""
    stance = Path(root) / "stance"
    topics = []
    for d in sorted(p for p in stance.iterdir() if p.is_dir()):
        have = [f for f in _FILES if (d / f).is_file()]
        if len(have) == len(_FILES):
            topics.append(d.name)
        elif have:
            log.warning("%s: skipped, holds only %s of the six split files", d, ", ".join(have))
    return topics


def tweeteval_tasks(
    root: str | Path,
    names: list[str],
    *,
    max_per_class: int = 0,
    classes: list[str] | None = None,
    seed: int = 13,
) -> list[Task]:
    """Tasks named in ``names``: ``irony``, ``hate``, ``emoji`` ...; ``stance`` expands to one
    task per topic; ``stance_abortion`` (or ``stance/abortion``) picks one topic.
    ``max_per_class`` caps every split at that many posts per class (seeded sample);
    ``classes`` keeps only those classes (every named task must have them)."""
    root = Path(root)
    opts = {"max_per_class": max_per_class, "keep": list(classes or []) or None, "seed": seed}
    tasks = []
    for name in names:
        if name == "stance":
            for topic in stance_topics(root):
                tasks.append(_stance(root, topic, opts))
        elif name.startswith(("stance_", "stance/")):
            tasks.append(_stance(root, name[len("stance_") :], opts))
        else:
            folder = root / name
            if not folder.is_dir():
                raise InputError(str(folder), None, f"no TweetEval task folder {name!r}")
            tasks.append(_task(root, folder, name, folder / "mapping.txt", **opts))
    return tasks


def _stance(root: Path, topic: str, opts: dict) -> Task:
    folder = root / "stance" / topic
    if not folder.is_dir():
        raise InputError(str(folder), None, f"no stance topic {topic!r}")
    mapping = folder / "mapping.txt"
    mapping = mapping if mapping.is_file() else root / "stance" / "mapping.txt"
    return _task(root, folder, f"stance_{topic}", mapping, **opts)

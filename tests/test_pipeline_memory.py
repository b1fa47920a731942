"""``ntulm run`` keeps its own process lean: every fine-tune and every model's encoding runs in a
worker process (``isolate_stages``), so nothing a stage allocates stays behind, and the numbers are
the ones the single-process run gives."""

import gc
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ntulm.pipeline import run as pipeline_run
from ntulm.pipeline.config import PipelineConfig
from ntulm.synthetic import write_corpus


def _config(tmp_path: Path, backbone: str, isolate: bool) -> PipelineConfig:
    posts = tmp_path / "posts.jsonl"
    if not posts.exists():
        write_corpus(posts, n_posts=300, users_per_community=6, seed=5)
    cfg = {
        "name": "tiny",
        "posts": [str(posts)],
        "lm_posts": 120,
        "kge": {"dimension": 8, "num_epochs": 1, "batch_size": 500, "num_batch_negs": 10,
                "num_uniform_negs": 10},
        "lm": {"backbone": backbone, "max_steps": 3, "max_epochs": 1, "batch_size": 16,
               "head_warmup_steps": 0, "max_length": 24, "progress": False,
               "eval_max_posts": 20},
        "eval": {"mlp": {"max_epochs": 3, "num_threads": 1}, "tasks": [
            {"type": "classification", "name": "community", "label": "community",
             "split_by": "author", "min_class_count": 2},
            {"type": "retrieval", "name": "community_map", "label": "community", "max_test": 30},
        ]},
        "variants": [  # one model (a worker start costs seconds), post-concat and a control
            {"name": "N", "ntu_types": ["author", "hashtag"]},
            {"name": "N + e", "post_concat_of": "N", "ntu_types": ["author", "hashtag"]},
            {"name": "N + e shuffled", "post_concat_of": "N", "ntu_types": ["author", "hashtag"],
             "control": "shuffled"},
        ],
        "baseline": "N",
        "finetune_per_seed": True,
        "seeds": [1, 2],
        "isolate_stages": isolate,
    }  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return PipelineConfig.from_sources(tmp_path / "cfg.yaml")


def _tensor_bytes() -> int:
    """Bytes of every torch storage reachable by the garbage collector in this process."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module attributes
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for t in tensors:
        s = t.untyped_storage()
        try:
            ptr = s.data_ptr()
        except RuntimeError:  # a FakeTensor that torch.compile keeps in its caches: no memory
            continue
        storages[ptr] = s.nbytes()
    return sum(storages.values())


def test_stages_leave_no_model_behind_and_give_the_same_numbers(tmp_path, backbone, monkeypatch):
    # after every fine-tune and every evaluation (all its variants), the tensors alive in this
    # process: the fine-tuned models, optimizers and encoders must not be among them
    census: list[tuple[str, int]] = []
    workers: list[str] = []
    for name in ("finetune", "evaluate"):
        real = getattr(pipeline_run.Pipeline, name)

        def wrapped(self, *a, _real=real, _name=name, **k):
            out = _real(self, *a, **k)
            census.append((_name, _tensor_bytes()))
            return out

        monkeypatch.setattr(pipeline_run.Pipeline, name, wrapped)
    real_isolated = pipeline_run.run_isolated
    lean: list[bool] = []  # each fine-tune worker's allocator settings (lean_finetune)

    def isolated(fn, *a):
        workers.append(fn.__name__)
        if fn.__name__ == "_finetune_job":
            lean.append(a[-1])
        return real_isolated(fn, *a)

    monkeypatch.setattr(pipeline_run, "run_isolated", isolated)
    base = _tensor_bytes()
    cfg = _config(tmp_path, backbone, isolate=True)
    res = pipeline_run.run_pipeline(cfg, tmp_path / "isolated", progress=False)
    # the NTU embeddings trained, and the model fine-tuned and encoded once per seed, each in
    # its own worker
    assert workers == ["_kge_job"] + ["_finetune_job", "_embed_job"] * 2
    assert lean == [True, True]  # the default: fine-tune workers map buffers (ntulm.memory)
    assert [n for n, _ in census] == ["finetune", "evaluate"] * 2
    # the tiny BERT alone is ~1 MB of float32 weights (a loaded model, optimizer state or
    # gradients would each show); what stays is the NTU table and small MLP leftovers
    tiny_bert = sum(p.numel() * 4 for p in _tiny_model_params(backbone))
    grown = [b - base for _, b in census]
    assert max(grown) < tiny_bert / 2, (grown, tiny_bert)
    # no growth from the first round to the second
    assert census[-1][1] <= census[1][1] + 64 * 1024, census

    # the same run in one process gives the same fine-tuned weights and the same numbers
    workers.clear()
    single = pipeline_run.run_pipeline(
        _config(tmp_path, backbone, isolate=False), tmp_path / "single", progress=False
    )
    assert workers == []
    assert [r["metrics"] for r in res["runs"]] == [r["metrics"] for r in single["runs"]]
    assert _lm(res["lm"], "isolated") == _lm(single["lm"], "single")
    for d in sorted((tmp_path / "single" / "lm").iterdir()):
        other = tmp_path / "isolated" / "lm" / d.name
        for f in sorted((d / "model").glob("*.safetensors")):
            assert f.read_bytes() == (other / "model" / f.name).read_bytes(), f
    for f in sorted((tmp_path / "single" / "embeddings").rglob("*.npz")):
        g = tmp_path / "isolated" / f.relative_to(tmp_path / "single")
        with np.load(f) as a, np.load(g) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files), f


def _tiny_model_params(backbone: str):
    from transformers import BertForMaskedLM

    return list(BertForMaskedLM.from_pretrained(backbone).parameters())


def _lm(lm: dict, run: str) -> dict:
    """A run's fine-tune results without its output directory's name and the timings (which
    differ from run to run)."""
    out = json.loads(json.dumps(lm).replace(f"/{run}/", "/RUN/"))
    for rs in out.values():
        for r in rs:
            for k in ("train_seconds", "tokens_per_s", "peak_rss_mb"):
                r.pop(k, None)
    return out


def test_the_runs_own_process_never_imports_the_language_model_code(tmp_path, backbone):
    # with workers, transformers (~110 MB resident) is imported by the fine-tune and encoding
    # workers only; a fresh interpreter runs the whole pipeline and reports its own modules, and
    # the allocator settings of the fine-tunes (ntulm.memory) stayed out of it and of the
    # encoding workers it starts (they inherit its environment)
    cfg = _config(tmp_path, backbone, isolate=True)
    cfg = cfg.model_copy(update={"variants": cfg.variants[:1], "seeds": [1]})
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    code = (
        "import json, sys\n"
        "from ntulm.pipeline import PipelineConfig, run_pipeline\n"
        f"cfg = PipelineConfig.model_validate_json(open({str(tmp_path / 'cfg.json')!r}).read())\n"
        f"res = run_pipeline(cfg, {str(tmp_path / 'run')!r}, progress=False)\n"
        "import os\n"
        "print(json.dumps([len(res['runs']), sorted(m for m in sys.modules\n"
        "                  if m.split('.')[0] == 'transformers' or m == 'ntulm.lm.model'),\n"
        "                  'ONEDNN_PRIMITIVE_CACHE_CAPACITY' in os.environ]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    n_runs, loaded, tuned = json.loads(out.strip().splitlines()[-1])
    assert n_runs > 0 and loaded == [] and not tuned


def test_scikit_learn_and_torch_are_imported_only_when_a_task_is_scored():
    # `ntulm run`'s own process lives beside every worker: scikit-learn (~110 MB resident) and
    # torch (~185 MB) must not ride along through the graph, KGE and first fine-tuning stages;
    # deciding the bf16 default must not need torch either
    code = (
        "import json, sys\n"
        "import ntulm.pipeline.run, ntulm.cli.run\n"
        "from ntulm.lm.config import resolve_dtype\n"
        "resolve_dtype('auto')\n"
        "before = ['sklearn' in sys.modules, 'torch' in sys.modules]\n"
        "from ntulm.evaluate.metrics import compute_metrics\n"
        "m, _ = compute_metrics(['macro_f1', 'auc'], [0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])\n"
        "from ntulm.evaluate import train_mlp\n"
        "print(json.dumps([before, ['sklearn' in sys.modules, 'torch' in sys.modules], m]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [False, False] and after == [True, True]
    assert metrics == {"macro_f1": pytest.approx(0.6666667), "auc": 1.0}


def test_native_bf16_from_the_cpu_flags_agrees_with_torch():
    import torch

    from ntulm.lm import config

    if config.cpu_flags() is None:
        pytest.skip("no /proc/cpuinfo here: torch decides")
    cpu = torch.cpu
    assert config.native_bf16() == bool(
        cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    )

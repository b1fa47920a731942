"""What a new user reads: ``--help`` of every config-taking command, and the error for a typo in
a config key (YAML or key=value), which names the closest valid key."""

from __future__ import annotations

import pytest

from ntulm.cli import main
from ntulm.errors import ConfigError
from ntulm.graph.config import GraphConfig
from ntulm.kge.config import KGEConfig
from ntulm.lm.config import LMConfig
from ntulm.pipeline import PipelineConfig


@pytest.mark.parametrize("command", ["finetune", "train-kge", "build-graph"])
def test_help_shows_every_default_and_no_pydantic_internals(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "Undefined" not in text and "default" in text


def test_help_text_of_every_config_spells_nested_keys_as_overrides_do():
    for cls in (LMConfig, KGEConfig, GraphConfig, PipelineConfig):
        assert "PydanticUndefined" not in cls.help_text(), cls.__name__
    lm = LMConfig.help_text()
    assert "text.mentions (str | None, default '@user')" in lm
    assert "ntu_tokens ('mean' | 'per_type', default 'mean')" in lm
    assert "posts (list[str], required)" in PipelineConfig.help_text()


@pytest.mark.parametrize(
    "overrides, yaml_text, needle",
    [
        (["max_step=3"], None, "max_step: unknown key (did you mean 'max_steps'"),
        (["text.mention=x"], None, "text.mention: unknown key (did you mean 'mentions'"),
        ([], "max_epoch: 2\n", "max_epoch: unknown key (did you mean 'max_epochs'"),
        (
            ["qqqqq=1"],
            None,
            "qqqqq: unknown key (valid keys: backbone, backbone_dropout, batch_size,",
        ),
    ],
)
def test_a_typo_in_a_key_suggests_the_closest_valid_key(tmp_path, overrides, yaml_text, needle):
    path = None
    if yaml_text is not None:
        path = tmp_path / "lm.yaml"
        path.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        LMConfig.from_sources(path, overrides)
    assert needle in str(exc.value)


def test_typos_in_nested_sections_and_list_items(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(
        "posts: [x]\nlm: {max_epoch: 1}\neval: {tasks: [{type: hashtag, top_kk: 3}]}\n"
        "variants: [{name: a, use_ntuu: false}]\n"
    )
    argv = ["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o")]
    assert main([*argv, "kge.dimensio=8"]) == 2
    err = capsys.readouterr().err
    assert "lm.max_epoch: unknown key (did you mean 'max_epochs'" in err
    assert "top_kk" in err and "'top_k'" in err  # task options: checked per task type
    assert "variants.0.use_ntuu: unknown key (did you mean 'use_ntu'" in err
    assert "kge.dimensio: unknown key (did you mean 'dimension'" in err
